"""What the ``showattend`` commands share: the option markers, the base of the two training commands, the
checks of decoding options, JSON reports; and the commands of the core itself (``export``, ``models``).

Each command is a dataclass whose fields are its options (tyro turns them into the command line, their help from
the ``Attributes:`` entries) and whose ``run`` does the work and returns the exit code. The captioning commands
are in :mod:`showattend.captioning.commands`, the translation ones in :mod:`showattend.translation.commands`;
:mod:`showattend.cli` puts them in one tree."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Sequence

import tyro

from .options import layered_settings, settings_instance
from .pretrained import DEFAULT_CAPTIONER, DEFAULT_TRANSLATOR, PRETRAINED, get_model, weights_file

__all__ = ["TrainingCommand", "Export", "Models", "BundledOrFile", "check_decoding", "report_json", "flat", "flag", "File",
           "Optional_"]

flat = tyro.conf.OmitArgPrefixes  # a nested dataclass's options keep their own names: --batch-size
flag = tyro.conf.FlagCreatePairsOff  # --resume only, no --no-resume
File = Annotated[str, tyro.conf.arg(metavar="FILE")]
Optional_ = Annotated[str, tyro.conf.arg(help_behavior_hint="(optional)")]  # "" is unset


@dataclass
class TrainingCommand:
    """What both training commands share: the options about the run, the settings they start from, the checks
    and the call. A subclass names its settings classes and its training function.

    Attributes:
        resume: continue from OUT_DIR/last.pt exactly where it was saved, with the run's own settings (options
            given again override them).
        overwrite: a new run replaces the run files in OUT_DIR.
        config: YAML or JSON file of settings (names as fields or options: batch_size: 32), or a run's
            config.json; the options given on the command line win.
    """

    resume: Annotated[bool, flag] = False
    overwrite: Annotated[bool, flag] = False
    config: Annotated[str, tyro.conf.arg(metavar="FILE", help_behavior_hint="(optional)")] = ""

    #: the model and training settings classes, and the model settings never taken from a file or last.pt
    _SETTINGS: ClassVar[tuple] = ()
    _DERIVED: ClassVar[tuple] = ()

    @classmethod
    def starting_settings(cls, argv: Sequence[str]):
        """The defaults the command line overrides: the run's settings with --resume, then --config's."""
        model_cls, train_cls = cls._SETTINGS
        values = {**cls.base_settings(argv),
                  **layered_settings(argv, cls._SETTINGS, train_cls.out_dir, ignore=cls._DERIVED)}
        model = settings_instance(model_cls, values)
        for name, auto in getattr(model_cls, "AUTO_DEFAULTS", {}).items():
            if name not in values:  # resolved from the final options when the command line is parsed
                setattr(model, name, auto)
        return cls(model=model, train=settings_instance(train_cls, values))

    @classmethod
    def base_settings(cls, argv: Sequence[str]) -> dict:
        """Defaults of a kind of run, beneath --resume's and --config's settings: {field: (value, source)}."""
        return {}

    def validate(self) -> None:
        """Raises ValueError: a bad training setting (the model's are checked when it is built)."""
        self.train.validate()

    def run(self) -> int:
        from .engine import main_process

        t0 = time.time()
        best = self._train(self.model, self.train, resume=self.resume, overwrite=self.overwrite)
        if main_process():  # torchrun: one line, from rank 0
            print(f"best checkpoint: {best} ({(time.time() - t0) / 60:.1f} min)")
        return 0


@dataclass
class Export:
    """Write an inference-only checkpoint (captioner or translator), optionally fp16.

    The optimizer and scheduler state are dropped and, with --half, the weights stored as float16 (they load
    back as float32).

    Attributes:
        checkpoint: training checkpoint (best.pt or last.pt).
        output: output file.
        half: store float16 weights.
    """

    checkpoint: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    output: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUTPUT")]
    half: Annotated[bool, flag] = False

    def validate(self) -> None:
        """Raises ValueError: OUTPUT cannot be written (named), checked before the checkpoint is read."""
        from .runs import check_output_file

        check_output_file(self.output, "OUTPUT")

    def run(self) -> int:
        from .checkpoint import export_checkpoint

        out = export_checkpoint(self.checkpoint, self.output, half=self.half)
        size = os.path.getsize(self.output) / 2 ** 20
        print(f"wrote {self.output} ({out['format']}, {size:.1f} MiB{', fp16 weights' if self.half else ''})")
        return 0


@dataclass
class Models:
    """List the bundled models: name, task, test metrics, size, training data and its licence.

    Load one with `showattend caption --model NAME` / `showattend translate --model NAME` or, in Python,
    `Captioner.from_pretrained(NAME)` / `Translator.from_pretrained(NAME)`.

    Attributes:
        task: only the models of this task.
    """

    task: Literal["all", "captioning", "translation"] = "all"

    def run(self) -> int:
        for m in PRETRAINED.values():
            if self.task not in ("all", m.task):
                continue
            default = " (the default)" if m.name in (DEFAULT_CAPTIONER, DEFAULT_TRANSLATOR) else ""
            print(f"{m.name}{default}\n  task:      {m.task}\n  encoder:   {m.encoder}\n  data:      {m.data}\n"
                  f"  licence:   {m.data_licence}\n  test:      "
                  + ", ".join(f"{k} {v:.2f}" for k, v in m.metrics.items()) + f"\n             ({m.evaluation})\n"
                  f"  decoding:  " + ", ".join(f"{k} {v}" for k, v in m.decoding.items()) +
                  f"\n  file:      {m.file}, {m.size_mib:.0f} MiB\n  card:      {m.card}\n")
        if not any(self.task in ("all", m.task) for m in PRETRAINED.values()):
            print(f"no bundled {self.task} model yet")
        return 0


class BundledOrFile:
    """What a decoding command's ``--model NAME`` / ``--checkpoint FILE`` pair shares: the subclass (a dataclass with
    ``model`` and ``checkpoint`` fields) names its task in ``task``."""

    task: ClassVar[str]

    def check_model(self) -> None:
        """Raises ValueError: no bundled model of that name for this task (checked when no --checkpoint is given)."""
        if not self.checkpoint:
            get_model(self.model, self.task)

    def model_file(self) -> str:
        """--checkpoint, or the bundled --model's file."""
        return self.checkpoint or str(weights_file(self.model, self.task))


def check_decoding(beam_size: int, max_len: int, length_penalty: float, device: str) -> None:
    from .runs import resolve_device

    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1, got {beam_size}")
    if max_len < 2:
        raise ValueError(f"--max-len must be at least 2 (a word and <end>), got {max_len}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"--length-penalty must be a number, got {length_penalty}")
    resolve_device(device)


def report_json(report: dict, output: str) -> int:
    """Print a JSON report to stdout and, given ``output``, write it there atomically."""
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        from .runs import atomic_write_text

        atomic_write_text(output, text + "\n")
    return 0
