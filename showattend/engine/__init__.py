"""One training engine for both applications: captioning and translation are two :class:`Task` s of one loop.

An application gives the engine what is its own (a :class:`Task`): its dataset and collate function, the
global batches of an epoch, the loss of a batch, its validation score and its checkpoint payload. The engine
does the rest, written once:

* device placement (``--device``), pinned memory and ``non_blocking`` copies on CUDA, DataLoader workers
  that persist across epochs;
* precision (``--precision``): ``torch.autocast`` in bfloat16, or fp32;
* ``--compile``: the task compiles its decoder step with ``torch.compile``;
* DistributedDataParallel under ``torchrun`` (nccl on CUDA, gloo on CPU). Every process builds the same global
  batches (seeded by epoch) and takes its slice; the loss of a slice is its summed loss divided by the
  *global* batch's number of words, counted on the host from the batch's indices, and multiplied by the world
  size before DDP averages the gradients, so the gradients equal one process's on the whole batch. Rank 0
  validates and writes logs and checkpoints;
* no device-to-host synchronisation inside the step: running sums stay on the device and are read every
  ``--log-every`` steps, at checkpoints and at epoch ends; what the host needs about a batch comes from the
  collate function;
* exact resume: ``last.pt`` every ``--save-every`` steps and at each epoch end (atomically), with every RNG
  (python, numpy, torch, CUDA; each rank's), the position in the epoch, optimizer, scheduler, the task's state
  (e.g. the REINFORCE baseline) and the wall time spent;
* ``--max-minutes`` with a heartbeat file that counts the time an interruption throws away, early stopping and
  learning-rate decay on the validation score, ``metrics.jsonl``/``metrics.csv``, ``steps.jsonl``,
  ``curves.png`` with the best epoch marked, tqdm progress bars.

The package, by what each part does: :mod:`~showattend.engine.config` (settings, precision, the run folder),
:mod:`~showattend.engine.distributed` (processes, slices of a batch, devices), :mod:`~showattend.engine.state`
(RNG states and the heartbeat a resume restores) and :mod:`~showattend.engine.trainer` (the loop).
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_names

_NAMES = {
    "EngineConfig": ".config", "Precision": ".config", "PRECISIONS": ".config", "resolve_precision": ".config",
    "RUN_FILES": ".config", "check_out_dir": ".config", "SettingsError": ".config", "main_process": ".config",
    "DistInfo": ".distributed", "setup_distributed": ".distributed", "shard": ".distributed",
    "to_device": ".distributed", "check_resume_settings": ".resume", "differing_options": ".resume",
    "StepContext": ".task", "Task": ".task", "Trainer": ".trainer",
}

__all__ = list(_NAMES)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .config import (PRECISIONS, RUN_FILES, EngineConfig, Precision, SettingsError, check_out_dir, main_process,
                         resolve_precision)
    from .distributed import DistInfo, setup_distributed, shard, to_device
    from .resume import check_resume_settings, differing_options
    from .task import StepContext, Task
    from .trainer import Trainer

__getattr__, __dir__ = lazy_names(__name__, _NAMES)  # the settings import without torch (--help)
