"""Counters of host reads (see :mod:`showattend.engine.reads`): one at the Tensor methods called from showattend's
code, one at the dispatcher; :class:`HostReads` runs both and checks them against a path's allowed reads."""
import os
import sys
import warnings
from collections import Counter

import torch

import showattend

PKG = os.path.dirname(os.path.abspath(showattend.__file__))
SYNCING = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "nonzero", "masked_select", "cpu",
           "numpy")


class SyncCounter:
    """Patches the Tensor methods that read a device tensor on the host, and boolean-mask indexing; counts the
    calls made directly from showattend's code (torch's own calls, e.g. the optimizer's, are not counted)."""

    def __init__(self):
        self.calls = []

    def _wrap(self, name, original):
        counter = self

        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PKG):
                if name != "__getitem__" or counter._bool_index(args[1]):
                    counter.calls.append(f"{name} from {os.path.relpath(caller, PKG)}:{sys._getframe(1).f_lineno}")
            return original(*args, **kwargs)

        return wrapper

    @staticmethod
    def _bool_index(index):
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    @property
    def ops(self) -> Counter:
        """{"Tensor.name": count}"""
        return Counter("Tensor." + c.split(" ")[0] for c in self.calls)

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in (*SYNCING, "__getitem__")}
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, self._wrap(n, f))
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


class DispatchReads:
    """Counts, at the dispatcher, the ops that read a tensor on the host (:mod:`showattend.engine.reads`): inside
    torch's own functions too, and in function forms (``torch.nonzero``), which :class:`SyncCounter` misses; but it
    cannot tell a host tensor from a device one, so the allowed reads are listed by name. With ``every``, it
    counts every op that reaches the dispatcher (``scripts/batching.py``'s ops per step)."""

    OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.unique", "aten._unique", "aten.masked_select")

    def __init__(self, every: bool = False):
        self.every = every

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        self.ops = Counter()
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func)
                if counter.every or name.startswith(DispatchReads.OPS) or name.startswith("aten.index") and any(
                        isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                                             for t in a) for a in args):
                    counter.ops[name] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


class HostReads:
    """Both counters at once; :meth:`unlisted` compares what they saw with a path's allowance. On a CUDA device,
    also the synchronisations CUDA itself reports (``torch.cuda.set_sync_debug_mode("warn")``): the device reads
    must not outnumber the allowed reads (some of which read host tensors and cost no synchronisation)."""

    def __init__(self, device=None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.syncs = 0

    def __enter__(self):
        self.methods, self.dispatch = SyncCounter().__enter__(), DispatchReads().__enter__()
        if self.cuda:
            self._warnings = warnings.catch_warnings(record=True)
            self.caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(*exc)
            self.syncs = sum("synchronizing" in str(w.message) for w in self.caught)
        self.dispatch.__exit__(*exc)
        self.methods.__exit__(*exc)

    @property
    def ops(self) -> Counter:
        return self.methods.ops + self.dispatch.ops

    def unlisted(self, path: str, calls: int, checks: int = 0) -> dict:
        """The counted reads that differ from ``path``'s allowance for ``calls`` calls and ``checks`` checks of
        a search loop: {op: (counted, allowed)} (empty when they agree; the call sites are in
        ``self.methods.calls``); on CUDA, ``"cuda.sync"`` when CUDA reported more synchronisations than the
        reads allowed at the dispatcher and at the copies to the host."""
        from showattend.engine.reads import ALLOWED_READS

        allowed = Counter()
        for r_op, r in ALLOWED_READS[path].items():
            allowed[r_op.split("/")[0]] += r.count * (checks if r.per == "check" else calls)
        seen = self.ops
        out = {op: (seen[op], allowed[op]) for op in set(seen) | set(allowed) if seen[op] != allowed[op]}
        device_reads = sum(n for op, n in allowed.items() if op.startswith("aten.") or op == "Tensor.cpu")
        if self.cuda and self.syncs > device_reads:
            out["cuda.sync"] = (self.syncs, device_reads)
        return out


def search_checks(steps: int, max_len: int, sync_every: int = 4, forced_end: bool = True) -> int:
    """The checks whether every sequence has ended that a search loop of ``steps`` steps made: one after every
    ``sync_every``-th step; beam search skips it after its last allowed step (``forced_end``), where it stops."""
    n = steps // sync_every
    return n - 1 if forced_end and steps == max_len and max_len % sync_every == 0 else n
