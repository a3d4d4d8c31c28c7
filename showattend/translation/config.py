"""The settings of a translator: its architecture (:class:`TranslatorConfig`, stored in its checkpoints), its data
(:class:`DataConfig`: the folder and the language pair; used by training and ``translate evaluate``) and its
training (:class:`TranslationTrainConfig`), below the code that uses them."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

import tyro

from ..engine import EngineConfig
from ..errors import CheckpointError
from ..options import data_hint, data_path

__all__ = ["TranslatorConfig", "DataConfig", "TranslationTrainConfig"]


@dataclass
class TranslatorConfig:
    """Architecture of a translator (stored in its checkpoint).

    Attributes:
        decoder: "bahdanau" or "luong".
        score: Luong's score, "dot", "general" or "concat" (Bahdanau is always additive).
        embed_dim: word embedding size (source and target).
        encoder_hidden: H, BiLSTM size per direction (memory size 2H).
        decoder_hidden: N, decoder LSTM size (must equal 2H for Luong's dot score).
        attention_dim: hidden size of the additive/concat score.
        encoder_layers: BiLSTM layers.
        dropout: dropout on embeddings, encoder outputs and the output layer.
        src_vocab_size, tgt_vocab_size: subword vocabulary sizes, set from the trained subword models (not
            command-line options: `translate train --vocab-size` sets the sentencepiece target).
    """

    decoder: Literal["luong", "bahdanau"] = "luong"
    score: Literal["dot", "general", "concat"] = "general"
    embed_dim: int = 256
    encoder_hidden: int = 256
    decoder_hidden: int = 512
    attention_dim: int = 256
    encoder_layers: int = 1
    dropout: float = 0.3
    src_vocab_size: Annotated[int, tyro.conf.Suppress] = 8000
    tgt_vocab_size: Annotated[int, tyro.conf.Suppress] = 8000

    def __post_init__(self):
        if self.decoder not in ("bahdanau", "luong"):
            raise ValueError(f"decoder must be one of ['bahdanau', 'luong'], got {self.decoder!r}")
        if self.score not in ("dot", "general", "concat"):
            raise ValueError(f"score must be dot, general or concat, got {self.score!r}")
        for name in ("embed_dim", "encoder_hidden", "decoder_hidden", "attention_dim", "encoder_layers",
                     "src_vocab_size", "tgt_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> "TranslatorConfig":
        """The config stored in a checkpoint (strict, as the captioner's :class:`ModelConfig`).

        Raises:
            CheckpointError: a field this version does not know.
        """
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"unknown model config fields {sorted(unknown)}")
        return cls(**d)


@dataclass
class DataConfig:
    """Where a parallel corpus is: the settings that `showattend translate train` and `translate evaluate` share
    (each a `--field` option). Without `--data`, the default comes from the environment variable
    ``SHOWATTEND_DATA``, a folder holding ``multi30k/``; unset, there is none.

    Attributes:
        data: folder with `{train,val,test_2016_flickr}.{lang}[.gz]` files; by default `$SHOWATTEND_DATA/multi30k`,
            and none when that variable is unset.
        src: source language code, the file suffix (`train.de`: `de`).
        tgt: target language code.
    """

    data: Annotated[str, tyro.conf.arg(help_behavior_hint=data_hint)] = field(
        default_factory=lambda: data_path("multi30k"))
    src: str = "de"
    tgt: str = "en"

    def validate(self) -> None:
        """Raises ValueError: no data folder given (and ``SHOWATTEND_DATA`` unset)."""
        if not self.data:
            raise ValueError("no --data given: pass a folder of {split}.{lang}[.gz] files (train.de, train.en, "
                             "val.de, ...), or set SHOWATTEND_DATA to a folder holding multi30k/")


@dataclass
class TranslationTrainConfig(DataConfig, EngineConfig):
    """Training settings of `showattend translate train` (each is a `--field` option). The engine's settings
    (epochs, batch size, learning rate, budget, device, precision, ...) are
    EngineConfig's; the data folder and the language pair, DataConfig's.

    Attributes:
        train_split: split the model and the subword vocabularies are trained on.
        val_split: split whose BLEU selects `best.pt` and drives early stopping.
        vocab_size: sentencepiece vocabulary size per language.
        max_len: training pairs with a side longer than this many subwords are dropped (and counted in the log).
        label_smoothing: label smoothing of the cross-entropy.
        val_beam_size: beam size of the validation decoding.
        length_penalty: p of score / length^p when decoding.
    """

    train_split: str = "train"
    val_split: str = "val"
    out_dir: str = "runs/translator"
    vocab_size: int = 8000
    max_len: int = 100
    epochs: int = 20
    lr: float = 1e-3
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    val_beam_size: int = 1
    length_penalty: float = 1.0

    def validate(self) -> None:
        """Check the settings before any long work.

        Raises:
            ValueError: the first bad setting, named as its option.
        """
        EngineConfig.validate(self, ("vocab_size", "max_len", "val_beam_size"))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        DataConfig.validate(self)
