"""Pretrained models that ship inside the package, the torchvision way: a registry of names with metadata (task,
training data and its licence, encoder, decoding defaults, test metrics with their split and beam, file size), and
the weights found with :mod:`importlib.resources`, never relative to the current directory.

``showattend.captioning.Captioner.from_pretrained("flickr8k-lite2-soft")`` and
``showattend.translation.Translator.from_pretrained("multi30k-de-en")`` load them.

Each file's SHA-256 is recorded here and checked when it is first loaded, so a damaged installation is reported
as such instead of failing inside decoding.
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Literal, Optional

from .errors import CheckpointError

__all__ = ["PretrainedModel", "PRETRAINED", "DEFAULT_CAPTIONER", "DEFAULT_TRANSLATOR", "list_models", "get_model",
           "weights_file", "card_file"]


@dataclass(frozen=True)
class PretrainedModel:
    """Metadata of a bundled model.

    Attributes:
        name: registry key, e.g. "flickr8k-lite2-soft".
        task: "captioning" or "translation".
        file: the weights' file name in ``showattend/weights/`` (in the repository a link to the file in
            ``assets/``, where the project's binary files live; the wheel carries the file itself).
        sha256: SHA-256 (hex) of that file.
        size_mib: its size in MiB.
        data: the training data.
        data_licence: the licence of the training data (and so the terms the model is offered under).
        encoder: the image encoder (captioning) or the architecture (translation).
        decoding: the decoding settings the metrics were measured with (the CLI's defaults).
        metrics: test metrics, 0-100.
        evaluation: split, beam and scorer of the metrics.
        card: the model card's file name in ``showattend/weights/`` (Markdown).
    """

    name: str
    task: Literal["captioning", "translation"]
    file: str
    sha256: str
    size_mib: float
    data: str
    data_licence: str
    encoder: str
    decoding: Dict[str, float] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    evaluation: str = ""
    card: str = ""


#: what the bundled captioners share: their training data and its licence, and the split they are tested on
_FLICKR8K = dict(data="Flickr8k, Karpathy (official) split: 6,000 train images, 30,000 captions",
                 data_licence="Flickr8k is distributed for research use; its images are under their Flickr owners' "
                              "terms")


def _swept(length_penalty: float) -> dict:
    """A captioner's decoding defaults, the validation split's best of greedy decoding and beam 3/5/7 x length
    penalty 0/0.5/1 (beam 3 for both bundled ones), and how its test metrics were measured with them."""
    return dict(decoding={"beam_size": 3, "max_len": 20, "length_penalty": length_penalty},
                evaluation="Flickr8k test split (1,000 images, 5 references), beam 3, length penalty "
                           f"{length_penalty:g} (the validation split's best of greedy and beam 3/5/7 x length "
                           "penalty 0/0.5/1), pycocoevalcap with the PTB tokenizer")


PRETRAINED: Dict[str, PretrainedModel] = {m.name: m for m in [
    PretrainedModel(
        name="flickr8k-lite2-soft", task="captioning", file="flickr8k-lite2-soft.pt",
        sha256="65484eb77d271b19b592bc12130bf12c705b6388d331f5f5798dbd3f322ccfa3", size_mib=11.2,
        **_FLICKR8K,
        encoder="EfficientNet-Lite2 (ImageNet), its top 2 blocks fine-tuned, 260 px, 9x9x1280 annotation vectors; "
                "cross-entropy, then SCST (reward CIDEr-D + BLEU-4); int8 weight matrices",
        metrics={"BLEU-1": 65.27, "BLEU-2": 47.58, "BLEU-3": 34.04, "BLEU-4": 23.91, "METEOR": 22.45,
                 "ROUGE-L": 49.15, "CIDEr": 63.74},
        **_swept(1.0),
        card="flickr8k-lite2-soft.md"),
    PretrainedModel(
        name="flickr8k-lite2-hard", task="captioning", file="flickr8k-lite2-hard.pt",
        sha256="124e5de3546e80c00ac01c0605877e86ed09058db8448291d105c477bce4fc77", size_mib=10.1,
        **_FLICKR8K,
        encoder="EfficientNet-Lite2 (ImageNet, frozen), 260 px, 9x9x1280 annotation vectors; hard (stochastic) "
                "attention, decoded with the expected context; int8 weight matrices",
        metrics={"BLEU-1": 61.87, "BLEU-2": 43.84, "BLEU-3": 30.37, "BLEU-4": 20.81, "METEOR": 20.47,
                 "ROUGE-L": 46.21, "CIDEr": 52.70},
        **_swept(0.5),
        card="flickr8k-lite2-hard.md"),
    PretrainedModel(
        name="multi30k-de-en", task="translation", file="multi30k-de-en.pt",
        sha256="7823e63b9cd398d1b5fa8d04f291ab7efeee7a0bb0566bb66f97083163992f5d", size_mib=21.3,
        data="Multi30k task 1 (German-English): 29,000 training sentence pairs",
        data_licence="Multi30k is distributed for research use; its sentences describe Flickr30k images",
        encoder="bidirectional LSTM 256 over sentencepiece subwords (8,000 German, 7,931 English), Bahdanau "
                "attention decoder 512 (additive score), 10.6 M parameters",
        decoding={"beam_size": 5, "length_penalty": 1.0},
        metrics={"BLEU": 38.06, "chrF": 56.88},
        evaluation="Multi30k test_2016_flickr (1,000 sentences), beam 5, length penalty 1, sacreBLEU on detokenised "
                   "text",
        card="multi30k-de-en.md"),
]}

#: the captioner ``showattend caption`` uses when neither --model nor --checkpoint is given
DEFAULT_CAPTIONER = "flickr8k-lite2-soft"
#: the translator ``showattend translate`` uses when neither --model nor --checkpoint is given
DEFAULT_TRANSLATOR = "multi30k-de-en"

_verified: Dict[str, Path] = {}


def list_models(task: Optional[str] = None) -> List[str]:
    """Names of the bundled models (of one task: "captioning" or "translation")."""
    return [n for n, m in PRETRAINED.items() if task is None or m.task == task]


def get_model(name: str, task: Optional[str] = None) -> PretrainedModel:
    """The metadata of a bundled model.

    Raises:
        ValueError: no such model (or one of another task); the message lists the names.
    """
    names = list_models(task)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        raise ValueError(f"no bundled {task or ''} model {name!r}".replace("  ", " ") +
                         (f" (did you mean {close[0]!r}?)" if close else "") +
                         f"; the bundled ones are: {', '.join(names) or 'none yet'} (showattend models)")
    return PRETRAINED[name]


def card_file(name: str) -> Path:
    """The path of a bundled model's card (Markdown) inside the installed package.

    Raises:
        ValueError: no such model.
    """
    return _in_package(get_model(name).card)


def _in_package(file: str) -> Path:
    """The path of a file in ``showattend/weights/`` of the installed package (never the current directory)."""
    return Path(str(resources.files("showattend") / "weights" / file))


def weights_file(name: str, task: Optional[str] = None) -> Path:
    """The path of a bundled model's weights inside the installed package, checked against its SHA-256 once per
    process.

    Raises:
        ValueError: no such model. FileNotFoundError: the file is not in the installation. CheckpointError: its
            content does not match the recorded SHA-256 (a damaged installation).
    """
    model = get_model(name, task)
    if name in _verified:
        return _verified[name]
    path = _in_package(model.file)
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name} are missing from this installation: {path} "
                                f"(reinstall showattend)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != model.sha256:
        raise CheckpointError(f"{path}: the weights of {name} are damaged (SHA-256 {digest[:12]}..., expected "
                      f"{model.sha256[:12]}...); reinstall showattend")
    _verified[name] = path
    return path
