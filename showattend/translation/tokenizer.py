"""Subword tokenisation with sentencepiece, trained on the training data and stored inside checkpoints."""
from __future__ import annotations

import io
from typing import Iterable, List, Sequence

__all__ = ["PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "SubwordTokenizer"]

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class SubwordTokenizer:
    """A sentencepiece model with showattend's special ids (pad 0, bos 1, eos 2, unk 3).

    Build one with :meth:`train`; store it with :meth:`to_bytes` (the serialized model proto, plain bytes that
    ``torch.load(weights_only=True)`` accepts) and restore it with :meth:`from_bytes`.
    """

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = bytes(model_proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        except (RuntimeError, TypeError):
            raise ValueError(f"not a sentencepiece model: {len(self.proto)} bytes that sentencepiece cannot parse") \
                from None
        if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()) != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
            raise ValueError("sentencepiece model has other special ids than pad=0, bos=1, eos=2, unk=3")

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int = 8000, model_type: str = "unigram",
              character_coverage: float = 1.0) -> "SubwordTokenizer":
        """Train a sentencepiece model on raw sentences.

        Args:
            sentences: training sentences (raw text, one per item).
            vocab_size: target vocabulary size (a smaller one is used if the data cannot fill it).
            model_type: "unigram" or "bpe".
            character_coverage: sentencepiece's character coverage (1.0 keeps every character seen).

        Returns:
            the trained tokenizer.
        """
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter([s for s in sentences if s.strip()]), model_writer=model,
                vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage, pad_id=PAD_ID,
                bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, hard_vocab_limit=False, minloglevel=2, num_threads=2)
        except RuntimeError as err:  # e.g. a vocabulary smaller than the special pieces
            raise ValueError(f"sentencepiece cannot train a {vocab_size}-piece vocabulary on this text (--vocab-size): "
                             f"{str(err).splitlines()[-1][:200]}") from None
        return cls(model.getvalue())

    @classmethod
    def from_bytes(cls, data: bytes) -> "SubwordTokenizer":
        return cls(data)

    def to_bytes(self) -> bytes:
        return self.proto

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> List[int]:
        """Raw text -> subword ids (no bos/eos); characters never seen in training become ``<unk>``."""
        return self.sp.encode(text)

    def pieces(self, text: str) -> List[str]:
        """Raw text -> subword strings (for alignment plots)."""
        return self.sp.encode(text, out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        """Subword ids -> detokenized text (specials dropped)."""
        return self.sp.decode([int(i) for i in ids if int(i) > EOS_ID])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))
