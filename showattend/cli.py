"""The ``showattend`` command line: train, cache, caption, evaluate, translate (train, evaluate).

Run ``showattend COMMAND --help`` for each command's options.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import typing
from typing import List, Optional

__all__ = ["main", "DEFAULT_CHECKPOINT"]

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "showattend_flickr8k_lite0.pt")


def _field_docs(cls) -> dict:
    """The entries of the ``Attributes:`` (or ``Args:``) sections of a dataclass's docstring and its bases':
    {field name: text} (a subclass's entry wins).

    An entry is ``name: text`` or ``name_a, name_b: text`` (one text for several fields); lines indented deeper
    than the entry continue its text. Sphinx markup is reduced to plain text for ``--help``.
    """
    docs = {}
    for klass in reversed(cls.__mro__):
        docs.update(_docstring_entries(klass.__doc__ if klass.__dict__.get("__doc__") else ""))
    return docs


def _docstring_entries(doc: str) -> dict:
    docs, names, section, indent = {}, [], None, 0
    for ln in (doc or "").splitlines():
        depth, text = len(ln) - len(ln.lstrip()), ln.strip()
        head, _, rest = text.partition(":")
        if text in ("Attributes:", "Args:"):
            section, names = depth, []
        elif section is None or not text or depth <= section:  # outside the section, or a blank line
            section, names = (None if text else section), []
        elif names and depth > indent:
            for n in names:
                docs[n] += " " + text
        elif rest.strip() and all(n.strip().isidentifier() for n in head.split(",")):
            names, indent = [n.strip() for n in head.split(",")], depth
            for n in names:
                docs[n] = rest.strip()
    return {n: re.sub(r":\w+:`~?(?:[\w.]*\.)?(\w+)`", r"\1", t).replace("``", "") for n, t in docs.items()}


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--field-name`` option per dataclass field, defaulting to None (= keep the dataclass default)."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_line = docs.get(f.name, "")
        default = f.default
        if typing.get_origin(hints[f.name]) is typing.Literal:  # choices from the field's Literal type
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(hints[f.name]), default=None,
                                help=f"{help_line} (default: {default})")
        elif f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_line} (default: {default})")
        else:
            typ = {"int": int, "float": float}.get(str(f.type), None) or \
                (type(default) if default is not None and not isinstance(default, str) else str)
            parser.add_argument(flag, dest=f.name, type=typ, default=None, help=f"{help_line} (default: {default})")


def _build(cls, args, skip=()):
    """The dataclass from the options given on the command line over the ``--config`` file's settings over its
    defaults."""
    base = getattr(args, "config_values", None) or {}
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
        elif f.name in base:
            values[f.name] = _coerce(base[f.name], hints[f.name], f.name, args.config or "last.pt's settings")
    return cls(**values)


def _coerce(value, hint, name: str, path: str):
    """A config-file value as the field's type (YAML reads ``1e-3`` as a string)."""
    target = {int: int, float: float, bool: bool, str: str}.get(hint)
    if target is None or value is None or isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    try:
        if target is bool or target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[target]
        raise ValueError(f"{path}: {name} must be {kind}, got {value!r}") from None


def _base_settings(args, classes, default_out_dir: str, ignore=()) -> dict:
    """The settings the command line overrides: with ``--resume``, the run's own (from ``OUT_DIR/last.pt``), so
    that a resumed run goes on as it started; then those of a ``--config`` file."""
    from .checkpoint import load_checkpoint

    from_file = _read_config(args.config, classes, ignore) if args.config else {}
    values = {}
    out_dir = args.out_dir or from_file.get("out_dir") or default_out_dir
    if args.resume and os.path.isfile(os.path.join(out_dir, "last.pt")):
        ckpt = load_checkpoint(os.path.join(out_dir, "last.pt"), None)
        values.update({k: v for k, v in ckpt.get("config", {}).items() if k not in ignore})
        values.update(ckpt.get("train_config", {}))
    values.update(from_file)
    return values


def _read_config(path: str, classes, ignore=()) -> dict:
    """Settings from a YAML (or JSON) file: flat ``{setting: value}``, or a run's saved ``config.json`` with
    ``{"model": {...}, "train": {...}}``.

    Raises:
        FileNotFoundError: no such file. ValueError: not YAML, not a mapping, or unknown settings (named).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"--config {path}: a folder, not a YAML or JSON file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a YAML or JSON file ({str(err).splitlines()[0]})") from None
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of setting: value")
    flat = {}
    for k, v in data.items():
        if k in ("model", "train") and isinstance(v, dict):
            flat.update({str(a).replace("-", "_"): b for a, b in v.items()})
        elif k not in ("world", "resumed_at_step", "resolved"):  # what config.json records about the run itself
            flat[str(k).replace("-", "_")] = v  # batch-size: as the option is spelt works too
    known = {f.name for c in classes for f in dataclasses.fields(c)}
    unknown = sorted(set(flat) - known - set(ignore))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    return {k: v for k, v in flat.items() if k not in ignore}


def _setup_threads(n: int) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def cmd_train(args) -> int:
    from .captioning.model import ModelConfig
    from .captioning.train import TrainConfig, train

    args.config_values = _base_settings(args, (ModelConfig, TrainConfig), TrainConfig.out_dir)
    model_cfg = _build(ModelConfig, args)
    cfg = _build(TrainConfig, args)
    t0 = time.time()
    best = train(model_cfg, cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from rank 0
        print(f"best checkpoint: {best} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def cmd_cache(args) -> int:
    from .captioning.model import ModelConfig
    from .captioning.train import TrainConfig, load_records, prepare_cache
    from .training import setup_distributed

    model_cfg = _build(ModelConfig, args)
    cfg = _build(TrainConfig, args)
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
    from .translation.train import TranslationTrainConfig, train_translator

    skip = ("src_vocab_size", "tgt_vocab_size")
    args.config_values = _base_settings(args, (TranslatorConfig, TranslationTrainConfig),
                                        TranslationTrainConfig.out_dir, ignore=skip)
    t0 = time.time()
    best = train_translator(_build(TranslatorConfig, args, skip), _build(TranslationTrainConfig, args),
                            resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
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


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The options of both training commands that are about the run, not its settings."""
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT_DIR/last.pt exactly where it was saved, with the run's own settings "
                             "(options given again override them)")
    parser.add_argument("--overwrite", action="store_true", help="a new run replaces the run files in OUT_DIR")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON file of settings (option names with underscores, e.g. batch_size: 32), or "
                             "a run's config.json; options given on the command line win")


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
    _run_options(t)
    g = t.add_argument_group("model")
    _add_dataclass_options(g, ModelConfig)
    g = t.add_argument_group("training")
    _add_dataclass_options(g, TrainConfig)
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
        q.add_argument("--max-len", type=int, default=20, help="maximum caption length in tokens, <end> included: the last one is always <end> (default: 20)")
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
    tr.add_argument("--max-len", type=int, default=100, help="maximum output tokens, </s> included: at most this minus 1 subwords (default: 100)")
    tr.add_argument("--alignment", default=None, help="write the first sentence's attention heatmap to this PNG")
    tr.set_defaults(func=cmd_translate)

    tt = sub.add_parser("translate-train", help="(= translate train) train a translator",
                        prog="showattend translate train",
                        description="Train a Bahdanau or Luong attention translator on parallel text (subword "
                                    "models trained on the training split, early stopping on validation sacreBLEU).")
    _run_options(tt)
    _add_dataclass_options(tt.add_argument_group("model"), TranslatorConfig, skip=("src_vocab_size", "tgt_vocab_size"))
    _add_dataclass_options(tt.add_argument_group("training"), TranslationTrainConfig)
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
