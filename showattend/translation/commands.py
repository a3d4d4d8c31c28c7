"""The translation commands: ``translate``, ``translate train``, ``translate evaluate`` (see
:mod:`showattend.commands`)."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, List

import tyro

from ..commands import (BundledOrFile, DecodingCommand, OptionalFile, TrainingCommand, UnprefixedOptions,
                        check_decoding, report_json)
from ..pretrained import DEFAULT_TRANSLATOR
from .config import DataConfig, TranslationTrainConfig, TranslatorConfig

log = logging.getLogger(__name__)

__all__ = ["Translate", "TranslateTrain", "TranslateEvaluate", "TranslationDecoding"]

@dataclass
class TranslationDecoding(BundledOrFile):
    """How `translate` and `translate evaluate` decode.

    Attributes:
        model: a bundled translator, by name (`showattend models --task translation` lists them).
        checkpoint: a translator checkpoint file (from `showattend translate train` or `export`), used instead of
            --model.
        beam_size: beam size; 1 = greedy.
        length_penalty: rank hypotheses by log-prob / length^p. p > 0 makes the search slower, and it stays
            exact: a hypothesis can stop the search only once no live one could beat it even by growing to the
            maximum length (--max-len), which with p > 0 is seldom early (test_2016_flickr, beam 5: about twice
            the time of p = 0).
        device: "auto" (cuda when available), "cpu" or "cuda".
    """

    task: ClassVar[str] = "translation"
    default_model: ClassVar[str] = DEFAULT_TRANSLATOR
    model: Annotated[str, tyro.conf.arg(metavar="NAME", help_behavior_hint=f"(default: {DEFAULT_TRANSLATOR})")] = ""
    checkpoint: OptionalFile = ""
    beam_size: int = 5
    length_penalty: float = 1.0
    device: str = "auto"

    def validate(self) -> None:
        """Raises ValueError: a bad decoding option or an unknown --model (named)."""
        check_decoding(self.beam_size, 2, self.length_penalty, self.device)
        self.check_model()


@dataclass
class Translate(DecodingCommand):
    """Translate text with an attention seq2seq model.

    The sentences given as arguments, or standard input one sentence per line, are translated to standard
    output. `showattend translate train` trains a translator and `showattend translate evaluate` scores one
    (see their --help); to translate the word "train" itself, put -- before it.

    Attributes:
        text: sentences (default: read standard input).
        decoding: how the output is decoded.
        max_len: maximum output tokens, </s> included: at most this minus 1 subwords.
        alignment: write the first sentence's attention heatmap to this PNG.
        html: write a self-contained HTML page with every sentence's alignment as an interactive matrix.
    """

    text: Annotated[List[str], tyro.conf.Positional, tyro.conf.arg(metavar="TEXT", help_behavior_hint="")] = \
        field(default_factory=list)
    decoding: Annotated[TranslationDecoding, UnprefixedOptions] = field(default_factory=TranslationDecoding)
    max_len: int = 100
    alignment: OptionalFile = ""
    html: OptionalFile = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        from ..runs import check_output_file

        self.decoding.validate()
        if self.max_len < 2:
            raise ValueError(f"--max-len must be at least 2 (a subword and </s>), got {self.max_len}")
        check_output_file(self.alignment, "--alignment")
        check_output_file(self.html, "--html")

    def run(self) -> int:
        from .plot import plot_alignment
        from .translator import Translator

        d = self.decoding
        bundle = Translator.from_checkpoint(d.model_file(), d.device)
        sentences, bad = (self.text, {}) if self.text else _stdin_lines()
        results = bundle.translate([x for i, x in enumerate(sentences) if i not in bad], beam_size=d.beam_size,
                                   max_len=self.max_len, length_penalty=d.length_penalty)
        outputs = iter(results)
        for i in range(len(sentences)):  # one output line per input line; an unreadable one stays empty
            print("" if i in bad else next(outputs).text, flush=True)
        for i, msg in bad.items():
            log.error(f"showattend translate: error: standard input line {i + 1}: {msg}; left empty")
        if self.html:
            from ..report import write_alignment_report
            from .plot import report_items

            write_alignment_report(self.html, report_items(results), f"showattend translate: {len(results)} sentences")
            log.info(f"report: {self.html}")
        if not results:
            return 1 if bad else 0
        if self.alignment:
            r = results[0]
            if not r.source_pieces:
                log.error("error: no alignment for an empty sentence")
                return 1
            plot_alignment(r.source_pieces, r.target_pieces, r.alpha, self.alignment, title=r.text)
            log.info(f"alignment of sentence 1: {self.alignment}")
        return 1 if bad else 0


@dataclass
class TranslateTrain(TrainingCommand):
    """Train a translator (Bahdanau or Luong attention).

    Subword models are trained on the training split, then the translator, with early stopping on validation
    sacreBLEU. Every option overrides the default; with --resume, the run's own settings.

    Attributes:
        model: the model's settings (stored in the checkpoint).
        train: the training settings.
    """

    model: Annotated[TranslatorConfig, UnprefixedOptions] = field(default_factory=TranslatorConfig)
    train: Annotated[TranslationTrainConfig, UnprefixedOptions] = field(default_factory=TranslationTrainConfig)
    _SETTINGS: ClassVar[tuple] = (TranslatorConfig, TranslationTrainConfig)
    _DERIVED: ClassVar[tuple] = ("src_vocab_size", "tgt_vocab_size")  # set from the trained subword models

    @staticmethod
    def _train(*args, **kwargs):
        from .train import train

        return train(*args, **kwargs)


@dataclass
class TranslateEvaluate(DecodingCommand):
    """Score a translator on a split: sacreBLEU's BLEU and chrF.

    The split is translated and scored on detokenized text; the JSON report (with sacreBLEU's signatures) goes
    to standard output.

    Attributes:
        decoding: how the output is decoded.
        dataset: the data folder and the language pair (the references are the target language's file).
        split: the split to translate.
        output: also write the JSON report to this file.
        translations_out: write the translations to this file, one per line.
    """

    decoding: Annotated[TranslationDecoding, UnprefixedOptions] = field(default_factory=TranslationDecoding)
    dataset: Annotated[DataConfig, UnprefixedOptions] = field(default_factory=DataConfig)
    split: str = "test_2016_flickr"
    output: OptionalFile = ""
    translations_out: OptionalFile = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        from ..runs import check_output_file

        self.decoding.validate()
        self.dataset.validate()
        check_output_file(self.output, "--output")
        check_output_file(self.translations_out, "--translations-out")

    def run(self) -> int:
        from .evaluate import evaluate

        d = self.decoding
        report = evaluate(d.model_file(), self.dataset, self.split, d.beam_size, d.length_penalty, d.device,
                          self.translations_out or None)
        return report_json(report, self.output)


def _stdin_lines():
    """Standard input's lines, each decoded on its own: ([text, ...], {index: what is wrong}) ("" for a line
    that is not UTF-8)."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (tests, notebooks)
        return [line.rstrip("\n") for line in sys.stdin], {}
    lines, bad = [], {}
    for i, line in enumerate(raw):
        try:
            lines.append(line.decode("utf-8").rstrip("\n").rstrip("\r"))
        except UnicodeDecodeError as err:
            lines.append("")
            bad[i] = f"not valid UTF-8 (byte {err.start + 1} is {line[err.start]:#04x})"
    return lines, bad
