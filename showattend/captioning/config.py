"""The training settings of a captioner (:class:`TrainConfig`), below the code that uses them: the task, SCST and
the training run all read them."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Tuple

from ..engine import EngineConfig
from .losses import DS_NORMALISATIONS, SCST_BASELINES, DSNormalisation, SCSTBaseline

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig(EngineConfig):
    """Training settings of a captioner (stored in the checkpoint; every field is a `showattend train --field`
    option). The engine's settings (epochs, batch size, learning rate, device, precision, ...) are
    EngineConfig's.

    Attributes:
        data: the caption files: a Karpathy JSON (`dataset_flickr8k.json` ...), or one or more official COCO
            `captions_*.json` (e.g. `captions_train2014.json captions_val2014.json`).
        images: image folder the file names are relative to; for a COCO file, the folder named like the file's
            split under it (`images/train2014` for `captions_train2014.json`) when there is one.
        karpathy_split: for COCO annotation files, the `dataset_coco.json` that assigns splits (every image it
            assigns is kept, from whichever file holds it).
        cache_dir: where feature caches live (one sub-folder per dataset and encoder).
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
            REINFORCE, starting from `--init`; `--batch-size` then counts images, validation selects on CIDEr-D,
            and the defaults of `--lr` and `--batch-size` become 5e-5 and 16.
        scst_samples: captions sampled per image and step (k).
        scst_baseline: the reward baseline: "mean", the mean reward of the image's other samples (Luo 2020), or
            "greedy", the reward of its greedy caption (Rennie et al. 2017).
        scst_reward_end: count `<end>` as a word of the samples and the references in the CIDEr-D reward (as in
            Luo's self-critical.pytorch), so that how a caption ends is rewarded.
        scst_xe_weight: λ of a cross-entropy term on the batch images' reference captions added to the SCST loss
            (0: SCST alone); it holds the captions' length and wording near the references'.
    """

    data: Tuple[str, ...] = ("../shared/data/flickr8k/dataset_flickr8k.json",)
    images: str = "../shared/data/flickr8k/images"
    karpathy_split: str = ""
    cache_dir: str = "runs/cache"
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

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __post_init__(self):
        self.data = (self.data,) if isinstance(self.data, str) else tuple(self.data)  # one file, or a list

    def validate(self) -> None:
        """Check every setting before any long work (a feature cache can take half an hour), the engine's too.

        Raises:
            ValueError: the first bad setting, named as its option.
        """
        super().validate(("hard_samples", "val_beam_size", "val_max_len", "max_caption_len", "scst_samples"))
        if self.scst_baseline not in SCST_BASELINES:
            raise ValueError(f"--scst-baseline {self.scst_baseline!r}: choose one of {', '.join(SCST_BASELINES)}")
        if self.scst_xe_weight < 0:
            raise ValueError(f"--scst-xe-weight must not be negative, got {self.scst_xe_weight}")
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
