"""Training, evaluating and using a translator; the checkpoint conventions are the captioner's.

Checkpoint: ``{"format": "showattend-translator", "format_version", "config", "train_config",
"src_tokenizer": bytes, "tgt_tokenizer": bytes, "model": state_dict, ...}``, written atomically and loaded
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from ..runs import append_metrics, atomic_write_text, resolve_device
from ..search import Hypothesis
from .data import bucket_batches, encode_pairs, find_split, pad_batch, read_parallel
from .model import Translator, TranslatorConfig
from .tokenizer import PAD_ID, SubwordTokenizer

__all__ = ["TranslationTrainConfig", "TranslatorBundle", "train_translator", "evaluate_translator", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "showattend-translator"


@dataclass
class TranslationTrainConfig:
    """Training settings of ``showattend translate train`` (each is a ``--field`` option).

    Attributes:
        data: folder with ``{train,val,test_2016_flickr}.{lang}[.gz]`` files.
        src: source language code, the file suffix (``train.de``: ``de``).
        tgt: target language code.
        train_split: split the model and the subword vocabularies are trained on.
        val_split: split whose BLEU selects ``best.pt`` and drives early stopping.
        out_dir: run folder (checkpoints, metrics).
        vocab_size: sentencepiece vocabulary size per language.
        max_len: subword tokens kept per training sentence.
        epochs: maximum epochs.
        batch_size: sentence pairs per batch.
        lr: Adam learning rate.
        lr_decay: learning rate factor after an epoch without a new best validation BLEU.
        grad_clip: gradient norm clip.
        label_smoothing: label smoothing of the cross-entropy.
        patience: epochs without a new best validation BLEU before stopping.
        max_minutes: wall-time budget in minutes (0: none), counted over all epochs including those before a
            ``--resume`` and the part of an epoch lost to an interruption; no epoch starts when the time spent
            plus the last epoch's time would exceed it.
        val_beam_size: beam size of the validation decoding.
        length_penalty: p of score / length^p when decoding.
        seed: random seed.
        device: "auto", "cpu" or "cuda".
        progress: tqdm progress bars.
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
    batch_size: int = 64
    lr: float = 1e-3
    lr_decay: float = 0.5
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    patience: int = 3
    max_minutes: float = 0.0
    val_beam_size: int = 1
    length_penalty: float = 1.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True


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
        ckpt = load_checkpoint(path, CHECKPOINT_KIND)
        cfg = TranslatorConfig.from_dict(ckpt["config"])
        model = Translator(cfg)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match its config: {str(err)[:300]}") from None
        return cls(model, SubwordTokenizer.from_bytes(ckpt["src_tokenizer"]),
                   SubwordTokenizer.from_bytes(ckpt["tgt_tokenizer"]), resolve_device(device))

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


class _Heartbeat:
    """``out_dir/running.json`` while an epoch runs: when it started and when it was last seen alive (rewritten
    atomically at most once a minute), so that a ``--resume`` can count the time an interruption threw away."""

    FILE = "running.json"

    def __init__(self, out_dir: str, epoch: int, lost_s: float, every_s: float = 60.0):
        self.path, self.every_s = os.path.join(out_dir, self.FILE), every_s
        self.state = {"epoch": epoch, "started": time.time(), "last_seen": 0.0, "lost_s": lost_s}
        self()

    def __call__(self) -> None:
        now = time.time()
        if now - self.state["last_seen"] >= self.every_s:
            self.state["last_seen"] = now
            atomic_write_text(self.path, json.dumps(self.state))

    def done(self) -> None:
        """The epoch's checkpoint is written: nothing is lost any more."""
        if os.path.exists(self.path):
            os.remove(self.path)


def _lost_seconds(out_dir: str, ckpt: Optional[Dict], start: int) -> float:
    """Seconds of interrupted epochs before this (re)start: the checkpoint's count, or, when ``running.json``
    shows that epoch ``start`` was under way and died, that file's count plus the part of the epoch it saw."""
    lost = float(ckpt.get("lost_s", 0.0)) if ckpt is not None else 0.0
    path = os.path.join(out_dir, _Heartbeat.FILE)
    if ckpt is None or not os.path.exists(path):
        return lost
    try:
        with open(path, encoding="utf-8") as f:
            beat = json.load(f)
        if int(beat["epoch"]) == start:
            lost = max(lost, float(beat["lost_s"]) + float(beat["last_seen"]) - float(beat["started"]))
    except (ValueError, KeyError, TypeError) as e:
        print(f"ignoring unreadable {path} ({e})", flush=True)
    return lost


