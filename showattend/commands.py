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

from .options import given_options, read_config, rebuild, run_settings
from .pretrained import DEFAULT_CAPTIONER, DEFAULT_TRANSLATOR, PRETRAINED, card_file, get_model, weights_file

__all__ = ["TrainingCommand", "Export", "Models", "BundledOrFile", "DecodingCommand", "check_decoding", "report_json",
           "UnprefixedOptions", "SwitchOnly", "OptionalFile"]

#: marks a nested settings dataclass whose options keep their own names (--batch-size, not --train.batch-size)
UnprefixedOptions = tyro.conf.OmitArgPrefixes
#: marks a bool option given as --resume only (no --no-resume)
SwitchOnly = tyro.conf.FlagCreatePairsOff
#: a file option that may be left out ("" is unset)
OptionalFile = Annotated[str, tyro.conf.arg(metavar="FILE", help_behavior_hint="(optional)")]


@dataclass
class TrainingCommand:
    """What both training commands share: the options about the run, the layers of settings beneath the command
    line, the checks and the call. A subclass names its settings classes and its training function.

    Attributes:
        resume: continue from OUT_DIR/last.pt exactly where it was saved, with the run's own settings (options
            given again override them).
        overwrite: a new run replaces the run files in OUT_DIR.
        config: YAML or JSON file of settings (names as fields or options: batch_size: 32), or a run's
            config.json; the options given on the command line win.
    """

    resume: Annotated[bool, SwitchOnly] = False
    overwrite: Annotated[bool, SwitchOnly] = False
    config: OptionalFile = ""

    #: the model and training settings classes, and the model settings never taken from a file or last.pt (set
    #: by the program)
    _SETTINGS: ClassVar[tuple] = ()
    _DERIVED: ClassVar[tuple] = ()

    def settle(self, argv: Sequence[str]) -> None:
        """Put the layers beneath the options given in ``argv`` (the command's arguments, which tyro parsed into
        this object): the defaults of a kind of run (:meth:`derived_settings`, from the final ``--scst`` and
        ``--init``, wherever they were set), then with --resume the run's own settings, then --config's.

        Raises:
            FileNotFoundError, InputError (CheckpointError): a missing or unreadable --config file, last.pt or
                --init checkpoint. ValueError: a bad setting in the file, named with the file.
        """
        model_cls, train_cls = self._SETTINGS
        given = given_options(argv)
        from_file = read_config(self.config, self._SETTINGS, self._DERIVED) if self.config else {}
        out_dir = self.train.out_dir if "out_dir" in given else from_file.get("out_dir", self.train.out_dir)
        values = run_settings(out_dir, self._DERIVED) if self.resume else {}
        values.update({k: (v, self.config) for k, v in from_file.items()})
        values = {**self.derived_settings(rebuild(train_cls, self.train, given, values)), **values}
        self.model = rebuild(model_cls, self.model, given, values)
        self.train = rebuild(train_cls, self.train, given, values)

    def derived_settings(self, train) -> dict:
        """Defaults of a kind of run (given its training settings), beneath --resume's and --config's:
        {field: (value, source)}."""
        return {}

    def validate(self) -> None:
        """Raises ValueError: a bad training setting (the model's are checked when it is built), or --resume
        with --overwrite."""
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in OUT_DIR and --overwrite replaces it: give one of them")
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
    """Write an inference-only checkpoint (captioner or translator), optionally fp16 or int8.

    The optimizer and scheduler state are dropped and, with --half, the weights stored as float16; with --int8,
    the weight matrices as int8 with one scale per row and the rest as float16 (about half the size of --half).
    Either loads back as float32.

    Attributes:
        checkpoint: training checkpoint (best.pt or last.pt).
        output: output file.
        half: store float16 weights.
        int8: store the weight matrices as int8, one float16 scale per row (symmetric, round to nearest), the
            other weights as float16.
    """

    checkpoint: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    output: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUTPUT")]
    half: Annotated[bool, SwitchOnly] = False
    int8: Annotated[bool, SwitchOnly] = False

    def validate(self) -> None:
        """Raises ValueError: OUTPUT cannot be written (named), checked before the checkpoint is read."""
        from .runs import check_output_file

        check_output_file(self.output, "OUTPUT")

    def run(self) -> int:
        from .checkpoint import export_checkpoint

        out = export_checkpoint(self.checkpoint, self.output, half=self.half, int8=self.int8)
        size = os.path.getsize(self.output) / 2 ** 20
        kind = ", int8 weight matrices" if self.int8 else ", fp16 weights" if self.half else ""
        print(f"wrote {self.output} ({out['format']}, {size:.1f} MiB{kind})")
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
                  f"\n  file:      {m.file}, {m.size_mib:.1f} MiB\n  card:      {card_file(m.name)}\n")
        if not any(self.task in ("all", m.task) for m in PRETRAINED.values()):
            print(f"no bundled {self.task} model yet")
        return 0


class BundledOrFile:
    """What a decoding command's ``--model NAME`` / ``--checkpoint FILE`` pair shares: the subclass (a dataclass with
    ``model`` and ``checkpoint`` fields, "" when not given) names its task and default model in ``task`` and
    ``default_model``."""

    task: ClassVar[str]
    default_model: ClassVar[str]

    def check_model(self) -> None:
        """Raises ValueError: both --model and --checkpoint given, or no bundled model of that name for this
        task."""
        if self.model and self.checkpoint:
            raise ValueError(f"--model {self.model} and --checkpoint {self.checkpoint} exclude each other: give one")
        if not self.checkpoint:
            get_model(self.model_name(), self.task)

    def model_name(self) -> str:
        """--checkpoint, or the bundled model's name (--model, or the task's default)."""
        return self.checkpoint or self.model or self.default_model

    def model_file(self) -> str:
        """--checkpoint, or the bundled model's file."""
        return self.checkpoint or str(weights_file(self.model or self.default_model, self.task))

    def settle(self, argv: Sequence[str]) -> None:
        """A bundled model's decoding defaults (its registry entry's ``decoding``: the validation split's best
        beam size and length penalty) for the options that ``argv`` does not give; a --checkpoint keeps the
        options' own defaults."""
        if self.checkpoint:
            return
        given = given_options(argv)
        for name, value in get_model(self.model_name(), self.task).decoding.items():
            if name not in given and hasattr(self, name):
                setattr(self, name, type(getattr(self, name))(value))


class DecodingCommand:
    """A command with a ``decoding`` option group (a :class:`BundledOrFile`): the bundled model's decoding defaults
    apply where the command line gives none."""

    decoding: BundledOrFile

    def settle(self, argv: Sequence[str]) -> None:
        """See :meth:`BundledOrFile.settle`."""
        self.decoding.settle(argv)


def check_decoding(beam_size: int, max_len: int, length_penalty: float, device: str) -> None:
    from .runs import resolve_device

    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1, got {beam_size}")
    if max_len < 2:
        raise ValueError(f"--max-len must be at least 2 (a word and <end>), got {max_len}")
    if not math.isfinite(length_penalty) or length_penalty < 0:
        raise ValueError(f"--length-penalty must be a number >= 0 (0: no penalty), got {length_penalty}")
    resolve_device(device)


def report_json(report: dict, output: str) -> int:
    """Print a JSON report to stdout and, given ``output``, write it there atomically."""
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        from .runs import atomic_write_text

        atomic_write_text(output, text + "\n")
    return 0
