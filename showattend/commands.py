"""The ``showattend`` commands: one dataclass each, whose fields are its options (tyro turns them into the command
line, their help from the ``Attributes:`` entries) and whose :meth:`run` does the work and returns the exit code.
The command tree and the dispatch are in :mod:`showattend.cli`."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, List, Literal, Sequence, Tuple

import tyro

from .captioning.model import ModelConfig
from .captioning.train import TrainConfig
from .options import layered_settings, settings_instance
from .pretrained import DEFAULT_CAPTIONER, PRETRAINED, get_model, weights_file
from .translation.model import TranslatorConfig
from .translation.train import TranslationTrainConfig

log = logging.getLogger(__name__)

__all__ = ["Train", "Cache", "Caption", "Evaluate", "Export", "Models", "Translate", "TranslateTrain",
           "TranslateEvaluate", "CaptionDecoding", "TranslationDecoding", "DEFAULT_TRANSLATOR"]

DEFAULT_TRANSLATOR = os.path.join("runs", "translator", "best.pt")

_flat = tyro.conf.OmitArgPrefixes  # a nested dataclass's options keep their own names: --batch-size
_flag = tyro.conf.FlagCreatePairsOff  # --resume only, no --no-resume
_File = Annotated[str, tyro.conf.arg(metavar="FILE")]
_Optional = Annotated[str, tyro.conf.arg(help_behavior_hint="(optional)")]  # "" is unset


@dataclass
class _TrainingCommand:
    """What both training commands share: the options about the run, the settings they start from, the checks
    and the call. A subclass names its settings classes and its training function.

    Attributes:
        resume: continue from OUT_DIR/last.pt exactly where it was saved, with the run's own settings (options
            given again override them).
        overwrite: a new run replaces the run files in OUT_DIR.
        config: YAML or JSON file of settings (names as fields or options: batch_size: 32), or a run's
            config.json; the options given on the command line win.
    """

    resume: Annotated[bool, _flag] = False
    overwrite: Annotated[bool, _flag] = False
    config: Annotated[str, tyro.conf.arg(metavar="FILE", help_behavior_hint="(optional)")] = ""

    #: the model and training settings classes, and the model settings never taken from a file or last.pt
    _SETTINGS: ClassVar[tuple] = ()
    _DERIVED: ClassVar[tuple] = ()

    @classmethod
    def starting_settings(cls, argv: Sequence[str]):
        """The defaults the command line overrides: the run's settings with --resume, then --config's."""
        model_cls, train_cls = cls._SETTINGS
        values = layered_settings(argv, cls._SETTINGS, train_cls.out_dir, ignore=cls._DERIVED)
        return cls(model=settings_instance(model_cls, values), train=settings_instance(train_cls, values))

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
class Train(_TrainingCommand):
    """Train a captioner.

    The encoder's feature cache is built first (if needed), then the decoder is trained with teacher forcing
    and early stopping on validation BLEU-4. Every option overrides the default; with --resume, the run's own
    settings.

    Attributes:
        model: the model's settings (stored in the checkpoint).
        train: the training settings.
    """

    model: Annotated[ModelConfig, _flat] = field(default_factory=ModelConfig)
    train: Annotated[TrainConfig, _flat] = field(default_factory=TrainConfig)
    _SETTINGS: ClassVar[tuple] = (ModelConfig, TrainConfig)

    @staticmethod
    def _train(*args, **kwargs):
        from .captioning.train import train

        return train(*args, **kwargs)


@dataclass
class Cache:
    """Cache a dataset's annotation vectors.

    Every image is encoded once with the frozen CNN and its annotation vectors stored (fp16, memory-mapped).
    Resumable; `train` does this itself when needed; under torchrun each process encodes its share.

    Attributes:
        encoder: backbone, a key of ENCODERS.
        encoder_weights: optional local .pth for the backbone.
        image_size: input side in pixels (the model's --image-size).
        data: a Karpathy JSON, or one or more official COCO captions_*.json files.
        images: image folder the file names are relative to (for COCO files: holding train2014/, val2014/ ...).
        karpathy_split: for COCO annotation files, the dataset_coco.json that assigns splits.
        cache_dir: where feature caches live (one sub-folder per dataset and encoder).
        device: "auto" (cuda when available), "cpu" or "cuda".
        batch_size: images per encoder forward pass.
    """

    encoder: str = ModelConfig.encoder
    encoder_weights: _Optional = ""
    image_size: int = ModelConfig.image_size
    data: Tuple[str, ...] = TrainConfig.data
    images: str = TrainConfig.images
    karpathy_split: _Optional = ""
    cache_dir: str = TrainConfig.cache_dir
    device: str = "auto"
    batch_size: int = 32

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")

    def run(self) -> int:
        from .captioning.train import load_records, prepare_cache
        from .engine import setup_distributed

        model_cfg = ModelConfig(encoder=self.encoder, encoder_weights=self.encoder_weights or None,
                                image_size=self.image_size)
        cfg = TrainConfig(data=self.data, images=self.images, karpathy_split=self.karpathy_split,
                          cache_dir=self.cache_dir, device=self.device)
        t0 = time.time()
        dist_info, device = setup_distributed(cfg.device)
        store = prepare_cache(cfg, model_cfg, load_records(cfg), device, dist_info, batch_size=self.batch_size)
        print(f"feature cache: {store.folder} ({len(store.row)} images, {time.time() - t0:.0f} s)")
        return 0


@dataclass
class CaptionDecoding:
    """How `caption` and `evaluate` decode.

    Attributes:
        model: a bundled captioner, by name (`showattend models` lists them).
        checkpoint: a captioner checkpoint file (from `showattend train` or `export`), used instead of --model.
        beam_size: beam size; 1 = greedy.
        max_len: maximum caption length in tokens, <end> included: the last one is always <end>.
        length_penalty: rank hypotheses by log-prob / length^p (0: plain log-prob).
        device: "auto" (cuda when available), "cpu" or "cuda".
        attention: soft: the expected context Σ α_i a_i at every step (deterministic; the default, also for
            hard-attention models); hard: sample the attended location at every step, run the search --samples
            times and keep the best-scoring caption (log-prob / length^p).
        samples: sampled searches with --attention hard.
    """

    model: str = DEFAULT_CAPTIONER
    checkpoint: Annotated[str, tyro.conf.arg(metavar="FILE", help_behavior_hint="(optional)")] = ""
    beam_size: int = 3
    max_len: int = 20
    length_penalty: float = 0.0
    device: str = "auto"
    attention: Literal["soft", "hard"] = "soft"
    samples: int = 5

    def validate(self) -> None:
        """Raises ValueError: a bad decoding option (named)."""
        _check_decoding(self.beam_size, self.max_len, self.length_penalty, self.device)
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")
        if not self.checkpoint:
            get_model(self.model, "captioning")

    def checkpoint_file(self) -> str:
        """--checkpoint, or the bundled --model's file."""
        return self.checkpoint or str(weights_file(self.model, "captioning"))


@dataclass
class Caption:
    """Caption images, optionally with attention overlays.

    Images are files, folders (searched recursively), http(s) URLs, glob patterns, or - for a list of them on
    standard input; they are read in batches as they are captioned. Output: one caption per image (text: the
    caption alone for one image, path<TAB>caption for several; tsv: always path<TAB>caption; jsonl: one JSON
    object per image with the log-probability, the words and, with --alphas, the attention weights). With
    --attention-dir, also IMAGE_attention.png: the image and, per word, its attention map. Unreadable images are
    reported and the others still captioned; the exit code is 1 if any image failed.

    Attributes:
        images: image files (JPEG, PNG, ...), folders, http(s) URLs, glob patterns, or - (a list on stdin).
        decoding: how the output is decoded.
        format: the output format.
        alphas: with --format jsonl, include each word's attention weights α (and β) and the grid.
        attention_dir: write one attention overlay PNG per image into this folder.
        show_beta: show the gating scalar β in the overlay titles.
        colorbar: add a colour bar to the overlays.
        batch_size: images read and captioned at a time.
        html: write a self-contained HTML page of the results: each image with its caption; hover or click a
            word to see its attention map over the image.
    """

    images: Annotated[List[str], tyro.conf.Positional, tyro.conf.arg(metavar="IMAGE", help_behavior_hint="")]
    decoding: Annotated[CaptionDecoding, _flat] = field(default_factory=CaptionDecoding)
    format: Literal["text", "tsv", "jsonl"] = "text"
    alphas: Annotated[bool, _flag] = False
    attention_dir: _Optional = ""
    show_beta: Annotated[bool, _flag] = False
    colorbar: Annotated[bool, _flag] = False
    batch_size: int = 16
    html: _Optional = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        from .runs import check_output_file, check_output_folder

        self.decoding.validate()
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.alphas and self.format != "jsonl":
            raise ValueError("--alphas needs --format jsonl")
        if self.html:
            check_output_file(self.html, "--html")
        if self.attention_dir:
            check_output_folder(self.attention_dir, "--attention-dir")

    def run(self) -> int:
        from tqdm import tqdm

        from .captioning.images import expand_inputs
        from .captioning.model import Captioner

        if not self.images:
            print("showattend caption: error: no IMAGE given (see showattend caption --help)", file=sys.stderr)
            return 2
        d = self.decoding
        cap = Captioner.from_checkpoint(d.checkpoint_file(), device=d.device)
        sources, arg_errors = expand_inputs(self.images)
        if not sources and not arg_errors:
            log.error("error: no images given (standard input was empty)")
            return 1
        errors, items = {}, []
        several = len(sources) > 1 or sources != self.images
        bar = tqdm(total=len(sources), desc="captioning", unit="img", disable=None, leave=False)
        for i in range(0, len(sources), self.batch_size):  # read lazily, a batch at a time
            chunk = sources[i:i + self.batch_size]
            results, failed = cap.caption_files(chunk, beam_size=d.beam_size, max_len=d.max_len,
                                                length_penalty=d.length_penalty, attention=d.attention,
                                                samples=d.samples)
            errors.update(failed)
            for source in chunk:
                if source in results:
                    self._emit(source, results[source], several, cap)
                    if self.html:
                        from .report import caption_item

                        items.append(caption_item(source, source, results[source]))
                else:
                    log.error(f"error: {failed[source]}")
            bar.update(len(chunk))
        bar.close()
        for msg in arg_errors.values():  # folders and patterns holding no image
            log.error(f"error: {msg}")
        if self.html:
            from .report import write_caption_report

            write_caption_report(self.html, items, f"showattend caption: {len(items)} images, "
                                                   f"{d.checkpoint or d.model}, beam {d.beam_size}")
            log.info(f"report: {self.html}")
        if errors or arg_errors:
            log.error(f"{len(errors) + len(arg_errors)} of {len(sources) + len(arg_errors)} images failed")
            return 1
        return 0

    def _emit(self, source: str, r, several: bool, cap) -> None:
        """Print one result in --format and write its overlay."""
        from .captioning.images import is_url, open_rgb
        from .captioning.overlay import plot_attention

        if self.format == "jsonl":
            row = {"image": source, "caption": r.text, "log_prob": round(r.log_prob, 4), "words": r.words}
            if self.alphas:
                row.update(grid=list(r.grid), alphas=[[round(a, 5) for a in row_] for row_ in r.alphas.tolist()],
                           betas=[round(b, 5) for b in r.betas.tolist()])
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            print(f"{source}\t{r.text}" if several or self.format == "tsv" else r.text, flush=True)
        if self.attention_dir:
            name = source.split("?")[0].rstrip("/").rsplit("/", 1)[-1] if is_url(source) else os.path.basename(source)
            out = os.path.join(self.attention_dir, f"{os.path.splitext(name)[0] or 'image'}_attention.png")
            plot_attention(open_rgb(source), r.words, r.alphas, r.grid, out,
                           betas=r.betas if self.show_beta else None, mark_location=cap.config.attention == "hard",
                           colorbar=self.colorbar)
            log.info(f"  attention overlay: {out}")


@dataclass
class Evaluate:
    """Score a captioner on a split: BLEU-1..4, METEOR, ROUGE-L, CIDEr.

    The split is captioned with beam search and scored with pycocoevalcap (PTB tokenizer, scores 0-100). SPICE
    is not computed (it needs a download).

    Attributes:
        decoding: how the output is decoded.
        data: a Karpathy JSON, or one or more COCO captions files.
        images: image folder.
        karpathy_split: for COCO annotation files, the dataset_coco.json that assigns splits.
        split: the split to caption and score.
        cache_dir: feature cache folder (frozen encoders).
        limit: only the first N images of the split (0: all).
        output: also write the JSON report to this file.
        captions_out: write the generated captions as JSON to this file.
        metrics: the metrics to compute; METEOR (and the PTB tokenizer) need Java, and without Java the others
            are computed on showattend's own tokenisation.
        html: write a self-contained HTML page: each image with its caption, references and scores (sortable,
            filterable), and each word's attention map on hover or click.
    """

    decoding: Annotated[CaptionDecoding, _flat] = field(default_factory=CaptionDecoding)
    data: Tuple[str, ...] = TrainConfig.data
    images: str = TrainConfig.images
    karpathy_split: _Optional = ""
    split: Literal["train", "val", "test"] = "test"
    cache_dir: str = TrainConfig.cache_dir
    limit: int = 0
    output: _Optional = ""
    captions_out: _Optional = ""
    metrics: Tuple[Literal["bleu", "meteor", "rouge", "cider"], ...] = ("bleu", "meteor", "rouge", "cider")
    html: _Optional = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        from .runs import check_output_file

        self.decoding.validate()
        if self.limit < 0:
            raise ValueError(f"--limit must not be negative, got {self.limit}")
        for option, value in (("--html", self.html), ("--output", self.output), ("--captions-out", self.captions_out)):
            if value:
                check_output_file(value, option)

    def run(self) -> int:
        from .captioning.evaluate import evaluate

        d = self.decoding
        report = evaluate(d.checkpoint_file(), data=self.data, images=self.images,
                          karpathy_split=self.karpathy_split, split=self.split, beam_size=d.beam_size,
                          max_len=d.max_len, length_penalty=d.length_penalty,
                          cache_dir=self.cache_dir, device=d.device, limit=self.limit,
                          captions_out=self.captions_out or None, attention=d.attention, samples=d.samples,
                          metrics=self.metrics, html=self.html or None)
        return _report(report, self.output)


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
    half: Annotated[bool, _flag] = False

    def run(self) -> int:
        from .checkpoint import export_checkpoint

        out = export_checkpoint(self.checkpoint, self.output, half=self.half)
        size = os.path.getsize(self.output) / 2 ** 20
        print(f"wrote {self.output} ({out['format']}, {size:.1f} MiB{', fp16 weights' if self.half else ''})")
        return 0


@dataclass
class Models:
    """List the bundled models: name, task, test metrics, size, training data and its licence.

    Load one with `showattend caption --model NAME` or, in Python, `Captioner.from_pretrained(NAME)`.

    Attributes:
        task: only the models of this task.
    """

    task: Literal["all", "captioning", "translation"] = "all"

    def run(self) -> int:
        for m in PRETRAINED.values():
            if self.task not in ("all", m.task):
                continue
            default = " (the default)" if m.name == DEFAULT_CAPTIONER else ""
            print(f"{m.name}{default}\n  task:      {m.task}\n  encoder:   {m.encoder}\n  data:      {m.data}\n"
                  f"  licence:   {m.data_licence}\n  test:      "
                  + ", ".join(f"{k} {v:.2f}" for k, v in m.metrics.items()) + f"\n             ({m.evaluation})\n"
                  f"  decoding:  " + ", ".join(f"{k} {v}" for k, v in m.decoding.items()) +
                  f"\n  file:      {m.file}, {m.size_mib:.0f} MiB\n  card:      {m.card}\n")
        if not any(self.task in ("all", m.task) for m in PRETRAINED.values()):
            print(f"no bundled {self.task} model yet")
        return 0


@dataclass
class TranslationDecoding:
    """How `translate` and `translate evaluate` decode.

    Attributes:
        checkpoint: translator checkpoint.
        beam_size: beam size; 1 = greedy.
        length_penalty: rank hypotheses by log-prob / length^p.
        device: "auto" (cuda when available), "cpu" or "cuda".
    """

    checkpoint: _File = DEFAULT_TRANSLATOR
    beam_size: int = 5
    length_penalty: float = 1.0
    device: str = "auto"

    def validate(self) -> None:
        """Raises ValueError: a bad decoding option (named)."""
        _check_decoding(self.beam_size, 2, self.length_penalty, self.device)

    def translator_file(self) -> str:
        """--checkpoint, with what to do when the default one is missing (no translator is bundled yet).

        Raises:
            FileNotFoundError: the default checkpoint is missing.
        """
        if self.checkpoint == DEFAULT_TRANSLATOR and not os.path.isfile(self.checkpoint):
            raise FileNotFoundError(f"no translator here: no bundled translator ships yet, and the default "
                                    f"--checkpoint {DEFAULT_TRANSLATOR} is missing; train one with `showattend "
                                    f"translate train` (see the README) or pass --checkpoint FILE")
        return self.checkpoint


@dataclass
class Translate:
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
    decoding: Annotated[TranslationDecoding, _flat] = field(default_factory=TranslationDecoding)
    max_len: int = 100
    alignment: _Optional = ""
    html: _Optional = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        self.decoding.validate()
        if self.max_len < 2:
            raise ValueError(f"--max-len must be at least 2 (a subword and </s>), got {self.max_len}")

    def run(self) -> int:
        from .translation.plot import plot_alignment
        from .translation.translator import Translator

        d = self.decoding
        bundle = Translator.from_checkpoint(d.translator_file(), d.device)
        sentences, bad = (self.text, {}) if self.text else _stdin_lines()
        results = bundle.translate([x for i, x in enumerate(sentences) if i not in bad], beam_size=d.beam_size,
                                   max_len=self.max_len, length_penalty=d.length_penalty)
        outputs = iter(results)
        for i in range(len(sentences)):  # one output line per input line; an unreadable one stays empty
            print("" if i in bad else next(outputs)["text"], flush=True)
        for i, msg in bad.items():
            log.error(f"showattend translate: error: standard input line {i + 1}: {msg}; left empty")
        if self.html:
            from .report import write_alignment_report

            write_alignment_report(self.html, results, f"showattend translate: {len(results)} sentences")
            log.info(f"report: {self.html}")
        if not results:
            return 1 if bad else 0
        if self.alignment:
            r = results[0]
            if not r["source_pieces"]:
                log.error("error: no alignment for an empty sentence")
                return 1
            plot_alignment(r["source_pieces"], r["target_pieces"], r["alpha"], self.alignment, title=r["text"])
            log.info(f"alignment of sentence 1: {self.alignment}")
        return 1 if bad else 0


@dataclass
class TranslateTrain(_TrainingCommand):
    """Train a translator (Bahdanau or Luong attention).

    Subword models are trained on the training split, then the translator, with early stopping on validation
    sacreBLEU. Every option overrides the default; with --resume, the run's own settings.

    Attributes:
        model: the model's settings (stored in the checkpoint).
        train: the training settings.
    """

    model: Annotated[TranslatorConfig, _flat] = field(default_factory=TranslatorConfig)
    train: Annotated[TranslationTrainConfig, _flat] = field(default_factory=TranslationTrainConfig)
    _SETTINGS: ClassVar[tuple] = (TranslatorConfig, TranslationTrainConfig)
    _DERIVED: ClassVar[tuple] = ("src_vocab_size", "tgt_vocab_size")  # set from the trained subword models

    @staticmethod
    def _train(*args, **kwargs):
        from .translation.train import train_translator

        return train_translator(*args, **kwargs)


@dataclass
class TranslateEvaluate:
    """Score a translator on a split: sacreBLEU's BLEU and chrF.

    The split is translated and scored on detokenized text (the signatures are printed).

    Attributes:
        decoding: how the output is decoded.
        data: folder of {split}.{lang}[.gz] files.
        src: source language code, the file suffix.
        tgt: target language code: the references.
        split: the split to translate.
        output: write the translations to this file, one per line.
    """

    decoding: Annotated[TranslationDecoding, _flat] = field(default_factory=TranslationDecoding)
    data: str = TranslationTrainConfig.data
    src: str = TranslationTrainConfig.src
    tgt: str = TranslationTrainConfig.tgt
    split: str = "test_2016_flickr"
    output: _Optional = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        self.decoding.validate()

    def run(self) -> int:
        from .translation.train import evaluate_translator

        d = self.decoding
        report = evaluate_translator(d.translator_file(), self.data, self.src, self.tgt, self.split, d.beam_size,
                                     d.length_penalty, d.device, self.output or None)
        return _report(report, "")


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


def _check_decoding(beam_size: int, max_len: int, length_penalty: float, device: str) -> None:
    from .runs import resolve_device

    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1, got {beam_size}")
    if max_len < 2:
        raise ValueError(f"--max-len must be at least 2 (a word and <end>), got {max_len}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"--length-penalty must be a number, got {length_penalty}")
    resolve_device(device)


def _report(report: dict, output: str) -> int:
    """Print a JSON report to stdout and, given ``output``, write it there atomically."""
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        from .runs import atomic_write_text

        atomic_write_text(output, text + "\n")
    return 0
