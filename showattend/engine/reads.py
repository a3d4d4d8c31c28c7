"""The host reads each path is allowed, by name: a read of a device tensor on the host makes the host wait for
the device (on a GPU, everything queued before it must finish), so the paths that run many times keep to this
list, and the tests fail on any read that is not on it.

Two counters see the reads (``tests/counters.py``), and each names what it sees:

- at the dispatcher, ``aten._local_scalar_dense`` (the op behind ``item()``/``float()``/``bool()``),
  ``nonzero``, ``unique``, ``masked_select`` and boolean-mask indexing, whose output size the host must learn:
  inside torch's own functions too, but blind to ``tolist()``, ``numpy()`` and copies to the host;
- at the Tensor methods called from showattend's code: ``Tensor.item``, ``Tensor.__bool__``, ``Tensor.tolist``,
  ``Tensor.cpu``, ``Tensor.numpy``, ...

On a CPU neither can tell a host tensor from a device tensor, so reads of tensors that live on the host are
listed too, with the reason they cost nothing on a GPU. An allowance counts per call of the path, or per check
of a search's loop (``per="check"``: the searches ask whether every sequence has ended once every
``sync_every`` steps).
"""
from __future__ import annotations

from typing import Dict, NamedTuple

__all__ = ["AllowedRead", "ALLOWED_READS"]


class AllowedRead(NamedTuple):
    """A read a path may make: how many per call (or per check of a search loop), and why it is there."""

    count: int
    why: str
    per: str = "call"  # "call" or "check"


_SCALAR = "aten._local_scalar_dense.default"
_DONE = "whether every sequence has ended: one read every sync_every steps, so that a batch stops early"
_CHECKS = {_SCALAR: AllowedRead(1, _DONE, "check"), "Tensor.__bool__": AllowedRead(1, _DONE, "check")}
_TRACE = {"Tensor.cpu": AllowedRead(1, "the results: every buffer in one device-to-host transfer (hypotheses.to_host)"),
          "Tensor.numpy": AllowedRead(1, "the host copy of that transfer as an array (no device read)")}
_PACK = {_SCALAR: AllowedRead(2, "pack_padded_sequence reads the lengths, which stay on the host (a CPU tensor "
                                 "from collate): no device read on a GPU")}
_WORD_TABLE = {_SCALAR: AllowedRead(1, "whether the cached word table is stale (Decoder.step_weights): one "
                                       "comparison per search"),
               "Tensor.__bool__": AllowedRead(1, "the same comparison")}


def _plus(*tables: Dict[str, AllowedRead]) -> Dict[str, AllowedRead]:
    """One path's allowances made of several parts: counts of the same op and unit add up."""
    out: Dict[str, AllowedRead] = {}
    for table in tables:
        for op, r in table.items():
            key = op if r.per == "call" else f"{op}/check"
            prev = out.get(key)
            out[key] = r if prev is None else AllowedRead(prev.count + r.count, f"{prev.why}; {r.why}", r.per)
    return out


#: path -> {op (or "op/check"): AllowedRead}; a path absent from this table, or an op absent from its entry,
#: reads nothing
ALLOWED_READS: Dict[str, Dict[str, AllowedRead]] = {
    # Trainer.step of a captioning task (soft or hard attention): the caption lengths come from collate, on the host
    "captioning.train_step": {},
    # Trainer.step of a translation task
    "translation.train_step": _plus(_PACK),
    # search.beam_search and search.greedy_search
    "search": _plus(_CHECKS, _TRACE),
    # search.sample_search: the tokens stay on the device
    "search.sample": _plus(_CHECKS),
    # Captioner.decode, one search (hard attention: one per sample)
    "captioning.decode": _plus(_CHECKS, _TRACE, _WORD_TABLE),
    # Trainer.step of SCST: the sampling, CIDEr-D on the device (fixed shapes), the teacher-forced pass
    "captioning.scst_step": _plus(_CHECKS, {
        "Tensor.tolist": AllowedRead(1, "the samples' lengths: the teacher-forced pass over them is sorted by "
                                        "length and drops finished rows, which the host must know")}),
    # CiderD.__call__: no boolean masks, no unique
    "captioning.cider": {},
    # Translator.translate, one batch: the encoder's packing, and the search
    "translation.decode": _plus(_PACK, _CHECKS, _TRACE),
}
