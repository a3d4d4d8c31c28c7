"""Training a translator through the engine; the checkpoint conventions are the captioner's.

Checkpoint: ``{"format": "showattend-translator", "format_version", "config", "train_config",
"src_tokenizer": bytes, "tgt_tokenizer": bytes, "model": state_dict, ...}``, written atomically and loaded
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Dict

import torch

from ..checkpoint import load_checkpoint, load_weights
from ..engine import (SettingsError, Trainer, check_out_dir, check_resume_settings, differing_options,
                      resolve_precision, setup_distributed)
from .config import TranslationTrainConfig, TranslatorConfig
from .data import encode_pairs, find_split, read_parallel
from .network import Seq2Seq
from .task import TranslationTask
from .tokenizer import SubwordTokenizer
from .translator import CHECKPOINT_KIND, REQUIRED, Translator, checkpoint_parts

log = logging.getLogger(__name__)

__all__ = ["train"]


def train(model_cfg: TranslatorConfig, cfg: TranslationTrainConfig, resume: bool = False,
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
