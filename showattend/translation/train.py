"""Training, evaluating and using a translator; the checkpoint conventions are the captioner's.

Checkpoint: ``{"format": "showattend-translator", "format_version", "config", "train_config",
"src_tokenizer": bytes, "tgt_tokenizer": bytes, "model": state_dict, ...}``, written atomically and loaded
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_weights
from ..runs import atomic_write_text, resolve_device
from ..engine import (EngineConfig, StepContext, Task, Trainer, check_out_dir, resolve_precision,
                        setup_distributed)
from ..search import Hypothesis
from .data import bucket_batches, encode_pairs, find_split, pad_batch, read_parallel
from .model import Translator, TranslatorConfig
from .tokenizer import PAD_ID, SubwordTokenizer

__all__ = ["TranslationTrainConfig", "TranslatorBundle", "TranslationBatch", "TranslationTask", "train_translator",
           "evaluate_translator", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "showattend-translator"


@dataclass
class TranslationTrainConfig(EngineConfig):
    """Training settings of `showattend translate train` (each is a `--field` option). The engine's settings
    (epochs, batch size, learning rate, budget, device, precision, ...) are
    EngineConfig's.

    Attributes:
        data: folder with `{train,val,test_2016_flickr}.{lang}[.gz]` files.
        src: source language code, the file suffix (`train.de`: `de`).
        tgt: target language code.
        train_split: split the model and the subword vocabularies are trained on.
        val_split: split whose BLEU selects `best.pt` and drives early stopping.
        vocab_size: sentencepiece vocabulary size per language.
        max_len: subword tokens kept per training sentence.
        label_smoothing: label smoothing of the cross-entropy.
        val_beam_size: beam size of the validation decoding.
        length_penalty: p of score / length^p when decoding.
    """

    data: str = "../shared/data/multi30k"
    src: str = "de"
    tgt: str = "en"
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
        super().validate(("vocab_size", "max_len", "val_beam_size"))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


_REQUIRED = ("config", "model", "src_tokenizer", "tgt_tokenizer")


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


class TranslatorBundle:
    """A translator with its tokenizers: translate raw sentences, save and load checkpoints.

    Args:
        model: the :class:`Translator`.
        src_tok, tgt_tok: sentencepiece tokenizers.
        device: torch device.
        max_src_len: longer inputs are cut to this many subwords (with a warning on stderr).
    """

    def __init__(self, model: Translator, src_tok: SubwordTokenizer, tgt_tok: SubwordTokenizer,
                 device: torch.device = torch.device("cpu"), max_src_len: int = 250):
        self.model, self.src_tok, self.tgt_tok = model.to(device), src_tok, tgt_tok
        self.device, self.max_src_len = device, max_src_len

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto") -> "TranslatorBundle":
        """Load ``best.pt``/``last.pt`` of a translation run.

        Raises:
            CheckpointError: missing/corrupt file, another format, or weights that do not match the config.
        """
        ckpt = load_checkpoint(path, CHECKPOINT_KIND, required=_REQUIRED)
        cfg, src_tok, tgt_tok = checkpoint_parts(ckpt, path)
        model = Translator(cfg)
        load_weights(model, ckpt["model"], path)
        return cls(model, src_tok, tgt_tok, resolve_device(device))

    def state(self) -> dict:
        return {"format": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "config": asdict(self.model.cfg),
                "src_tokenizer": self.src_tok.to_bytes(), "tgt_tokenizer": self.tgt_tok.to_bytes(),
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()}}

    def translate(self, sentences: Sequence[str], beam_size: int = 5, max_len: int = 100,
                  length_penalty: float = 1.0, batch_size: int = 64) -> List[Dict]:
        """Translate raw sentences.

        Empty or whitespace-only lines give an empty translation; characters never seen in training become
        ``<unk>`` subwords; sentences longer than ``max_src_len`` subwords are cut.

        Returns:
            one dict per sentence: ``text`` (detokenized), ``source_pieces``, ``target_pieces`` (subwords, the
            last one ``</s>`` when finished), ``alpha`` ((len(target_pieces), len(source_pieces)) tensor),
            ``log_prob``.
        """
        import sys

        results: List[Optional[Dict]] = [None] * len(sentences)
        todo = []
        for i, s in enumerate(sentences):
            ids = self.src_tok.encode(s) if s.strip() else []
            if len(ids) > self.max_src_len:
                print(f"warning: sentence {i + 1} has {len(ids)} subwords; cut to {self.max_src_len}",
                      file=sys.stderr)
                ids = ids[: self.max_src_len]
            if not ids:
                results[i] = {"text": "", "source_pieces": [], "target_pieces": [], "alpha": torch.zeros(0, 0),
                              "log_prob": 0.0}
            else:
                todo.append((i, ids))
        for k in range(0, len(todo), batch_size):
            chunk = todo[k:k + batch_size]
            src, lengths = pad_batch([ids for _, ids in chunk])
            hyps = self.model.translate_ids(src.to(self.device), lengths.to(self.device), beam_size,
                                            max_len, length_penalty)
            for (i, ids), h in zip(chunk, hyps):
                results[i] = self._result(ids, h)
        return results  # type: ignore[return-value]

    def _result(self, src_ids: List[int], h: Hypothesis) -> Dict:
        pieces = [self.src_tok.id_to_piece(i) for i in src_ids]
        target = [self.tgt_tok.id_to_piece(i) for i in h.tokens] + (["</s>"] if h.finished else [])
        alpha = h.extras[:, : len(src_ids)].float().cpu() if h.extras is not None else torch.zeros(0, len(src_ids))
        return {"text": self.tgt_tok.decode(h.tokens), "source_pieces": pieces, "target_pieces": target,
                "alpha": alpha, "log_prob": h.log_prob}


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> Dict:
    """sacreBLEU BLEU and chrF of detokenized text, with their signatures."""
    import sacrebleu

    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"BLEU": round(b.score, 2), "chrF": round(c.score, 2), "BLEU_signature": str(bleu.get_signature()),
            "chrF_signature": str(chrf.get_signature())}


class TranslationBatch(NamedTuple):
    """A training batch of sentence pairs.

    Attributes:
        src: (B, S) source ids, padded; src_lengths: B ints (host side, for the packed encoder);
        tgt_in: (B, T) ``<s> y_1 .. y_n``; tgt_out: (B, T) ``y_1 .. y_n </s>``, padded with 0.
    """

    src: torch.Tensor
    src_lengths: List[int]
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor


class TranslationTask(Task):
    """Translation for the engine: length-bucketed batches, label-smoothed cross-entropy per target subword,
    validation sacreBLEU by decoding.

    Args:
        bundle: the :class:`TranslatorBundle` being trained; cfg: training settings;
        pairs: training subword id pairs; val_src, val_tgt: validation sentences.
    """

    kind, loss_key, score_key, item_name = CHECKPOINT_KIND, "train_loss", "val_bleu", "sentences"

    def __init__(self, bundle: TranslatorBundle, cfg: TranslationTrainConfig, pairs, val_src: List[str],
                 val_tgt: List[str]):
        self.bundle, self.cfg, self.val_src, self.val_tgt = bundle, cfg, val_src, val_tgt
        self.model, self.dataset = bundle.model, pairs
        self._lengths = [len(s) for s, _ in pairs]

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        return list(bucket_batches(self._lengths, self.cfg.batch_size, random.Random(self.cfg.seed * 1000 + epoch)))

    def words(self, index: int) -> int:
        return len(self.dataset[index][1]) + 1  # the subwords and </s>

    def collate(self, items, rows) -> TranslationBatch:
        src, src_len = pad_batch([s for s, _ in items])
        tgt_in, _ = pad_batch([t for _, t in items], bos=True)
        tgt_out, _ = pad_batch([t for _, t in items], eos=True)
        return TranslationBatch(src, src_len.tolist(), tgt_in, tgt_out)

    def loss(self, model, batch: TranslationBatch, ctx: StepContext):
        logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in)
        total = F.cross_entropy(logits.float().transpose(1, 2), batch.tgt_out, ignore_index=PAD_ID,
                                label_smoothing=self.cfg.label_smoothing, reduction="sum")
        return total / ctx.words, {"sum": total.detach(),
                                   "words": torch.full((), ctx.words / ctx.world, device=total.device)}

    def summarise(self, sums: Dict[str, float], steps: int) -> Dict[str, float]:
        return {"train_loss": sums["sum"] / max(sums["words"], 1e-9)}

    def validate(self) -> float:
        hyps = [r["text"] for r in self.bundle.translate(self.val_src, beam_size=self.cfg.val_beam_size,
                                                         length_penalty=self.cfg.length_penalty)]
        return corpus_scores(hyps, self.val_tgt)["BLEU"]

    def payload(self) -> dict:
        return self.bundle.state()

    def compile(self) -> None:
        self.model.decoder.step = torch.compile(self.model.decoder.step, dynamic=True)


def train_translator(model_cfg: TranslatorConfig, cfg: TranslationTrainConfig, resume: bool = False,
                     overwrite: bool = False) -> str:
    """Train a translator with teacher forcing through the engine; early stopping on validation sacreBLEU.

    Returns:
        the path of ``best.pt``.

    Raises:
        FileNotFoundError: missing data files; CheckpointError: ``resume`` without a usable ``last.pt``;
        ValueError: a bad setting (checked before any long work).
    """
    cfg.validate()
    resume = check_out_dir(cfg.out_dir, resume, overwrite)
    dist_info, device = setup_distributed(cfg.device)
    resolve_precision(cfg.precision, device)
    tr_src, tr_tgt = read_parallel(find_split(cfg.data, cfg.train_split, cfg.src),
                                   find_split(cfg.data, cfg.train_split, cfg.tgt))
    va_src, va_tgt = read_parallel(find_split(cfg.data, cfg.val_split, cfg.src),
                                   find_split(cfg.data, cfg.val_split, cfg.tgt))
    last = os.path.join(cfg.out_dir, "last.pt")
    ckpt = load_checkpoint(last, CHECKPOINT_KIND, required=_REQUIRED) if resume else None
    if ckpt is not None:
        model_cfg, src_tok, tgt_tok = checkpoint_parts(ckpt, last)
    else:  # subword models from the training split only (each process trains the same ones)
        src_tok = SubwordTokenizer.train(tr_src, cfg.vocab_size)
        tgt_tok = SubwordTokenizer.train(tr_tgt, cfg.vocab_size)
        model_cfg.src_vocab_size, model_cfg.tgt_vocab_size = len(src_tok), len(tgt_tok)
        if dist_info.main and min(len(src_tok), len(tgt_tok)) < cfg.vocab_size:
            print(f"--vocab-size {cfg.vocab_size}: the training text fills only {len(src_tok)} {cfg.src} and "
                  f"{len(tgt_tok)} {cfg.tgt} subwords; training with those", file=sys.stderr, flush=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = Translator(model_cfg)
    if ckpt is not None:
        load_weights(model, ckpt["model"], last)
    bundle = TranslatorBundle(model, src_tok, tgt_tok, device)
    pairs = encode_pairs(tr_src, tr_tgt, src_tok, tgt_tok, cfg.max_len)
    if dist_info.main and len(pairs) < len(tr_src):
        print(f"dropped {len(tr_src) - len(pairs)} training pairs with an empty side (of {len(tr_src)} in "
              f"{cfg.train_split}.{cfg.src}/{cfg.tgt})", file=sys.stderr, flush=True)
    if dist_info.main:
        print(f"{cfg.src}->{cfg.tgt} {model_cfg.decoder}: {len(pairs)} training pairs, subword vocabularies "
              f"{len(src_tok)}/{len(tgt_tok)}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
              f"device {device}{f' x {dist_info.world} processes' if dist_info.world > 1 else ''}; precision "
              f"{'bf16' if resolve_precision(cfg.precision, device) else 'fp32'}", flush=True)
    task = TranslationTask(bundle, cfg, pairs, va_src, va_tgt)
    return Trainer(task, cfg, dist_info, device, ckpt).fit()


def evaluate_translator(checkpoint: str, data: str, src: str, tgt: str, split: str = "test_2016_flickr",
                        beam_size: int = 5, length_penalty: float = 1.0, device: str = "auto",
                        output: Optional[str] = None) -> Dict:
    """Translate a split and score it with sacreBLEU (BLEU and chrF, signatures included)."""
    t0 = time.time()
    bundle = TranslatorBundle.from_checkpoint(checkpoint, device)
    sources, refs = read_parallel(find_split(data, split, src), find_split(data, split, tgt))
    hyps = [r["text"] for r in bundle.translate(sources, beam_size=beam_size, length_penalty=length_penalty)]
    if output:
        atomic_write_text(output, "\n".join(hyps) + "\n")
    return {"checkpoint": checkpoint, "direction": f"{src}->{tgt}", "split": split, "sentences": len(sources),
            "decoder": bundle.model.cfg.decoder, "beam_size": beam_size, "length_penalty": length_penalty,
            **corpus_scores(hyps, refs), "wall_s": round(time.time() - t0, 1)}
