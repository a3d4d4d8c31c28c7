"""What each ``showattend`` command does, given its parsed arguments (the parser is :mod:`showattend.cli`'s).
Each returns the process exit code."""
from __future__ import annotations

import json
import os
import sys
import time

from .options import base_settings, build_config

__all__ = ["cmd_train", "cmd_cache", "cmd_caption", "cmd_evaluate", "cmd_export", "cmd_translate_train",
           "cmd_translate_evaluate", "cmd_translate"]


def cmd_train(args) -> int:
    from .captioning.model import ModelConfig
    from .captioning.train import TrainConfig, train
    from .engine import main_process

    args.config_values = base_settings(args, (ModelConfig, TrainConfig), TrainConfig.out_dir)
    model_cfg = build_config(ModelConfig, args)
    cfg = build_config(TrainConfig, args)
    t0 = time.time()
    best = train(model_cfg, cfg, resume=args.resume, overwrite=args.overwrite)
    if main_process():  # torchrun: one line, from rank 0
        print(f"best checkpoint: {best} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def cmd_cache(args) -> int:
    from .captioning.model import ModelConfig
    from .captioning.train import TrainConfig, load_records, prepare_cache
    from .engine import setup_distributed

    model_cfg = build_config(ModelConfig, args)
    cfg = build_config(TrainConfig, args)
    t0 = time.time()
    dist_info, device = setup_distributed(cfg.device)  # under torchrun each process encodes its share
    store = prepare_cache(cfg, model_cfg, load_records(cfg), device, dist_info)
    print(f"feature cache: {store.folder} ({len(store.row)} images, {time.time() - t0:.0f} s)")
    return 0


def cmd_caption(args) -> int:
    from .captioning.images import open_rgb
    from .captioning.model import Captioner
    from .captioning.overlay import plot_attention

    cap = Captioner.from_checkpoint(args.checkpoint, device=args.device)
    results, errors = cap.caption_files(args.images, beam_size=args.beam_size, max_len=args.max_len,
                                        length_penalty=args.length_penalty, attention=args.attention,
                                        samples=args.samples)
    for path in args.images:
        if path not in results:
            continue
        r = results[path]
        print(f"{path}\t{r.text}" if len(args.images) > 1 else r.text, flush=True)
        if args.attention_dir:
            stem = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(args.attention_dir, f"{stem}_attention.png")
            plot_attention(open_rgb(path), r.words, r.alphas, r.grid, out, betas=r.betas if args.show_beta else None,
                           mark_location=cap.config.attention == "hard")
            print(f"  attention overlay: {out}", file=sys.stderr)
    for path, msg in errors.items():
        print(f"error: {msg}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {len(args.images)} images failed", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    from .captioning.evaluate import evaluate

    report = evaluate(args.checkpoint, data=args.data, images=args.images, split=args.split,
                      beam_size=args.beam_size, max_len=args.max_len, length_penalty=args.length_penalty,
                      cache_dir=args.cache_dir, device=args.device, limit=args.limit,
                      captions_out=args.captions_out, attention=args.attention, samples=args.samples)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        from .runs import atomic_write_text

        atomic_write_text(args.output, text + "\n")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.output, half=args.half)
    size = os.path.getsize(args.output) / 2 ** 20
    print(f"wrote {args.output} ({out['format']}, {size:.1f} MiB{', fp16 weights' if args.half else ''})")
    return 0


def cmd_translate_train(args) -> int:
    from .translation.model import TranslatorConfig
    from .engine import main_process
    from .translation.train import TranslationTrainConfig, train_translator

    skip = ("src_vocab_size", "tgt_vocab_size")
    args.config_values = base_settings(args, (TranslatorConfig, TranslationTrainConfig),
                                        TranslationTrainConfig.out_dir, ignore=skip)
    t0 = time.time()
    best = train_translator(build_config(TranslatorConfig, args, skip), build_config(TranslationTrainConfig, args),
                            resume=args.resume, overwrite=args.overwrite)
    if main_process():
        print(f"best checkpoint: {best} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def cmd_translate_evaluate(args) -> int:
    from .translation.train import evaluate_translator

    report = evaluate_translator(args.checkpoint, args.data, args.src, args.tgt, args.split, args.beam_size,
                                 args.length_penalty, args.device, args.output)
    print(json.dumps(report, indent=2))
    return 0


def cmd_translate(args) -> int:
    from .translation.plot import plot_alignment
    from .translation.train import TranslatorBundle

    bundle = TranslatorBundle.from_checkpoint(args.checkpoint, args.device)
    sentences = args.text if args.text else [line.rstrip("\n") for line in sys.stdin]
    results = bundle.translate(sentences, beam_size=args.beam_size, max_len=args.max_len,
                               length_penalty=args.length_penalty)
    for r in results:
        print(r["text"], flush=True)
    if args.alignment:
        r = results[0]
        if not r["source_pieces"]:
            print("error: no alignment for an empty sentence", file=sys.stderr)
            return 1
        plot_alignment(r["source_pieces"], r["target_pieces"], r["alpha"], args.alignment, title=r["text"])
        print(f"alignment of sentence 1: {args.alignment}", file=sys.stderr)
    return 0
