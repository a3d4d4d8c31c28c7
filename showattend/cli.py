"""The ``showattend`` command line: train, cache, caption, evaluate, translate (train, evaluate).

Run ``showattend COMMAND --help`` for each command's options.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional

from .commands import (cmd_caption, cmd_cache, cmd_evaluate, cmd_export, cmd_train, cmd_translate,
                       cmd_translate_evaluate, cmd_translate_train)
from .options import add_dataclass_options, add_run_options

__all__ = ["main", "DEFAULT_CHECKPOINT"]

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "showattend_flickr8k_lite0.pt")


def _setup_threads(n: int) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    from .captioning.model import ModelConfig
    from .captioning.train import TrainConfig

    p = argparse.ArgumentParser(
        prog="showattend",
        description="Show, Attend and Tell (Xu et al. 2015): train captioners with visual attention, caption "
                    "images, draw attention maps, evaluate with the coco-caption metrics; translate text with "
                    "Bahdanau or Luong attention on the same attention core.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"showattend {__version__}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a captioner (feature cache, teacher forcing, early stopping on "
                                     "validation BLEU-4)",
                       description="Train a captioner. Builds the encoder's feature cache first if needed. Every "
                                   "model and training setting below overrides the default.")
    add_run_options(t)
    g = t.add_argument_group("model")
    add_dataclass_options(g, ModelConfig)
    g = t.add_argument_group("training")
    add_dataclass_options(g, TrainConfig)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cache", help="compute the frozen encoder's features of a dataset once, to disk",
                       description="Encode every image of a dataset with the frozen CNN and store the annotation "
                                   "vectors (fp16, memory-mapped). Resumable; `train` does this itself when needed.")
    for name in ("encoder", "encoder_weights", "image_size"):
        f = {x.name: x for x in dataclasses.fields(ModelConfig)}[name]
        c.add_argument("--" + name.replace("_", "-"), dest=name, type=int if f.type in (int, "int") else str,
                       default=None)
    for name in ("data", "images", "karpathy_split", "cache_dir", "device"):
        c.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    c.set_defaults(func=cmd_cache)

    x = sub.add_parser("export", help="write an inference-only checkpoint, captioner or translator (optionally fp16)",
                       description="Drop the optimizer and scheduler state from a training checkpoint and, with "
                                   "--half, store the weights as float16 (they load back as float32).")
    x.add_argument("checkpoint", help="training checkpoint (best.pt or last.pt)")
    x.add_argument("output", help="output file")
    x.add_argument("--half", action="store_true", help="store float16 weights")
    x.set_defaults(func=cmd_export)

    def decode_options(q):
        q.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="model checkpoint (default: the bundled "
                                                                        "Flickr8k model in assets/)")
        q.add_argument("--beam-size", type=int, default=3, help="beam size; 1 = greedy (default: 3)")
        q.add_argument("--max-len", type=int, default=20, help="maximum caption length in tokens, <end> included: "
                                                               "the last one is always <end> (default: 20)")
        q.add_argument("--length-penalty", type=float, default=0.0,
                       help="rank hypotheses by log-prob / length^p (default: 0, plain log-prob)")
        q.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
        q.add_argument("--attention", choices=["soft", "hard"], default="soft",
                       help="soft: expected context Σ α_i a_i at every step (deterministic; default, also for "
                            "hard-attention models); hard: sample the attended location at every step, run the "
                            "search --samples times and keep the best-scoring caption (log-prob / length^p)")
        q.add_argument("--samples", type=int, default=5, help="sampled searches with --attention hard (default: 5)")

    k = sub.add_parser("caption", help="caption images, optionally with attention overlays",
                       description="Print one caption per image (path<TAB>caption when several). With "
                                   "--attention-dir, also write IMAGE_attention.png: the image and, per word, its "
                                   "attention map. Unreadable images are reported and the others still captioned; "
                                   "the exit code is 1 if any image failed.")
    k.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    decode_options(k)
    k.add_argument("--attention-dir", default=None, help="write one attention overlay PNG per image here")
    k.add_argument("--show-beta", action="store_true", help="show the gating scalar β in the overlay titles")
    k.set_defaults(func=cmd_caption)

    e = sub.add_parser("evaluate", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr on a split (coco-caption scorers)",
                       description="Caption a split with beam search and score it with pycocoevalcap (PTB tokenizer, "
                                   "scores 0-100). SPICE is not computed (it needs a download).")
    decode_options(e)
    e.add_argument("--data", default=TrainConfig.data, help=f"Karpathy JSON or COCO captions file (default: "
                                                            f"{TrainConfig.data})")
    e.add_argument("--images", default=TrainConfig.images, help="image folder")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default: test)")
    e.add_argument("--cache-dir", default=TrainConfig.cache_dir, help="feature cache folder (frozen encoders)")
    e.add_argument("--limit", type=int, default=0, help="only the first N images of the split (0: all)")
    e.add_argument("--output", default=None, help="also write the JSON report here")
    e.add_argument("--captions-out", default=None, help="write the generated captions as JSON here")
    e.set_defaults(func=cmd_evaluate)

    from .translation.model import TranslatorConfig
    from .translation.train import TranslationTrainConfig

    default_tr = os.path.join("runs", "translator", "best.pt")

    def translate_decode_options(q):
        q.add_argument("--checkpoint", default=default_tr, help=f"translator checkpoint (default: {default_tr})")
        q.add_argument("--beam-size", type=int, default=5, help="beam size; 1 = greedy (default: 5)")
        q.add_argument("--length-penalty", type=float, default=1.0, help="score / length^p (default: 1.0)")
        q.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")

    tr = sub.add_parser("translate", help="translate text with an attention seq2seq model "
                                          "(also: translate train, translate evaluate)",
                        description="Translate sentences given as arguments, or standard input one sentence per "
                                    "line, to standard output. `showattend translate train --help` and "
                                    "`showattend translate evaluate --help` describe training and evaluation.")
    tr.add_argument("text", nargs="*", help="sentences (default: read standard input)")
    translate_decode_options(tr)
    tr.add_argument("--max-len", type=int, default=100, help="maximum output tokens, </s> included: at most this "
                                                             "minus 1 subwords (default: 100)")
    tr.add_argument("--alignment", default=None, help="write the first sentence's attention heatmap to this PNG")
    tr.set_defaults(func=cmd_translate)

    tt = sub.add_parser("translate-train", help="(= translate train) train a translator",
                        prog="showattend translate train",
                        description="Train a Bahdanau or Luong attention translator on parallel text (subword "
                                    "models trained on the training split, early stopping on validation sacreBLEU).")
    add_run_options(tt)
    add_dataclass_options(tt.add_argument_group("model"), TranslatorConfig, skip=("src_vocab_size", "tgt_vocab_size"))
    add_dataclass_options(tt.add_argument_group("training"), TranslationTrainConfig)
    tt.set_defaults(func=cmd_translate_train)

    te = sub.add_parser("translate-evaluate", help="(= translate evaluate) sacreBLEU and chrF on a split",
                        prog="showattend translate evaluate",
                        description="Translate a split and score it with sacreBLEU (BLEU and chrF on detokenized "
                                    "text; the signatures are printed).")
    translate_decode_options(te)
    te.add_argument("--data", default=TranslationTrainConfig.data,
                    help="folder of {split}.{lang}[.gz] files (default: %(default)s)")
    te.add_argument("--src", default=TranslationTrainConfig.src,
                    help="source language code, the file suffix (default: %(default)s)")
    te.add_argument("--tgt", default=TranslationTrainConfig.tgt,
                    help="target language code: the references (default: %(default)s)")
    te.add_argument("--split", default="test_2016_flickr", help="split to translate (default: %(default)s)")
    te.add_argument("--output", default=None, help="write the translations here, one per line")
    te.set_defaults(func=cmd_translate_evaluate)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (0 success, 1 failed input, 2 usage error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    i = next((k for k, a in enumerate(argv) if a in commands), None)  # the command word (after --threads N)
    if i is not None and argv[i] == "translate" and len(argv) > i + 1 and argv[i + 1] in ("train", "evaluate"):
        argv[i:i + 2] = [f"translate-{argv[i + 1]}"]
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must not be negative, got {args.threads}")
    _setup_threads(args.threads)
    from .captioning.images import ImageError
    from .checkpoint import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, ImageError, FileNotFoundError, ValueError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if "Original Traceback" in str(msg):  # an error raised in a DataLoader worker: its own last line
            msg = str(msg).strip().splitlines()[-1]
        print(f"showattend {args.command.replace('-', ' ')}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
