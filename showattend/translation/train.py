"""Training, evaluating and using a translator; the checkpoint conventions are the captioner's.

Checkpoint: ``{"format": "showattend-translator", "format_version", "config", "train_config",
"src_tokenizer": bytes, "tgt_tokenizer": bytes, "model": state_dict, ...}``, written atomically and loaded
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, load_weights
from ..runs import atomic_write_text
from ..engine import (EngineConfig, SettingsError, StepContext, Task, Trainer, check_out_dir, check_resume_settings,
                      differing_options, resolve_precision, setup_distributed)
from ..engine.batches import bucket_batches
from .data import encode_pairs, find_split, pad_batch, read_parallel
from .model import Seq2Seq, TranslatorConfig
from .translator import CHECKPOINT_KIND, REQUIRED, Translator, checkpoint_parts
from .tokenizer import PAD_ID, SubwordTokenizer

log = logging.getLogger(__name__)

__all__ = ["TranslationTrainConfig", "TranslationBatch", "TranslationTask", "train_translator",
           "evaluate_translator", "CHECKPOINT_KIND"]



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
        max_len: training pairs with a side longer than this many subwords are dropped (and counted in the log).
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


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], lang: str = "en",
                  forms: Sequence[str] = ("BLEU", "BLEU_lc", "BLEU_tok_lc", "chrF")) -> Dict:
    """sacreBLEU scores of detokenised text, each with its signature, in the three forms Multi30k results are
    reported in, so that like can be compared with like:

    * ``BLEU``: cased, sacreBLEU's own 13a tokenisation (the WMT convention; what validation selects on);
    * ``BLEU_lc``: the same, lowercased (sacreBLEU ``lowercase=True``);
    * ``BLEU_tok_lc``: lowercased text tokenised with the Moses tokenizer (sacremoses, ``lang``), then scored
      without further tokenisation: the multi-bleu.perl protocol of the Multi30k papers (WMT16/17 multimodal
      task) and of most tutorials;
    * ``chrF``: cased character n-gram F-score.

    Args:
        hypotheses, references: one detokenised sentence each, in order. lang: the target language's code.
        forms: which of the scores to compute (validation needs ``BLEU`` alone).
    """
    import sacrebleu
    from sacremoses import MosesTokenizer

    hyps, refs = list(hypotheses), list(references)

    def tokenised(lines):
        moses = MosesTokenizer(lang=lang)
        return [moses.tokenize(x.lower(), escape=False, return_str=True) for x in lines]

    scorers = {"BLEU": lambda: (sacrebleu.metrics.BLEU(), hyps, refs),
               "BLEU_lc": lambda: (sacrebleu.metrics.BLEU(lowercase=True), hyps, refs),
               "BLEU_tok_lc": lambda: (sacrebleu.metrics.BLEU(tokenize="none", lowercase=True, force=True),
                                       tokenised(hyps), tokenised(refs)),
               "chrF": lambda: (sacrebleu.metrics.CHRF(), hyps, refs)}
    out = {}
    for name in forms:
        metric, h, r = scorers[name]()
        out[name] = round(metric.corpus_score(h, [r]).score, 2)
        out[f"{name}_signature"] = str(metric.get_signature()) + ("|pre:moses-tok" if name == "BLEU_tok_lc" else "")
    return out


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
        bundle: the :class:`Translator` being trained; cfg: training settings;
        pairs: training subword id pairs; val_src, val_tgt: validation sentences.
    """

    kind, loss_key, score_key, item_name = CHECKPOINT_KIND, "train_loss", "val_bleu", "sentences"
    fixed_settings = ("vocab_size", "src", "tgt")  # the subword models and the language pair
    data_settings = ("data", "train_split", "max_len")

    def __init__(self, bundle: Translator, cfg: TranslationTrainConfig, pairs, val_src: List[str],
                 val_tgt: List[str]):
        self.bundle, self.cfg, self.val_src, self.val_tgt = bundle, cfg, val_src, val_tgt
        self.model, self.dataset = bundle.model, pairs
        self._lengths = [len(s) for s, _ in pairs]

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        rng = random.Random(self.cfg.seed * 1000 + epoch)
        order = list(range(len(self._lengths)))
        rng.shuffle(order)
        return bucket_batches(order, self._lengths, self.cfg.batch_size, rng.shuffle)

    def words(self, index: int) -> int:
        return len(self.dataset[index][1]) + 1  # the subwords and </s>

    def collate(self, items, rows) -> TranslationBatch:
        items = sorted(items, key=lambda p: -len(p[0]))  # longest source first: the packed encoder needs no sort
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
        return corpus_scores(hyps, self.val_tgt, self.cfg.tgt, forms=("BLEU",))["BLEU"]

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
    last = os.path.join(cfg.out_dir, "last.pt")
    ckpt = load_checkpoint(last, CHECKPOINT_KIND, required=REQUIRED) if resume else None
    if ckpt is not None:  # settings that cannot change are refused before the data is read
        check_resume_settings(ckpt, cfg, TranslationTask)
    tr_src, tr_tgt = read_parallel(find_split(cfg.data, cfg.train_split, cfg.src),
                                   find_split(cfg.data, cfg.train_split, cfg.tgt))
    va_src, va_tgt = read_parallel(find_split(cfg.data, cfg.val_split, cfg.src),
                                   find_split(cfg.data, cfg.val_split, cfg.tgt))
    if ckpt is not None:
        saved_cfg, src_tok, tgt_tok = checkpoint_parts(ckpt, last)
        # the vocabulary sizes are set from the subword models, not options
        differ = differing_options(model_cfg, saved_cfg, skip=("src_vocab_size", "tgt_vocab_size"))
        if differ:
            raise SettingsError(f"--resume continues the model of {last}; these model options differ from it: "
                                f"{'; '.join(differ)}. Start a new run (another --out-dir) to change them")
        model_cfg = saved_cfg
    else:  # subword models from the training split only (each process trains the same ones)
        src_tok = SubwordTokenizer.train(tr_src, cfg.vocab_size)
        tgt_tok = SubwordTokenizer.train(tr_tgt, cfg.vocab_size)
        model_cfg.src_vocab_size, model_cfg.tgt_vocab_size = len(src_tok), len(tgt_tok)
        if dist_info.main and min(len(src_tok), len(tgt_tok)) < cfg.vocab_size:
            log.warning(f"--vocab-size {cfg.vocab_size}: the training text fills only {len(src_tok)} {cfg.src} and "
                        f"{len(tgt_tok)} {cfg.tgt} subwords; training with those")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(model_cfg)
    if ckpt is not None:
        load_weights(model, ckpt["model"], last)
    bundle = Translator(model, src_tok, tgt_tok, device)
    dropped: Dict[str, int] = {}
    pairs = encode_pairs(tr_src, tr_tgt, src_tok, tgt_tok, cfg.max_len, dropped)
    if dist_info.main and dropped["empty"]:
        log.warning(f"dropped {dropped['empty']} training pairs with an empty side (of {len(tr_src)} in "
                    f"{cfg.train_split}.{cfg.src}/{cfg.tgt})")
    if dist_info.main and dropped["too_long"]:
        log.warning(f"dropped {dropped['too_long']} training pairs with a side longer than --max-len "
                    f"{cfg.max_len} subwords (of {len(tr_src)})")
    if dist_info.main:
        log.info(f"{cfg.src}->{cfg.tgt} {model_cfg.decoder}: {len(pairs)} training pairs, subword vocabularies "
                 f"{len(src_tok)}/{len(tgt_tok)}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
                 f"device {device}{f' x {dist_info.world} processes' if dist_info.world > 1 else ''}; precision "
                 f"{'bf16' if resolve_precision(cfg.precision, device) else 'fp32'}")
    task = TranslationTask(bundle, cfg, pairs, va_src, va_tgt)
    return Trainer(task, cfg, dist_info, device, ckpt).fit()


def evaluate_translator(checkpoint: str, data: str, src: str, tgt: str, split: str = "test_2016_flickr",
                        beam_size: int = 5, length_penalty: float = 1.0, device: str = "auto",
                        output: Optional[str] = None) -> Dict:
    """Translate a split and score it with sacreBLEU (BLEU and chrF, signatures included)."""
    t0 = time.time()
    bundle = Translator.from_checkpoint(checkpoint, device)
    sources, refs = read_parallel(find_split(data, split, src), find_split(data, split, tgt))
    hyps = [r["text"] for r in bundle.translate(sources, beam_size=beam_size, length_penalty=length_penalty)]
    if output:
        atomic_write_text(output, "\n".join(hyps) + "\n")
    return {"checkpoint": checkpoint, "direction": f"{src}->{tgt}", "split": split, "sentences": len(sources),
            "decoder": bundle.model.cfg.decoder, "beam_size": beam_size, "length_penalty": length_penalty,
            **corpus_scores(hyps, refs, tgt), "wall_s": round(time.time() - t0, 1)}
