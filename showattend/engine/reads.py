"""The host reads each path is allowed, by name: a read of a device tensor on the host makes the host wait for
the device (on a GPU, everything queued before it must finish), so the paths that run many times keep to this
list, and the tests fail on any read that is not on it.

Counted at the dispatcher (``aten._local_scalar_dense``, the op behind ``item()``/``float()``/``bool()``;
``nonzero``, ``unique``, ``masked_select`` and boolean-mask indexing, whose output size the host must learn),
per call of the path. On a CPU the count cannot tell a host tensor from a device tensor, so reads of tensors
that live on the host are listed too, with the reason they cost nothing on a GPU.
"""
from __future__ import annotations

from typing import Dict, NamedTuple

__all__ = ["AllowedRead", "ALLOWED_READS"]


class AllowedRead(NamedTuple):
    """A read a path may make: how many per call, and why it is there."""

    per_call: int
    why: str


#: path -> {aten op: AllowedRead}; a path absent from this table, or an op absent from its entry, reads nothing
ALLOWED_READS: Dict[str, Dict[str, AllowedRead]] = {
    # Trainer.step of a captioning task (soft or hard attention): the caption lengths come from collate, on the host
    "captioning.train_step": {},
    # Trainer.step of a translation task
    "translation.train_step": {
        "aten._local_scalar_dense.default": AllowedRead(
            2, "pack_padded_sequence reads the lengths, which stay on the host (a CPU tensor from collate): no "
               "device read on a GPU"),
    },
}
