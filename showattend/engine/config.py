"""The engine's settings, shared by ``showattend train`` and ``showattend translate train``; the precision they
resolve to; and the run folder's checks before a run starts."""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional, Sequence, get_args

from ..runs import check_output_folder, resolve_device

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["SettingsError", "EngineConfig", "resolve_num_workers", "Precision", "PRECISIONS", "resolve_precision",
           "RUN_FILES", "check_out_dir", "main_process"]

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = get_args(Precision)


class SettingsError(ValueError):
    """A setting that cannot be applied as given (e.g. a model setting changed on ``--resume``): the command
    line exits with code 2, as for any bad option."""


@dataclass
class EngineConfig:
    """Settings of the training engine, shared by `showattend train` and `showattend translate train`.

    Attributes:
        out_dir: run folder: checkpoints, metrics, curves.
        epochs: maximum epochs.
        batch_size: items per optimizer step (captions, or sentence pairs), over all processes together.
        lr: Adam learning rate.
        lr_decay: learning rate factor after an epoch without a new best validation score.
        weight_decay: Adam L2 penalty.
        grad_clip: gradient norm clip (0: off).
        patience: epochs without a new best validation score before stopping.
        max_minutes: wall-time budget in minutes (0: none), counted over all epochs including those before a
            `--resume` and the part lost to an interruption; no epoch starts when the time spent plus the
            last epoch's time would exceed it.
        max_steps: stop an epoch after this many batches (0: whole epoch; for smoke tests).
        save_every: also write `last.pt` every N optimizer steps (0: only at epoch ends); a `--resume`
            continues from that step exactly.
        keep_epochs: also keep each epoch's weights, `epochs/epoch_N.pt` in the run folder (checkpoints like
            `best.pt`, for comparing the epochs after the run, e.g. on other metrics than the one validation
            selects on).
        log_every: read the running losses from the device every N steps (progress bar and `steps.jsonl`).
        seed: random seed (weights, batch order, dropout, hard-attention samples).
        device: "auto" (cuda when available), "cpu" or "cuda".
        precision: "auto" (bf16 on a CUDA device that computes it natively, Ampere and later; else fp32), "fp32"
            or "bf16" (torch.autocast; the CPU runs bf16 too, fast where it has AMX or AVX-512 bf16).
        compile: torch.compile the recurrence (captioning) or the decoder step (translation): one graph per step
            (needs a C++ compiler on the CPU, Triton on CUDA; on a CPU it is slower than eager).
        num_workers: DataLoader worker processes (persistent across epochs); -1 (the default): chosen by device,
            0 on a CPU (the batches are assembled in the training process, which the CPU's cores are busy for) and
            on CUDA the CPU cores of this process's share of the machine less one, at most 8
            (:func:`resolve_num_workers`).
        progress: tqdm progress bars.
    """

    out_dir: str = "runs/run"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 4e-4
    lr_decay: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    patience: int = 3
    max_minutes: float = 0.0
    max_steps: int = 0
    save_every: int = 0
    keep_epochs: bool = False
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    compile: bool = False
    num_workers: int = -1
    progress: bool = True

    def validate(self, at_least_one: Sequence[str] = ()) -> None:
        """Check the settings before any long work (a feature cache can take half an hour).

        Args:
            at_least_one: an application's own integer settings that must be >= 1.

        Raises:
            ValueError: the first bad setting, named as its option.
        """
        for name in ("epochs", "batch_size", "log_every", "patience", *at_least_one):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip", "weight_decay", "max_minutes", "max_steps", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.num_workers < -1:
            raise ValueError(f"--num-workers must be -1 (by device) or at least 0, got {self.num_workers}")
        if not 0.0 < self.lr_decay < 1.0:
            raise ValueError(f"--lr-decay must be in (0, 1), got {self.lr_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        resolve_device(self.device)
        check_output_folder(self.out_dir, "--out-dir")


#: the files a run writes into its folder
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "steps.jsonl", "curves.png", "config.json",
             "running.json")


def check_out_dir(out_dir: str, resume: bool, overwrite: bool = False) -> bool:
    """Prepare a run folder: refuse to start a new run over another run's files (unless ``overwrite``, which
    deletes them), and remove the temporary files of atomic writes that a killed process left behind.

    ``resume`` in a folder without ``last.pt`` starts a new run (so that a script can always pass ``--resume``);
    the logs of a run killed before its first checkpoint are replaced.

    Under torchrun only rank 0 deletes anything.

    Returns:
        whether the run resumes from ``last.pt``.

    Raises:
        ValueError: a new run (not ``resume``) in a folder holding a run's files, without ``overwrite``; or
            ``resume`` in a folder holding ``best.pt`` but no ``last.pt``.
    """
    main = main_process()
    found = [f for f in RUN_FILES if os.path.isfile(os.path.join(out_dir, f))]
    if resume and "last.pt" not in found:
        if "best.pt" in found:
            raise ValueError(f"{out_dir} holds best.pt but no last.pt: nothing to resume from; --overwrite starts "
                             f"a new run there")
        if main:
            log.info(f"--resume: no last.pt in {out_dir} yet; starting a new run")
        resume, overwrite = False, True
    if found and not resume:
        if not overwrite:
            raise ValueError(f"{out_dir} already holds a run ({', '.join(found)}): add --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out-dir")
        if main:
            for f in found:
                os.remove(os.path.join(out_dir, f))
            kept = glob.glob(os.path.join(out_dir, "epochs", "epoch_*.pt"))
            for f in kept:
                os.remove(f)
            log.info(f"--overwrite: removed the previous run's {', '.join(found)}"
                     f"{f' and {len(kept)} epochs/epoch_N.pt' if kept else ''} from {out_dir}")
    if main and os.path.isdir(out_dir):
        for f in os.listdir(out_dir):  # "<name>.tmp.<pid>[.png]" from checkpoint.py and runs.py
            pid = f.split(".tmp.")[-1].split(".")[0] if ".tmp." in f else ""
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    os.remove(os.path.join(out_dir, f))
                except FileNotFoundError:
                    pass
    return resume


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main_process() -> bool:
    """Whether this is rank 0 (or the only process), from torchrun's environment; usable before the process
    group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_num_workers(num_workers: int, device: torch.device, local_processes: int = 1) -> int:
    """The DataLoader workers of ``--num-workers``: as given when >= 0; for -1, 0 on a CPU (the training
    process uses the cores; on a 2-core machine a worker only competes with it) and on CUDA the CPU cores of this
    process's share of the machine less one (the training process keeps one), at least 1 and at most 8."""
    if num_workers >= 0:
        return num_workers
    if device.type != "cuda":
        return 0
    share = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(1, min(8, share // max(1, local_processes) - 1))


_WARNED: set = set()  # devices whose emulated bf16 was warned about (once per process)


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--precision`` on ``device``: bfloat16, or None for fp32. ``auto`` chooses bf16 on
    a CUDA device that computes it natively (compute capability 8.0 and later), fp32 elsewhere.

    Raises:
        ValueError: unknown precision, or bf16 on a CUDA device without bf16 support (emulated bf16 is allowed
            when asked for, with a warning).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        return None if precision == "auto" else torch.bfloat16
    # native bf16 only for "auto" (compute capability 8.0 and later): pre-Ampere cards (V100, T4) report support
    # through emulation, slower than fp32 there
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    if not torch.cuda.is_bf16_supported(including_emulation=False) and device not in _WARNED:
        _WARNED.add(device)
        log.warning(f"--precision bf16: {torch.cuda.get_device_name(device)} only emulates bfloat16 (slower than "
                    f"fp32 there)")
    return torch.bfloat16
