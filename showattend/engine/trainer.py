"""The loop, written once for both applications: a :class:`Task` says what is the application's own, the
:class:`Trainer` does the rest (see :mod:`showattend.engine`)."""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..checkpoint import save_checkpoint
from ..faults import kill_if_reached
from ..runs import atomic_write_text, plot_curves, write_metrics
from .config import EngineConfig, resolve_num_workers, resolve_precision
from .distributed import DistInfo, _LocalBatches, _Positioned, buffers_trained, runnable_batches, shard, to_device
from .resume import check_resume_settings
from .state import Heartbeat, rng_state, set_rng_state
from .task import StepContext, Task

log = logging.getLogger(__name__)

__all__ = ["Trainer"]


class Trainer:
    """Runs a :class:`Task`: the loop, written once for both applications.

    Args:
        task: the application's task (its model already built, weights loaded when resuming).
        cfg: an :class:`EngineConfig` (or an application's config derived from it).
        dist_info, device: from :func:`setup_distributed`.
        ckpt: the ``last.pt`` dict to resume from, or None.
        validate_start: validate the model before the first step (a new run from trained weights, ``--init``):
            its score is the best to beat, and ``best.pt`` holds the starting weights until an epoch beats it.

    Raises:
        ValueError: bad ``precision``. SettingsError: a setting changed on resume that cannot change (see
            :func:`check_resume_settings`).
    """

    def __init__(self, task: Task, cfg: EngineConfig, dist_info: DistInfo, device: torch.device,
                 ckpt: Optional[Dict[str, Any]] = None, validate_start: bool = False):
        self.task, self.cfg, self.dist, self.device = task, cfg, dist_info, device
        self.amp_dtype = resolve_precision(cfg.precision, device)
        if cfg.batch_size < dist_info.world:
            raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be at least the number of "
                             f"processes ({dist_info.world})")
        self.last_path, self.best_path = os.path.join(cfg.out_dir, "last.pt"), os.path.join(cfg.out_dir, "best.pt")
        model = task.model.to(device)
        groups = task.param_groups(cfg.lr)
        self.params = [p for g in groups for p in g["params"]]
        # fused: one kernel per device for all parameters, instead of a loop of small operations per parameter
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          fused=device.type in ("cpu", "cuda"))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max",
                                                                    factor=cfg.lr_decay, patience=0)
        if cfg.compile:
            task.compile()
        # DDP's forward_sync_buffers (broadcast_buffers before torch 2.13) re-sends every buffer from rank 0 before
        # each forward pass; only a buffer that training changes (batch norm's running statistics in training mode)
        # needs it. The frozen encoder's batch norms stay in eval mode (Encoder.train), so a captioner's step would
        # send their statistics for nothing.
        DDP = torch.nn.parallel.DistributedDataParallel
        sync = buffers_trained(model)
        sync_option = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers": sync}
        self.ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                       **sync_option) if dist_info.world > 1 else model
        # the loop's state (all of it goes into last.pt)
        self.epoch, self.pos, self.step_count, self.best, self.bad = 1, 0, 0, -math.inf, 0
        self.history: List[Dict] = []
        self.epoch_sums: Dict[str, float] = {}
        self.epoch_steps, self.epoch_s, self.spent_s = 0, 0.0, 0.0
        torch.manual_seed(cfg.seed * 1000 + dist_info.rank)  # dropout streams differ between processes
        if ckpt is not None:
            self._load(ckpt)
        self.validate_start = validate_start and ckpt is None
        self.saved_step = self.step_count
        self.interval: Dict[str, torch.Tensor] = {}
        self.interval_steps = 0
        self.beat = Heartbeat(cfg.out_dir) if dist_info.main else None
        self.sampler = _LocalBatches()
        workers = self.workers = resolve_num_workers(cfg.num_workers, device,
                                                     int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.world)))
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
        rngs = [rng_state()]
        if self.dist.world > 1:
            rngs = [None] * self.dist.world
            dist.all_gather_object(rngs, rng_state())
        if not self.dist.main:
            return
        engine = {"epoch": self.epoch, "pos": self.pos, "step": self.step_count, "epoch_sums": self.epoch_sums,
                  "epoch_steps": self.epoch_steps, "epoch_s": self.epoch_s, "spent_s": self.spent_s, "rng": rngs,
                  "world": self.dist.world, "items": len(self.task.dataset)}
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
        self._apply_changed_settings(ckpt)
        e = ckpt.get("engine")
        if e is None:  # a checkpoint from before the engine: resume at the next epoch
            self.epoch = ckpt["epoch"] + 1
            return
        self.epoch, self.pos, self.step_count = e["epoch"], e["pos"], e["step"]
        self.epoch_sums, self.epoch_steps, self.epoch_s = dict(e["epoch_sums"]), e["epoch_steps"], e["epoch_s"]
        lost = Heartbeat.lost_seconds(self.cfg.out_dir, e["spent_s"], e["step"])
        self.spent_s = e["spent_s"] + lost
        if lost and self.dist.main:
            log.warning(f"{lost / 60:.1f} min after the last checkpoint were lost to an interruption; they count "
                        f"toward the time spent")
        rngs = e["rng"]
        if len(rngs) == self.dist.world:
            set_rng_state(rngs[self.dist.rank])
        elif self.dist.main:
            log.warning(f"resuming {len(rngs)} processes' run with {self.dist.world}: the dropout streams differ "
                        f"from an uninterrupted run")

    def _apply_changed_settings(self, ckpt: Dict[str, Any]) -> None:
        """The settings given on ``--resume`` that differ from the run's are applied, and so recorded in
        ``config.json`` and the checkpoints, or refused (:func:`check_resume_settings`): never reported and
        ignored. Applied here: the learning rates, ``weight_decay`` and ``lr_decay``, into the optimizer's and
        scheduler's state that last.pt restored; every other setting is read where it is used (epochs, budgets,
        clipping, loss weights, validation, devices, logging).

        Raises:
            SettingsError: a refused change (see :func:`check_resume_settings`).
        """
        changed = check_resume_settings(ckpt, self.cfg, type(self.task), len(self.task.dataset))
        lrs = self.task.lr_settings()
        if len(lrs) != len(self.optimizer.param_groups):
            raise RuntimeError(f"{type(self.task).__name__}.lr_settings() names {len(lrs)} settings for "
                               f"{len(self.optimizer.param_groups)} parameter groups")
        for group, setting in zip(self.optimizer.param_groups, lrs):
            if setting in changed:
                group["lr"] = getattr(self.cfg, setting)
            if "weight_decay" in changed:
                group["weight_decay"] = self.cfg.weight_decay
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if "lr_decay" in changed:
            self.scheduler.factor = self.cfg.lr_decay
        if changed and self.dist.main:
            log.info("resuming with changed settings (applied): " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())))

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
        os.makedirs(self.cfg.out_dir, exist_ok=True)
        if self.dist.main:
            self._write_config()
        self._truncate_step_log()
        if self.validate_start and self.step_count == 0 and not self.history:
            self._validate_start()
        t_mark = time.time()
        self._say_if_nothing_to_train()
        ran = False  # an epoch ended in this call
        while self.epoch <= self.cfg.epochs and not self._stop_before_epoch(ran):
            global_batches, todo = self._epoch_plan()
            t_mark = self._train_batches(global_batches, todo, t_mark)
            self._end_epoch(sum(len(b) for b in global_batches if len(b) >= self.dist.world))
            ran, t_mark = True, time.time()
        if self.beat is not None and os.path.exists(self.beat.path):
            os.remove(self.beat.path)
        return self.best_path

    def _write_config(self) -> None:
        """The resolved settings of this (re)start, beside the checkpoints."""
        resolved = {"device": str(self.device), "precision": "bf16" if self.amp_dtype else "fp32",
                    "num_workers": self.workers,
                    **({"ddp_broadcast_buffers": self.ddp.broadcast_buffers} if self.dist.world > 1 else {})}
        atomic_write_text(os.path.join(self.cfg.out_dir, "config.json"), json.dumps(
            {"model": self.task.payload().get("config"), "train": asdict(self.cfg), "world": self.dist.world,
             "resumed_at_step": self.step_count, "resolved": resolved}, indent=2))

    def _say_if_nothing_to_train(self) -> None:
        cfg = self.cfg
        if self.dist.main and self.history and self.pos == 0:
            done = self.history[-1]["epoch"]
            if done >= cfg.epochs:
                log.info(f"nothing to train: {done} epochs done, --epochs is {cfg.epochs}")
            elif self.bad >= cfg.patience:
                log.info(f"nothing to train: the run stopped early after epoch {done} ({self.bad} epochs without a "
                         f"new best, --patience {cfg.patience})")

    def _stop_before_epoch(self, ran: bool) -> bool:
        """Early stopping, or a time budget that the next epoch would pass (``ran``: an epoch ended in this
        call, so the stop is news)."""
        cfg = self.cfg
        if self.pos == 0 and self.bad >= cfg.patience:
            if self.dist.main and ran:
                log.info(f"early stopping: no new best {self.task.score_key} for {self.bad} epochs")
            return True
        if self.pos == 0 and cfg.max_minutes > 0 and self.history:
            last = self.history[-1]["train_s"] + self.history[-1]["val_s"]
            if self.spent_s + last > 60 * cfg.max_minutes:
                if self.dist.main:
                    log.info(f"stopping before epoch {self.epoch}: {self.spent_s / 60:.1f} min spent, another "
                             f"epoch would pass the {cfg.max_minutes:g}-minute budget")
                return True
        return False

    def _epoch_plan(self):
        """The epoch's global batches, and those to train from the current position with their positions.
        Positions index the batches as they are for every world size; a batch with fewer items than processes
        (every process needs one) is skipped, and said so."""
        global_batches = self.task.epoch_batches(self.epoch)
        if self.cfg.max_steps:
            global_batches = global_batches[: self.cfg.max_steps]
        todo, skipped = runnable_batches(global_batches, self.pos, self.dist.world)
        if skipped and self.dist.main:
            log.warning(f"epoch {self.epoch}: {len(skipped)} batch(es) with fewer items than the "
                        f"{self.dist.world} processes are not trained ({sum(len(b) for _, b in skipped)} items; "
                        f"positions {', '.join(str(i) for i, _ in skipped)})")
        self.sampler.batches = [shard(b, self.dist.rank, self.dist.world) for _, b in todo]
        return global_batches, todo

    def _train_batches(self, global_batches, todo, t_mark: float) -> float:
        """One epoch's steps from the current position: logs every ``--log-every``, ``last.pt`` every
        ``--save-every``; returns the time mark of the last step."""
        from tqdm import tqdm

        cfg, task = self.cfg, self.task
        self.ddp.train()
        bar = tqdm(total=len(global_batches), initial=self.pos, desc=f"epoch {self.epoch}", leave=False,
                   disable=True if not (cfg.progress and self.dist.main) else None)  # None: off when not a tty
        for batch, (at, gb) in zip(self.loader, todo):
            self.step(batch, StepContext(self.step_count, sum(task.words(i) for i in gb), len(gb), self.dist.world))
            self.step_count, self.pos = self.step_count + 1, at + 1
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
            kill_if_reached("step", self.step_count - 1, self.step_count)  # the kill tests' fault
        bar.close()
        summary = self._flush()
        if summary is not None and self.step_count % cfg.log_every:
            self._log_steps(summary)
        return t_mark

    def _validate(self) -> Dict[str, float]:
        """The task's validation scores ({name: value}, :attr:`Task.score_key` among them), computed on rank 0
        and sent to every process."""
        scores = [self.task.validate() if self.dist.main else {}]
        if self.dist.world > 1:
            dist.broadcast_object_list(scores, src=0)
        if not isinstance(scores[0], dict):  # a task with one score
            return {self.task.score_key: float(scores[0])}
        return {k: float(v) for k, v in scores[0].items()}

    def _validate_start(self) -> None:
        """The starting model's score is the best so far (for best.pt, early stopping and the scheduler), and
        best.pt holds the starting weights: an epoch replaces them only by beating them."""
        t0 = time.time()
        self.best = self.scheduler.best = self._validate()[self.task.score_key]
        self.spent_s += time.time() - t0
        if self.dist.main:
            log.info(f"the starting model's validation {self.task.score_key}: {self.best:.2f} (best.pt holds it "
                     f"until an epoch beats it)")
            save_checkpoint(self.best_path, {**self.task.payload(), **self._meta()})
        self._save_last()  # a run killed in its first epoch resumes (a folder with best.pt needs last.pt)

    def _end_epoch(self, items: int) -> None:
        """Validate, decide (best, early stopping, learning rate), write checkpoints and logs; ``items`` is the
        number the epoch trained on (for the throughput)."""
        cfg, task = self.cfg, self.task
        train_s, t1 = self.epoch_s, time.time()
        scores = self._validate()
        score = scores[task.score_key]
        val_s = time.time() - t1
        self.spent_s += val_s
        improved = score > self.best
        self.best, self.bad = (score, 0) if improved else (self.best, self.bad + 1)
        self.scheduler.step(score)
        row = {"epoch": self.epoch, **{k: round(v, 4) for k, v in task.summarise(self.epoch_sums,
                                                                                  self.epoch_steps).items()},
               **{k: round(v, 2) for k, v in scores.items()}, "lr": self.optimizer.param_groups[0]["lr"],
               "train_s": round(train_s, 1), "val_s": round(val_s, 1),
               f"{task.item_name}_per_s": round(items / max(train_s, 1e-9), 1)}
        self.history.append(row)
        self.epoch, self.pos = self.epoch + 1, 0
        self.epoch_sums, self.epoch_steps, self.epoch_s = {}, 0, 0.0
        if improved and self.dist.main:
            save_checkpoint(self.best_path, {**task.payload(), **self._meta()})
        if cfg.keep_epochs and self.dist.main:
            os.makedirs(os.path.join(cfg.out_dir, "epochs"), exist_ok=True)
            save_checkpoint(os.path.join(cfg.out_dir, "epochs", f"epoch_{row['epoch']}.pt"),
                            {**task.payload(), **self._meta()})
        self._save_last()
        if self.dist.main:
            write_metrics(cfg.out_dir, self.history)
            plot_curves(self.history, task.loss_key, task.score_key, os.path.join(cfg.out_dir, "curves.png"))
            print(json.dumps(row) + ("  (best)" if improved else ""), flush=True)
