"""The user-facing translator: an attention seq2seq network (:class:`~showattend.translation.network.Seq2Seq`) with its
source and target subword models; translate raw sentences, load and save checkpoints, load a bundled model."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Union

import torch

from ..checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_weights
from ..runs import resolve_device
from ..search import Hypothesis
from .data import pad_batch
from .config import TranslatorConfig
from .network import Seq2Seq
from .tokenizer import SubwordTokenizer

log = logging.getLogger(__name__)

__all__ = ["Translator", "TranslationResult", "checkpoint_parts", "CHECKPOINT_KIND", "REQUIRED"]

CHECKPOINT_KIND = "showattend-translator"
#: the fields a translator checkpoint must have
REQUIRED = ("config", "model", "src_tokenizer", "tgt_tokenizer")


def checkpoint_parts(ckpt: dict, path: str):
    """The :class:`TranslatorConfig` and the source and target subword models of a loaded translator checkpoint.

    Raises:
        CheckpointError: one of them is malformed (the message names the file).
    """
    try:
        cfg = TranslatorConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: bad translator config in the checkpoint ({err})") from None
    toks = []
    for side in ("src", "tgt"):
        try:
            toks.append(SubwordTokenizer.from_bytes(ckpt[f"{side}_tokenizer"]))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: the {side} subword model in the checkpoint is unusable ({err})") from None
    return cfg, toks[0], toks[1]


@dataclass
class TranslationResult:
    """One translation.

    Attributes:
        text: the detokenised translation.
        source_pieces: the source's subwords.
        target_pieces: the translation's subwords, the last one ``</s>`` when it finished.
        alpha: (len(target_pieces), len(source_pieces)) attention weights α, one row per target subword.
        log_prob: summed log-probability of the target subwords (natural log).
    """

    text: str
    source_pieces: List[str]
    target_pieces: List[str]
    alpha: torch.Tensor
    log_prob: float


class Translator:
    """A translator with its tokenizers: translate raw sentences, save and load checkpoints.

    Args:
        model: the :class:`~showattend.translation.network.Seq2Seq` network.
        src_tok, tgt_tok: sentencepiece tokenizers.
        device: torch device.
        max_src_len: longer inputs are cut to this many subwords (with a warning on stderr).
    """

    def __init__(self, model: Seq2Seq, src_tok: SubwordTokenizer, tgt_tok: SubwordTokenizer,
                 device: torch.device = torch.device("cpu"), max_src_len: int = 250):
        self.model, self.src_tok, self.tgt_tok = model.to(device), src_tok, tgt_tok
        self.device, self.max_src_len = device, max_src_len

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto") -> "Translator":
        """Load ``best.pt``/``last.pt`` of a translation run.

        Raises:
            CheckpointError: missing/corrupt file, another format, or weights that do not match the config.
        """
        ckpt = load_checkpoint(path, CHECKPOINT_KIND, required=REQUIRED)
        cfg, src_tok, tgt_tok = checkpoint_parts(ckpt, path)
        model = Seq2Seq(cfg)
        load_weights(model, ckpt["model"], path)
        return cls(model, src_tok, tgt_tok, resolve_device(device))

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto") -> "Translator":
        """Load a bundled translator by name (:func:`showattend.list_models` ``("translation")``).

        Raises:
            ValueError: no such bundled translator. CheckpointError: its file is damaged.
        """
        from ..pretrained import weights_file

        return cls.from_checkpoint(str(weights_file(name, "translation")), device)

    def state(self) -> dict:
        """The checkpoint payload (plain data): config, both subword models, weights."""
        return {"format": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "config": asdict(self.model.cfg),
                "src_tokenizer": self.src_tok.to_bytes(), "tgt_tokenizer": self.tgt_tok.to_bytes(),
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()}}

    def translate(self, sentences: Union[str, Sequence[str]], beam_size: int = 5, max_len: int = 100,
                  length_penalty: float = 1.0, batch_size: int = 64
                  ) -> Union["TranslationResult", List["TranslationResult"]]:
        """Translate raw text: one sentence gives its :class:`TranslationResult`, a list of sentences a list.

        Empty or whitespace-only lines give an empty translation; characters never seen in training become
        ``<unk>`` subwords; sentences longer than ``max_src_len`` subwords are cut.
        """
        single = isinstance(sentences, str)
        batch = [sentences] if single else list(sentences)
        results: List[Optional[TranslationResult]] = [None] * len(batch)
        todo = []
        for i, s in enumerate(batch):
            ids = self.src_tok.encode(s) if s.strip() else []
            if len(ids) > self.max_src_len:
                log.warning(f"sentence {i + 1} has {len(ids)} subwords; cut to {self.max_src_len}")
                ids = ids[: self.max_src_len]
            if not ids:
                results[i] = TranslationResult("", [], [], torch.zeros(0, 0), 0.0)
            else:
                todo.append((i, ids))
        for k in range(0, len(todo), batch_size):
            chunk = sorted(todo[k:k + batch_size], key=lambda c: -len(c[1]))  # longest first: the packed encoder
            src, lengths = pad_batch([ids for _, ids in chunk])  # then needs no sort on the device
            hyps = self.model.translate_ids(src.to(self.device), lengths.tolist(), beam_size, max_len,
                                            length_penalty)  # the lengths stay on the host, where packing reads them
            for (i, ids), h in zip(chunk, hyps):
                results[i] = self._result(ids, h)
        return results[0] if single else results  # type: ignore[return-value]

    def _result(self, src_ids: List[int], h: Hypothesis) -> "TranslationResult":
        pieces = [self.src_tok.id_to_piece(i) for i in src_ids]
        target = [self.tgt_tok.id_to_piece(i) for i in h.tokens] + (["</s>"] if h.finished else [])
        alpha = h.extras[:, : len(src_ids)].float() if h.extras is not None else torch.zeros(0, len(src_ids))
        return TranslationResult(self.tgt_tok.decode(h.tokens), pieces, target, alpha, h.log_prob)
