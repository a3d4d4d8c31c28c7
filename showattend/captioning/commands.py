"""The captioning commands: ``train``, ``cache``, ``caption``, ``evaluate`` (see :mod:`showattend.commands`)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, List, Literal, Tuple

import tyro

from ..commands import (BundledOrFile, DecodingCommand, OptionalFile, SwitchOnly, TrainingCommand, UnprefixedOptions,
                        check_decoding, report_json)
from ..pretrained import DEFAULT_CAPTIONER
from .config import DataConfig, ModelConfig, TrainConfig

log = logging.getLogger(__name__)

#: the --help note of a decoding option whose default is the bundled model's own (``showattend models``)
_BUNDLED_OR = "(default: the bundled model's own, see `showattend models`; %g with --checkpoint)"

__all__ = ["Train", "Cache", "CaptionDecoding", "Caption", "Evaluate"]


@dataclass
class Train(TrainingCommand):
    """Train a captioner.

    The encoder's feature cache is built first (if needed), then the decoder is trained with teacher forcing
    and early stopping on validation CIDEr-D (--val-metric). Every option overrides the default; with --resume,
    the run's own settings.

    Attributes:
        model: the model's settings (stored in the checkpoint).
        train: the training settings.
    """

    model: Annotated[ModelConfig, UnprefixedOptions] = field(default_factory=ModelConfig)
    train: Annotated[TrainConfig, UnprefixedOptions] = field(default_factory=TrainConfig)
    _SETTINGS: ClassVar[tuple] = (ModelConfig, TrainConfig)
    #: what --scst changes among the defaults (RL fine-tuning takes small steps; a batch counts images)
    SCST_DEFAULTS: ClassVar[dict] = {"lr": 5e-5, "batch_size": 16}

    def derived_settings(self, train: TrainConfig) -> dict:
        """With --scst, :attr:`SCST_DEFAULTS`; with --init, the checkpoint's model settings (wherever --scst and
        --init were set: the command line or --config).

        Raises:
            FileNotFoundError, CheckpointError: --init names neither a file nor a bundled captioner, or no
                captioner checkpoint.
        """
        from dataclasses import asdict

        values = {k: (v, "--scst") for k, v in self.SCST_DEFAULTS.items()} if train.scst else {}
        if train.init:
            from .train import init_checkpoint

            values.update({k: (v, train.init) for k, v in asdict(init_checkpoint(train.init)[2]).items()})
        return values

    def validate(self) -> None:
        """Raises ValueError: model options that differ from --init's checkpoint, or a bad training setting."""
        if self.train.init and not self.resume:
            from .train import check_same_model, init_checkpoint

            init_cfg = init_checkpoint(self.train.init)[2]
            check_same_model(self.model, init_cfg, self.train.init)
        super().validate()

    @staticmethod
    def _train(*args, **kwargs):
        from .train import train

        return train(*args, **kwargs)


@dataclass
class Cache:
    """Cache a dataset's annotation vectors.

    Every image is encoded once with the frozen CNN and its annotation vectors stored (fp16, memory-mapped).
    Resumable; `train` does this itself when needed; under torchrun each process encodes its share.

    Attributes:
        encoder: backbone, a key of ENCODERS.
        encoder_weights: optional local .pth for the backbone.
        image_size: input side in pixels (the model's --image-size; 0: the encoder's native size).
        dataset: the caption files, their images and the cache folder.
        device: "auto" (cuda when available), "cpu" or "cuda".
        batch_size: images per encoder forward pass.
    """

    encoder: str = ModelConfig.encoder
    encoder_weights: OptionalFile = ""
    image_size: int = ModelConfig.image_size
    dataset: Annotated[DataConfig, UnprefixedOptions] = field(default_factory=DataConfig)
    device: str = "auto"
    batch_size: int = 32

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        self.dataset.validate()
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")

    def run(self) -> int:
        from .train import load_records, prepare_cache
        from ..engine import setup_distributed

        model_cfg = ModelConfig(encoder=self.encoder, encoder_weights=self.encoder_weights or None,
                                image_size=self.image_size)
        t0 = time.time()
        dist_info, device = setup_distributed(self.device)
        store = prepare_cache(self.dataset, model_cfg, load_records(self.dataset), device, dist_info,
                              batch_size=self.batch_size)
        print(f"feature cache: {store.folder} ({len(store.row)} images, {time.time() - t0:.0f} s)")
        return 0


