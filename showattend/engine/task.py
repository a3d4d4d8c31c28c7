"""What an application gives the training engine: a :class:`Task` (its model, data, loss, validation and
checkpoint payload), and the :class:`StepContext` the engine tells its loss about each step."""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Sequence, Union

import torch
from torch.utils.data import Dataset

__all__ = ["StepContext", "Task"]


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
    #: settings a resumed run cannot change (they made the model or its vocabulary): refused on --resume
    fixed_settings: tuple = ()
    #: settings of the training data: they may change between epochs, not inside one
    data_settings: tuple = ()

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
        """Log values from the sums of ``steps`` steps (e.g. cross-entropy per word); they include
        ``loss_key``."""
        raise NotImplementedError

    def validate(self) -> Union[float, Dict[str, float]]:
        """The validation score of ``self.model`` (called on rank 0 only), or several named scores, each logged
        per epoch, :attr:`score_key` the one that picks ``best.pt``, stops early and decays the learning rate."""
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

    def param_groups(self, lr: float) -> List[Dict[str, Any]]:
        """The optimizer's parameter groups (default: every trainable parameter of ``model`` at ``lr``; a task
        gives parts of its model other learning rates here, e.g. a fine-tuned encoder)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def lr_settings(self) -> List[str]:
        """The setting that gives each of :meth:`param_groups`' learning rates (a resume that changes it sets
        that group's learning rate)."""
        return ["lr"]