def train_translator(model_cfg: TranslatorConfig, cfg: TranslationTrainConfig, resume: bool = False) -> str:
    """Train a translator with teacher forcing; early stopping on validation sacreBLEU. Returns ``best.pt``.

    Raises:
        FileNotFoundError: missing data files; CheckpointError: ``resume`` without a usable ``last.pt``.
    """
    from tqdm import tqdm

    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    tr_src, tr_tgt = read_parallel(find_split(cfg.data, cfg.train_split, cfg.src),
                                   find_split(cfg.data, cfg.train_split, cfg.tgt))
    va_src, va_tgt = read_parallel(find_split(cfg.data, cfg.val_split, cfg.src),
                                   find_split(cfg.data, cfg.val_split, cfg.tgt))
    last_path, best_path = os.path.join(cfg.out_dir, "last.pt"), os.path.join(cfg.out_dir, "best.pt")
    ckpt = load_checkpoint(last_path, CHECKPOINT_KIND) if resume else None
    if ckpt is not None:
        model_cfg = TranslatorConfig.from_dict(ckpt["config"])
        src_tok = SubwordTokenizer.from_bytes(ckpt["src_tokenizer"])
        tgt_tok = SubwordTokenizer.from_bytes(ckpt["tgt_tokenizer"])
    else:  # subword models from the training split only
        src_tok = SubwordTokenizer.train(tr_src, cfg.vocab_size)
        tgt_tok = SubwordTokenizer.train(tr_tgt, cfg.vocab_size)
        model_cfg.src_vocab_size, model_cfg.tgt_vocab_size = len(src_tok), len(tgt_tok)
    model = Translator(model_cfg).to(device)
    bundle = TranslatorBundle(model, src_tok, tgt_tok, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.lr_decay, patience=0)
    start, best, bad, history = 1, -1.0, 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start, best, bad, history = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["bad_epochs"], ckpt["history"]
    lost_s = _lost_seconds(cfg.out_dir, ckpt, start)
    if lost_s > 0:
        print(f"{lost_s / 60:.1f} min of interrupted epochs count toward the time spent", flush=True)
    pairs = encode_pairs(tr_src, tr_tgt, src_tok, tgt_tok, cfg.max_len)
    print(f"{cfg.src}->{cfg.tgt} {model_cfg.decoder}: {len(pairs)} training pairs, subword vocabularies "
          f"{len(src_tok)}/{len(tgt_tok)}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"device {device}", flush=True)
    rng = random.Random(cfg.seed)
    for _ in range(start - 1):  # same batch order after a resume
        list(bucket_batches([len(s) for s, _ in pairs], cfg.batch_size, rng))
    for epoch in range(start, cfg.epochs + 1):
        if bad >= cfg.patience:
            break
        if cfg.max_minutes > 0 and history:
            spent = lost_s + sum(r["train_s"] + r["val_s"] for r in history)
            if spent + history[-1]["train_s"] + history[-1]["val_s"] > 60 * cfg.max_minutes:
                print(f"stopping before epoch {epoch}: {spent / 60:.1f} min spent, another epoch would pass the "
                      f"{cfg.max_minutes:g}-minute budget", flush=True)
                break
        model.train()
        t0, tot_loss, tot_words = time.time(), 0.0, 0
        batches = list(bucket_batches([len(s) for s, _ in pairs], cfg.batch_size, rng))
        beat = _Heartbeat(cfg.out_dir, epoch, lost_s)
        for idx in tqdm(batches, desc=f"epoch {epoch}", disable=not cfg.progress, leave=False):
            beat()
            src, src_len = pad_batch([pairs[i][0] for i in idx])
            tgt_in, _ = pad_batch([pairs[i][1] for i in idx], bos=True)
            tgt_out, _ = pad_batch([pairs[i][1] for i in idx], eos=True)
            logits, _ = model(src.to(device), src_len.to(device), tgt_in.to(device))
            loss = F.cross_entropy(logits.transpose(1, 2), tgt_out.to(device), ignore_index=PAD_ID,
                                   label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            words = int((tgt_out != PAD_ID).sum())
            tot_loss, tot_words = tot_loss + float(loss.detach()) * words, tot_words + words
        train_s = time.time() - t0
        beat()
        t1 = time.time()
        hyps = [r["text"] for r in bundle.translate(va_src, beam_size=cfg.val_beam_size,
                                                    length_penalty=cfg.length_penalty)]
        val = corpus_scores(hyps, va_tgt)["BLEU"]
        improved = val > best
        best, bad = (val, 0) if improved else (best, bad + 1)
        scheduler.step(val)
        row = {"epoch": epoch, "train_loss": round(tot_loss / max(tot_words, 1), 4), "val_bleu": val,
               "lr": optimizer.param_groups[0]["lr"], "train_s": round(train_s, 1), "val_s": round(time.time() - t1, 1)}
        history.append(row)
        append_metrics(cfg.out_dir, row)
        print(json.dumps(row) + ("  (best)" if improved else ""), flush=True)
        meta = {"train_config": asdict(cfg), "epoch": epoch, "best_score": best, "bad_epochs": bad,
                "history": history, "lost_s": lost_s}
        if improved:
            save_checkpoint(best_path, {**bundle.state(), **meta})
        save_checkpoint(last_path, {**bundle.state(), **meta, "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict()})
        beat.done()
    return best_path


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