@dataclass
class CaptionDecoding(BundledOrFile):
    """How `caption` and `evaluate` decode.

    Attributes:
        model: a bundled captioner, by name (`showattend models` lists them).
        checkpoint: a captioner checkpoint file (from `showattend train` or `export`), used instead of --model.
        beam_size: beam size; 1 = greedy.
        max_len: maximum caption length in tokens, <end> included: the last one is always <end>.
        length_penalty: rank hypotheses by log-prob / length^p (0: plain log-prob). p > 0 makes the search slower
            (exact, it can stop only once no live caption could win by growing to --max-len). Both default to the
            bundled model's own (the validation split's best, `showattend models`), or 3 and 0 with --checkpoint.
        device: "auto" (cuda when available), "cpu" or "cuda".
        attention: soft: the expected context Σ α_i a_i at every step (deterministic; the default, also for
            hard-attention models); hard: sample the attended location at every step, run the search --samples
            times and keep the best-scoring caption (log-prob / length^p).
        samples: sampled searches with --attention hard.
        precision: fp32, or bf16: the decoder under bf16 autocast (faster on CPUs with AVX-512 BF16 or AMX and
            on recent GPUs; slower where bf16 is emulated); captions can differ where two words are nearly tied.
    """

    task: ClassVar[str] = "captioning"
    default_model: ClassVar[str] = DEFAULT_CAPTIONER
    model: Annotated[str, tyro.conf.arg(metavar="NAME", help_behavior_hint=f"(default: {DEFAULT_CAPTIONER})")] = ""
    checkpoint: OptionalFile = ""
    beam_size: Annotated[int, tyro.conf.arg(help_behavior_hint=_BUNDLED_OR % 3)] = 3
    max_len: int = 20
    length_penalty: Annotated[float, tyro.conf.arg(help_behavior_hint=_BUNDLED_OR % 0)] = 0.0
    device: str = "auto"
    attention: Literal["soft", "hard"] = "soft"
    samples: int = 5
    precision: Literal["fp32", "bf16"] = "fp32"

    def validate(self) -> None:
        """Raises ValueError: a bad decoding option (named)."""
        check_decoding(self.beam_size, self.max_len, self.length_penalty, self.device)
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")
        self.check_model()


