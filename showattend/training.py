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
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Sequence, get_args

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import save_checkpoint
from .runs import atomic_write_text, plot_curves, resolve_device, write_metrics

__all__ = ["EngineConfig", "Task", "StepContext", "DistInfo", "setup_distributed", "resolve_precision",
           "Trainer", "PRECISIONS"]

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = get_args(Precision)


@dataclass
class EngineConfig:
    """Settings of the training engine, shared by ``showattend train`` and ``showattend translate train``.

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
            ``--resume`` and the part lost to an interruption; no epoch starts when the time spent plus the
            last epoch's time would exceed it.
        max_steps: stop an epoch after this many batches (0: whole epoch; for smoke tests).
        save_every: also write ``last.pt`` every N optimizer steps (0: only at epoch ends); a ``--resume``
            continues from that step exactly.
        log_every: read the running losses from the device every N steps (progress bar and ``steps.jsonl``).
        seed: random seed (weights, batch order, dropout, hard-attention samples).
        device: "auto" (cuda when available), "cpu" or "cuda".
        precision: "auto" (bf16 on a CUDA device that supports it, else fp32), "fp32" or "bf16" (torch.autocast;
            the CPU runs bf16 too, fast where it has AMX or AVX-512 bf16).
        compile: torch.compile the decoder step (needs a C++ compiler on the CPU, Triton on CUDA).
        num_workers: DataLoader worker processes (persistent across epochs).
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
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"
    compile: bool = False
    num_workers: int = 0
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
        for name in ("lr", "grad_clip", "weight_decay", "max_minutes", "max_steps", "save_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        resolve_device(self.device)


#: the files a run writes into its folder
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "steps.jsonl", "curves.png", "config.json",
             "running.json")


def check_out_dir(out_dir: str, resume: bool, overwrite: bool = False) -> None:
    """Prepare a run folder: refuse to start a new run over another run's files (unless ``overwrite``, which
    deletes them), and remove the temporary files of atomic writes that a killed process left behind.

    Under torchrun only rank 0 deletes anything.

    Raises:
        ValueError: a new run (not ``resume``) in a folder holding a run's files, without ``overwrite``.
    """
    main = os.environ.get("RANK", "0") == "0"
    found = [f for f in RUN_FILES if os.path.isfile(os.path.join(out_dir, f))]
    if found and not resume:
        if not overwrite:
            raise ValueError(f"{out_dir} already holds a run ({', '.join(found)}): add --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out-dir")
        if main:
            for f in found:
                os.remove(os.path.join(out_dir, f))
            print(f"--overwrite: removed the previous run's {', '.join(found)} from {out_dir}", flush=True)
    if main and os.path.isdir(out_dir):
        for f in os.listdir(out_dir):  # "<name>.tmp.<pid>[.png]" from checkpoint.py and runs.py
            pid = f.split(".tmp.")[-1].split(".")[0] if ".tmp." in f else ""
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    os.remove(os.path.join(out_dir, f))
                except FileNotFoundError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StepContext(NamedTuple):
    """What the engine tells a task's loss about the step.

    Attributes:
        step: global optimizer step (0-based), the same on every process.
        words: the global batch's normaliser (:meth:`Task.words` of all its items), counted on the host.
        items: the global batch's number of items.
        world: number of processes.
    """

    step: int
    words: int
    items: int
    world: int


class DistInfo(NamedTuple):
    """rank, world size and local rank of this process (0, 1, 0 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


class Task:
    """What an application gives the engine. Subclasses set the attributes and implement the methods.

    Attributes:
        kind: checkpoint ``format`` (e.g. ``"showattend-captioner"``).
        model: the ``nn.Module`` the optimizer trains (DDP wraps it; validation uses it unwrapped).
        dataset: indexed by the indices of :meth:`epoch_batches`.
        loss_key: the summary value drawn as the training curve (e.g. ``"train_ce"``).
        score_key: the name of the validation score in the metrics (higher is better).
        item_name: what an item is, for the throughput field (``captions`` -> ``captions_per_s``).
    """

    kind: str = ""
    model: torch.nn.Module
    dataset: Dataset
    loss_key: str = "train_loss"
    score_key: str = "val_score"
    item_name: str = "items"

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        """The global batches of ``epoch`` (lists of dataset indices), a function of the seed and the epoch only."""
        raise NotImplementedError

    def words(self, index: int) -> int:
        """Normaliser contribution of one item (e.g. its predicted tokens), known on the host."""
        raise NotImplementedError

    def collate(self, items: Sequence[Any], rows: Sequence[int]):
        """A batch from dataset items; ``rows`` are the items' positions in the global batch."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch, ctx: StepContext):
        """(loss, sums): this process's share of the global batch's loss (summed over its items, divided by
        ``ctx.words``), and a dict of 0-d device tensors to be summed over steps and processes for the logs."""
        raise NotImplementedError

    def summarise(self, sums: Dict[str, float], steps: int) -> Dict[str, float]:
        """Log values from the sums of ``steps`` steps (e.g. cross-entropy per word)."""
        return {self.loss_key: sums.get("loss", 0.0) / max(steps, 1)}

    def validate(self) -> float:
        """The validation score of ``self.model`` (called on rank 0 only)."""
        raise NotImplementedError

    def payload(self) -> Dict[str, Any]:
        """Checkpoint content that is the application's own (format, config, vocabulary, weights)."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """Training state of the task itself (e.g. a REINFORCE baseline)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def compile(self) -> None:
        """Apply ``torch.compile`` to the model's step (``--compile``)."""
        raise NotImplementedError(f"{type(self).__name__} has no compiled step")


# --------------------------------------------------------------------------------------------------------
# Device, precision, processes


def setup_distributed(device: str = "auto"):
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` set); choose the device.

    Returns:
        (:class:`DistInfo`, torch.device): under torchrun on CUDA each process gets ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: ``device`` is not auto, cpu or cuda[:N], or cuda is asked for and absent.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), dev
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return DistInfo(rank, world, local), dev


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--precision`` on ``device``: bfloat16, or None for fp32.

    Raises:
        ValueError: unknown precision, or bf16 on a CUDA device without bf16 support.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if device.type == "cuda" and not cuda_bf16:
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    return torch.bfloat16


def to_device(batch, device: torch.device, non_blocking: bool = False):
    """Move every tensor of a (named) tuple / dict batch to ``device``; other values (e.g. lists of lengths the
    host needs) stay where they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(x, device, non_blocking) for x in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(x, device, non_blocking) for x in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Positioned(Dataset):
    """Items of the task's dataset addressed as (index, position in the global batch)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, ip):
        return self.dataset[ip[0]], ip[1]


class _LocalBatches(Sampler):
    """The batch sampler: this process's slices of the current epoch's global batches, from a position on.
    The main process sets them before each epoch, so persistent workers survive across epochs."""

    def __init__(self):
        self.batches: List[List[tuple]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def shard(batch: Sequence[int], rank: int, world: int) -> List[tuple]:
    """This rank's contiguous slice of a global batch as (index, position) pairs (sizes differ by at most 1)."""
    n = len(batch)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return [(batch[p], p) for p in range(lo, hi)]


class _Heartbeat:
    """``out_dir/running.json`` while training runs: the wall time spent so far and the step of the last
    checkpoint, rewritten atomically at most once a minute, so that a ``--resume`` after an interruption can
    count the time spent since that checkpoint."""

    FILE = "running.json"

    def __init__(self, out_dir: str, every_s: float = 60.0):
        self.path, self.every_s, self.last = os.path.join(out_dir, self.FILE), every_s, 0.0

    def __call__(self, spent_s: float, saved_step: int, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last >= self.every_s:
            self.last = now
            atomic_write_text(self.path, json.dumps({"spent_s": spent_s, "saved_step": saved_step}))

    @classmethod
    def lost_seconds(cls, out_dir: str, spent_s: float, saved_step: int) -> float:
        """Seconds spent after the checkpoint of ``saved_step`` by a run that died: 0 if no heartbeat of that
        checkpoint's run is found."""
        path = os.path.join(out_dir, cls.FILE)
        if not os.path.exists(path):
            return 0.0
        try:
            with open(path, encoding="utf-8") as f:
                beat = json.load(f)
            if int(beat["saved_step"]) == saved_step:
                return max(0.0, float(beat["spent_s"]) - spent_s)
        except (ValueError, KeyError, TypeError) as e:
            print(f"ignoring unreadable {path} ({e})", flush=True)
        return 0.0


# --------------------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """Runs a :class:`Task`: the loop, written once for both applications.

    Args:
        task: the application's task (its model already built, weights loaded when resuming).
        cfg: an :class:`EngineConfig` (or an application's config derived from it).
        dist_info, device: from :func:`setup_distributed`.
        ckpt: the ``last.pt`` dict to resume from, or None.

    Raises:
        ValueError: bad ``precision``.
    """

    def __init__(self, task: Task, cfg: EngineConfig, dist_info: DistInfo, device: torch.device,
                 ckpt: Optional[Dict[str, Any]] = None):
        self.task, self.cfg, self.dist, self.device = task, cfg, dist_info, device
        self.amp_dtype = resolve_precision(cfg.precision, device)
        if cfg.batch_size < dist_info.world:
            raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be at least the number of "
                             f"processes ({dist_info.world})")
        self.last_path, self.best_path = os.path.join(cfg.out_dir, "last.pt"), os.path.join(cfg.out_dir, "best.pt")
        model = task.model.to(device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max",
                                                                    factor=cfg.lr_decay, patience=0)
        if cfg.compile:
            task.compile()
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if dist_info.world > 1 else model
        # the loop's state (all of it goes into last.pt)
        self.epoch, self.pos, self.step_count, self.best, self.bad = 1, 0, 0, -math.inf, 0
        self.history: List[Dict] = []
        self.epoch_sums: Dict[str, float] = {}
        self.epoch_steps, self.epoch_s, self.spent_s = 0, 0.0, 0.0
        torch.manual_seed(cfg.seed * 1000 + dist_info.rank)  # dropout streams differ between processes
        if ckpt is not None:
            self._load(ckpt)
        self.saved_step = self.step_count
        self.interval: Dict[str, torch.Tensor] = {}
        self.interval_steps = 0
        self.beat = _Heartbeat(cfg.out_dir) if dist_info.main else None
        self.sampler = _LocalBatches()
        workers = cfg.num_workers
        self.loader = DataLoader(_Positioned(task.dataset), batch_sampler=self.sampler, collate_fn=self._collate,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0,
                                 # its own generator: a new epoch's iterator must not draw from the global RNG,
                                 # or a resumed run's dropout stream would be shifted by one draw
                                 generator=torch.Generator().manual_seed(cfg.seed))

    def _collate(self, pairs):
        return self.task.collate([p[0] for p in pairs], [p[1] for p in pairs])

    # -- checkpoints ------------------------------------------------------------------------------------
    def _meta(self) -> Dict[str, Any]:
        return {"train_config": asdict(self.cfg), "epoch": self.epoch - 1, "best_score": self.best,
                "history": self.history, "bad_epochs": self.bad}

    def _save_last(self) -> None:
        rngs = [_rng_state()]
        if self.dist.world > 1:
            rngs = [None] * self.dist.world
            dist.all_gather_object(rngs, _rng_state())
        if not self.dist.main:
            return
        engine = {"epoch": self.epoch, "pos": self.pos, "step": self.step_count, "epoch_sums": self.epoch_sums,
                  "epoch_steps": self.epoch_steps, "epoch_s": self.epoch_s, "spent_s": self.spent_s, "rng": rngs,
                  "world": self.dist.world}
        save_checkpoint(self.last_path, {**self.task.payload(), **self._meta(), "engine": engine,
                                         "optimizer": self.optimizer.state_dict(),
                                         "scheduler": self.scheduler.state_dict(),
                                         "task_state": self.task.state_dict()})
        self.saved_step = self.step_count
        self.beat(self.spent_s, self.step_count, force=True)

    def _load(self, ckpt: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.task.load_state_dict(ckpt.get("task_state", {}))
        self.best, self.bad, self.history = ckpt["best_score"], ckpt["bad_epochs"], ckpt["history"]
        e = ckpt.get("engine")
        if e is None:  # a checkpoint from before the engine: resume at the next epoch
            self.epoch = ckpt["epoch"] + 1
            return
        before = ckpt.get("train_config", {})
        changed = {k: (before[k], v) for k, v in asdict(self.cfg).items() if k in before and before[k] != v}
        if e["pos"] and any(k in changed for k in ("batch_size", "seed", "max_steps")):
            raise ValueError(f"last.pt was saved inside epoch {e['epoch']}: resuming there needs the same "
                             f"--batch-size, --seed and --max-steps (the epoch's batches depend on them); changed: "
                             f"{', '.join(sorted(k for k in changed if k in ('batch_size', 'seed', 'max_steps')))}")
        if changed and self.dist.main:
            print("resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in
                                                                 sorted(changed.items())), flush=True)
        self.epoch, self.pos, self.step_count = e["epoch"], e["pos"], e["step"]
        self.epoch_sums, self.epoch_steps, self.epoch_s = dict(e["epoch_sums"]), e["epoch_steps"], e["epoch_s"]
        lost = _Heartbeat.lost_seconds(self.cfg.out_dir, e["spent_s"], e["step"])
        self.spent_s = e["spent_s"] + lost
        if lost and self.dist.main:
            print(f"{lost / 60:.1f} min after the last checkpoint were lost to an interruption; they count "
                  f"toward the time spent", flush=True)
        rngs = e["rng"]
        if len(rngs) == self.dist.world:
            _set_rng_state(rngs[self.dist.rank])
        elif self.dist.main:
            print(f"resuming {len(rngs)} processes' run with {self.dist.world}: the dropout streams differ "
                  f"from an uninterrupted run", flush=True)

    # -- one step ---------------------------------------------------------------------------------------
    def step(self, batch, ctx: StepContext) -> None:
        """One optimizer step on this process's share of a global batch. Reads nothing back from the device."""
        batch = to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            loss, sums = self.task.loss(self.ddp, batch, ctx)
        (loss * ctx.world).backward()  # DDP averages over processes; each loss is a share of the global batch's
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": loss.detach(), **sums}
        for k, v in sums.items():
            v = v.detach().float()
            self.interval[k] = self.interval[k] + v if k in self.interval else v
        self.interval_steps += 1

    def _flush(self) -> Optional[Dict[str, float]]:
        """Read the running sums from the device (the log point) into the epoch's sums; returns the interval's
        summary, or None when no step ran since the last flush."""
        if not self.interval_steps:
            return None
        names = sorted(self.interval)
        values = torch.stack([self.interval[k] for k in names])
        if self.dist.world > 1:
            dist.all_reduce(values)
        host = dict(zip(names, values.tolist()))
        for k, v in host.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
        steps = self.interval_steps
        self.epoch_steps += steps
        self.interval, self.interval_steps = {}, 0
        return self.task.summarise(host, steps)

    def _log_steps(self, summary: Dict[str, float]) -> None:
        if self.dist.main:
            with open(os.path.join(self.cfg.out_dir, "steps.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step_count, "epoch": self.epoch, **summary}) + "\n")

    def _truncate_step_log(self) -> None:
        """Drop the rows a killed run wrote after the checkpoint being resumed."""
        path = os.path.join(self.cfg.out_dir, "steps.jsonl")
        if self.dist.main and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= self.step_count]
            atomic_write_text(path, "".join(rows))

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> str:
        """Train until ``epochs``, early stopping or the time budget; returns the path of ``best.pt``."""
        from tqdm import tqdm

        cfg, task = self.cfg, self.task
        os.makedirs(cfg.out_dir, exist_ok=True)
        if self.dist.main:  # the resolved settings of this (re)start, beside the checkpoints
            atomic_write_text(os.path.join(cfg.out_dir, "config.json"), json.dumps(
                {"model": task.payload().get("config"), "train": asdict(cfg), "world": self.dist.world,
                 "resumed_at_step": self.step_count,
                 "resolved": {"device": str(self.device), "precision": "bf16" if self.amp_dtype else "fp32"}},
                indent=2))
        self._truncate_step_log()
        kill_at = int(os.environ.get("SHOWATTEND_KILL_AT_STEP", "0"))  # fault injection for the resume tests
        t_mark = time.time()
        if self.dist.main and self.history and self.pos == 0:
            done = self.history[-1]["epoch"]
            if done >= cfg.epochs:
                print(f"nothing to train: {done} epochs done, --epochs is {cfg.epochs}", flush=True)
            elif self.bad >= cfg.patience:
                print(f"nothing to train: the run stopped early after epoch {done} ({self.bad} epochs without a "
                      f"new best, --patience {cfg.patience})", flush=True)
        ran = False  # an epoch ended in this call
        while self.epoch <= cfg.epochs:
            if self.pos == 0 and self.bad >= cfg.patience:
                if self.dist.main and ran:
                    print(f"early stopping: no new best {task.score_key} for {self.bad} epochs", flush=True)
                break
            if self.pos == 0 and cfg.max_minutes > 0 and self.history:
                last = self.history[-1]["train_s"] + self.history[-1]["val_s"]
                if self.spent_s + last > 60 * cfg.max_minutes:
                    if self.dist.main:
                        print(f"stopping before epoch {self.epoch}: {self.spent_s / 60:.1f} min spent, another "
                              f"epoch would pass the {cfg.max_minutes:g}-minute budget", flush=True)
                    break
            global_batches = task.epoch_batches(self.epoch)
            if self.dist.world > 1:  # every process needs at least one item
                global_batches = [b for b in global_batches if len(b) >= self.dist.world]
            if cfg.max_steps:
                global_batches = global_batches[: cfg.max_steps]
            todo = global_batches[self.pos:]
            self.sampler.batches = [shard(b, self.dist.rank, self.dist.world) for b in todo]
            self.ddp.train()
            bar = tqdm(total=len(global_batches), initial=self.pos, desc=f"epoch {self.epoch}",
                       disable=True if not (cfg.progress and self.dist.main) else None, leave=False)  # None: off
            # when stderr is not a terminal
            for batch, gb in zip(self.loader, todo):
                ctx = StepContext(self.step_count, sum(task.words(i) for i in gb), len(gb), self.dist.world)
                self.step(batch, ctx)
                self.step_count, self.pos = self.step_count + 1, self.pos + 1
                now = time.time()
                self.epoch_s, self.spent_s, t_mark = self.epoch_s + now - t_mark, self.spent_s + now - t_mark, now
                bar.update(1)
                if self.step_count % cfg.log_every == 0:
                    summary = self._flush()
                    self._log_steps(summary)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in summary.items()})
                if self.beat is not None:
                    self.beat(self.spent_s, self.saved_step)
                if cfg.save_every and self.step_count % cfg.save_every == 0 and self.pos < len(global_batches):
                    summary = self._flush()
                    if summary is not None:
                        self._log_steps(summary)
                    self._save_last()
                if kill_at and self.step_count == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            bar.close()
            summary = self._flush()
            if summary is not None and self.step_count % cfg.log_every:
                self._log_steps(summary)
            self._end_epoch(len(global_batches))
            ran, t_mark = True, time.time()
        if self.beat is not None and os.path.exists(self.beat.path):
            os.remove(self.beat.path)
        return self.best_path

    def _end_epoch(self, n_batches: int) -> None:
        cfg, task = self.cfg, self.task
        train_s, t1 = self.epoch_s, time.time()
        score = [task.validate() if self.dist.main else 0.0]
        if self.dist.world > 1:
            dist.broadcast_object_list(score, src=0)
        score = float(score[0])
        val_s = time.time() - t1
        self.spent_s += val_s
        improved = score > self.best
        self.best, self.bad = (score, 0) if improved else (self.best, self.bad + 1)
        self.scheduler.step(score)
        items = sum(len(b) for b in task.epoch_batches(self.epoch)[:n_batches])
        row = {"epoch": self.epoch, **{k: round(v, 4) for k, v in task.summarise(self.epoch_sums,
                                                                                  self.epoch_steps).items()},
               task.score_key: round(score, 2), "lr": self.optimizer.param_groups[0]["lr"],
               "train_s": round(train_s, 1), "val_s": round(val_s, 1),
               f"{task.item_name}_per_s": round(items / max(train_s, 1e-9), 1)}
        self.history.append(row)
        self.epoch, self.pos = self.epoch + 1, 0
        self.epoch_sums, self.epoch_steps, self.epoch_s = {}, 0, 0.0
        if improved and self.dist.main:
            save_checkpoint(self.best_path, {**task.payload(), **self._meta()})
        self._save_last()
        if self.dist.main:
            write_metrics(cfg.out_dir, self.history)
            plot_curves(self.history, task.loss_key, task.score_key, os.path.join(cfg.out_dir, "curves.png"))
            print(json.dumps(row) + ("  (best)" if improved else ""), flush=True)