@dataclass
class Caption(DecodingCommand):
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
    decoding: Annotated[CaptionDecoding, UnprefixedOptions] = field(default_factory=CaptionDecoding)
    format: Literal["text", "tsv", "jsonl"] = "text"
    alphas: Annotated[bool, SwitchOnly] = False
    attention_dir: Annotated[str, tyro.conf.arg(metavar="FOLDER", help_behavior_hint="(optional)")] = ""
    show_beta: Annotated[bool, SwitchOnly] = False
    colorbar: Annotated[bool, SwitchOnly] = False
    batch_size: int = 16
    html: OptionalFile = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        from ..runs import check_output_file, check_output_folder

        self.decoding.validate()
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.alphas and self.format != "jsonl":
            raise ValueError("--alphas needs --format jsonl")
        check_output_file(self.html, "--html")
        check_output_folder(self.attention_dir, "--attention-dir")

    def run(self) -> int:
        from tqdm import tqdm

        from .images import expand_inputs
        from .captioner import Captioner

        if not self.images:
            print("showattend caption: error: no IMAGE given (see showattend caption --help)", file=sys.stderr)
            return 2
        d = self.decoding
        cap = Captioner.from_checkpoint(d.model_file(), device=d.device)
        sources, arg_errors = expand_inputs(self.images)
        if not sources and not arg_errors:
            log.error("error: no images given (standard input was empty)")
            return 1
        errors, items = {}, []
        several = len(sources) > 1 or sources != self.images
        bar = tqdm(total=len(sources), desc="captioning", unit="img", disable=None, leave=False)
        # images read and decoded in worker processes while the batch before is encoded and captioned
        for source, result in cap.caption_stream(sources, batch_size=self.batch_size, beam_size=d.beam_size,
                                                 max_len=d.max_len, length_penalty=d.length_penalty,
                                                 attention=d.attention, samples=d.samples, precision=d.precision):
            if isinstance(result, str):
                errors[source] = result
                log.error(f"error: {result}")
            else:
                self._emit(source, result, several, cap)
                if self.html:
                    from .overlay import report_item

                    items.append(report_item(source, source, result))
            bar.update(1)
        bar.close()
        for msg in arg_errors.values():  # folders and patterns holding no image
            log.error(f"error: {msg}")
        if self.html:
            from ..report import write_caption_report

            write_caption_report(self.html, items, f"showattend caption: {len(items)} image"
                                                   f"{'s' if len(items) != 1 else ''}, {d.model_name()}, beam "
                                                   f"{d.beam_size}, length penalty {d.length_penalty:g}")
            log.info(f"report: {self.html}")
        if errors or arg_errors:
            log.error(f"{len(errors) + len(arg_errors)} of {len(sources) + len(arg_errors)} images failed")
            return 1
        return 0

    def _emit(self, source: str, r, several: bool, cap) -> None:
        """Print one result in --format and write its overlay."""
        from .images import is_url, open_rgb
        from .overlay import plot_attention

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
class Evaluate(DecodingCommand):
    """Score a captioner on a split: BLEU-1..4, METEOR, ROUGE-L, CIDEr.

    The split is captioned with beam search and scored with pycocoevalcap (PTB tokenizer, scores 0-100). SPICE
    is not computed (it needs a download).

    Attributes:
        decoding: how the output is decoded.
        dataset: the caption files, their images and the feature cache folder.
        split: the split to caption and score.
        limit: only the first N images of the split (0: all).
        output: also write the JSON report to this file.
        captions_out: write the generated captions as JSON to this file.
        metrics: the metrics to compute; METEOR (and the PTB tokenizer) need Java, and without Java the others
            are computed on showattend's own tokenisation.
        html: write a self-contained HTML page: each image with its caption, references and scores (sortable,
            filterable), and each word's attention map on hover or click.
    """

    decoding: Annotated[CaptionDecoding, UnprefixedOptions] = field(default_factory=CaptionDecoding)
    dataset: Annotated[DataConfig, UnprefixedOptions] = field(default_factory=DataConfig)
    split: Literal["train", "val", "test"] = "test"
    limit: int = 0
    output: OptionalFile = ""
    captions_out: OptionalFile = ""
    metrics: Tuple[Literal["bleu", "meteor", "rouge", "cider"], ...] = ("bleu", "meteor", "rouge", "cider")
    html: OptionalFile = ""

    def validate(self) -> None:
        """Raises ValueError: a bad option (named)."""
        from ..runs import check_output_file

        self.decoding.validate()
        self.dataset.validate()
        if self.limit < 0:
            raise ValueError(f"--limit must not be negative, got {self.limit}")
        for option, value in (("--html", self.html), ("--output", self.output), ("--captions-out", self.captions_out)):
            check_output_file(value, option)

    def run(self) -> int:
        from .evaluate import evaluate

        d = self.decoding
        report = evaluate(d.model_file(), self.dataset, split=self.split, beam_size=d.beam_size,
                          max_len=d.max_len, length_penalty=d.length_penalty, device=d.device, limit=self.limit,
                          captions_out=self.captions_out or None, attention=d.attention, samples=d.samples,
                          metrics=self.metrics, html=self.html or None, precision=d.precision)
        return report_json(report, self.output)
