"""The bad-input corpus: broken and hostile inputs of every kind showattend reads, generated here (no binaries are
committed), each with the outcome the tool promises.

Every case is one ``showattend`` command line. The promise, checked by ``tests/test_bad_inputs.py``: the exit code
is the expected one (1 for a bad input, 2 for a bad option, 0 where the input is legitimately usable), stderr
says in plain words which input is wrong and what is wrong with it (the case's ``message``), there is no
traceback, and the good inputs of the same call are still processed.

    python tests/bad_inputs.py            # run the corpus, print docs/reliability.md's table (Markdown)
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

__all__ = ["Case", "Outcome", "make_corpus", "run_case", "said", "table"]


@dataclass
class Case:
    """One command line of the corpus and what it must do.

    Attributes:
        kind: "image", "checkpoint", "data" or "option" (the table's sections).
        what: the input, in plain words (the table's first column).
        argv: the arguments after ``showattend``.
        code: the expected exit code.
        message: a substring that stderr must hold (names the input and what is wrong), "" for none.
        stdin: bytes fed to standard input.
        good_outputs: lines that stdout must still hold (the call's good inputs processed).
        absent: a file that must not exist afterwards (a pickle payload's side effect).
        offline: the outcome holds only without internet access (a download would succeed otherwise).
        env: environment variables set while the case runs.
        no_cuda: the outcome holds only where torch sees no CUDA device; where it sees one, the case expects the
            command to work (exit 0, its good inputs processed) and its documented row is not compared.
    """

    kind: str
    what: str
    argv: List[str]
    code: int
    message: str = ""
    stdin: bytes = b""
    good_outputs: int = 0
    absent: Optional[str] = None
    offline: bool = False
    env: dict = field(default_factory=dict)
    no_cuda: bool = False

    def __post_init__(self):
        if self.no_cuda and _cuda_available():
            self.code, self.message, self.good_outputs = 0, "", 1


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    traceback: bool


# ----------------------------------------------------------------------------------------------------------
# File makers


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _text(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def _jpeg(path, size=(64, 48), **kw):
    from PIL import Image

    rng = np.random.default_rng(zlib.crc32(Path(path).name.encode()))  # the same pixels in any folder
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_raw(path, width, height, rows: bytes):
    """A grayscale PNG whose header says width x height and whose (complete) zlib stream holds ``rows``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    data = comp.compress(rows) + comp.flush()
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) +
                           _png_chunk(b"IEND", b""))
    return path


def _png_bomb(path, side=20000):
    """A real decompression bomb: side x side black pixels, a few hundred KB compressed."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    comp, row = zlib.compressobj(9), b"\x00" * (side + 1)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) +
                           _png_chunk(b"IEND", b""))
    return path


def _cut(src, dst, fraction):
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst


def _flip(src, dst, fraction, n=4096):
    data = bytearray(Path(src).read_bytes())
    at = int(len(data) * fraction)
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    Path(dst).write_bytes(bytes(data))
    return dst


class _Payload:
    """Unpickling this runs ``touch <path>``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _images(root: Path) -> List[Case]:
    from PIL import Image

    d = root / "images"
    d.mkdir()
    good = str(_jpeg(d / "good.jpg"))
    cases = []

    def bad(what, path, message, code=1):
        cases.append(Case("image", what, ["caption", good, str(path)], code, message, good_outputs=1))

    def usable(what, path):
        cases.append(Case("image", what, ["caption", good, str(path)], 0, good_outputs=2))

    (d / "empty.jpg").write_bytes(b"")
    bad("zero-byte file", d / "empty.jpg", "empty.jpg: empty file")
    (d / "notes.jpg").write_text("shopping list: milk, eggs\n")
    bad("text file named .jpg", d / "notes.jpg", "notes.jpg: not an image file")
    (d / "page.png").write_text("<html><body>404 Not Found</body></html>")
    bad("HTML error page named .png", d / "page.png", "page.png: not an image file")
    (d / "archive.png").write_bytes(gzip.compress(b"x" * 1000))
    bad("gzip file named .png", d / "archive.png", "archive.png: not an image file")
    big = _jpeg(d / "big.jpg", size=(640, 480), quality=90)
    for f in (0.05, 0.3, 0.6, 0.95):
        bad(f"JPEG cut at {f:.0%}", _cut(big, d / f"cut{int(f * 100)}.jpg", f), f"cut{int(f * 100)}.jpg: truncated")
    png = d / "full.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(png)
    for f in (0.2, 0.7):
        bad(f"PNG cut at {f:.0%}", _cut(png, d / f"cut{int(f * 100)}.png", f), f"cut{int(f * 100)}.png: truncated")
    bad("PNG whose data stream ends after 2 of 100 rows", _png_raw(d / "short.png", 100, 100, (b"\x00" + b"\x80" * 100) * 2),
        "short.png: truncated")
    bad("declared bomb: 30000 x 30000 PNG header, 4 rows of data",
        _png_raw(d / "declared_bomb.png", 30000, 30000, b"\x00" * 30001 * 4), "declared_bomb.png: 30000 x 30000 pixels")
    bad("real bomb: 20000 x 20000 black PNG (400 KB)", _png_bomb(d / "bomb.png"), "bomb.png: 20000 x 20000 pixels")
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    usable("CMYK JPEG", d / "cmyk.jpg")
    rgb.convert("L").convert("I;16").save(d / "deep.png")
    usable("16-bit grayscale PNG", d / "deep.png")
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    usable("palette PNG with transparency", d / "palette.png")
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    usable("animated GIF (first frame)", d / "anim.gif")
    rgb.save(d / "photo.tif")
    usable("TIFF", d / "photo.tif")
    from PIL import features

    if features.check("webp"):
        rgb.save(d / "photo.webp")
        usable("WebP", d / "photo.webp")
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90° counter-clockwise to display
    rgb.save(d / "rotated.jpg", exif=exif)
    usable("JPEG with EXIF orientation 8", d / "rotated.jpg")
    Image.new("RGB", (1, 1), "white").save(d / "dot.png")
    usable("1 x 1 pixel image", d / "dot.png")
    Image.new("RGB", (4000, 8), "white").save(d / "strip.png")
    usable("4000 x 8 pixel strip", d / "strip.png")
    usable("file name with spaces and accents", _jpeg(d / "café au lait ü.jpg"))
    usable("file name starting with a dash, given as ./-name", "./" + os.path.relpath(_jpeg(d / "-dash.jpg")))
    bad("no such file", d / "missing.jpg", "missing.jpg: no such file")
    (d / "sub").mkdir()
    bad("a folder without images", d / "sub", "sub: a folder without images")
    (d / "album" / "2024").mkdir(parents=True)
    _jpeg(d / "album" / "2024" / "a.jpg"), _jpeg(d / "album" / "b.PNG", format="PNG")
    (d / "album" / "notes.txt").write_text("not an image")
    cases.append(Case("image", "a folder holding 2 images (one in a subfolder) and a text file",
                      ["caption", good, str(d / "album")], 0, good_outputs=3))
    os.symlink(d / "loop_b", d / "loop_a")
    os.symlink(d / "loop_a", d / "loop_b")
    bad("symlink loop", d / "loop_a", "loop_a: symbolic link loop")
    os.symlink(d / "gone.jpg", d / "dangling.jpg")
    bad("dangling symlink", d / "dangling.jpg", "dangling.jpg: broken symbolic link")
    os.mkfifo(d / "pipe.jpg")
    bad("named pipe (FIFO)", d / "pipe.jpg", "pipe.jpg: not a regular file")
    return cases


def _checkpoints(root: Path, tiny: str, translator: str) -> List[Case]:
    import torch

    from showattend.checkpoint import load_checkpoint, save_checkpoint

    d = root / "checkpoints"
    d.mkdir()
    good = str(_jpeg(d / "photo.jpg"))
    cases = []

    def bad(what, path, message, command=("caption", good)):
        cases.append(Case("checkpoint", what, [*command, "--checkpoint", str(path)], 1, message))

    pwned = root / "PWNED"
    with open(d / "payload.pt", "wb") as f:
        pickle.dump({"format": "showattend-captioner", "x": _Payload(pwned)}, f)
    cases.append(Case("checkpoint", "pickle with a code-running payload (raw pickle)",
                      ["caption", good, "--checkpoint", str(d / "payload.pt")], 1,
                      "payload.pt: cannot read checkpoint: not a PyTorch checkpoint file", absent=str(pwned)))
    ckpt = load_checkpoint(tiny, None)
    torch.save({**ckpt, "history": [_Payload(pwned)]}, d / "payload_inside.pt")
    cases.append(Case("checkpoint", "valid checkpoint with a code-running object inside",
                      ["caption", good, "--checkpoint", str(d / "payload_inside.pt")], 1,
                      "payload_inside.pt: cannot read checkpoint: it holds Python objects other than tensors",
                      absent=str(pwned)))
    for f in (0.1, 0.5, 0.9):
        bad(f"checkpoint cut at {f:.0%}", _cut(tiny, d / f"cut{int(f * 100)}.pt", f),
            f"cut{int(f * 100)}.pt: cannot read checkpoint: truncated or damaged file")
    (d / "run").mkdir()  # the same damage under train --resume: the same exit code
    _cut(tiny, d / "run" / "last.pt", 0.5)
    cases.append(Case("checkpoint", "train --resume from a last.pt cut at 50%",
                      ["train", "--resume", "--out-dir", str(d / "run")], 1,
                      "last.pt: cannot read checkpoint: truncated or damaged file"))
    for f in (0.3, 0.6, 0.9):
        bad(f"4 KB of flipped bits at {f:.0%}", _flip(tiny, d / f"flip{int(f * 100)}.pt", f),
            f"flip{int(f * 100)}.pt: c")  # "corrupt checkpoint" or "cannot read checkpoint"
    (d / "empty.pt").write_bytes(b"")
    bad("zero-byte checkpoint", d / "empty.pt", "empty.pt: cannot read checkpoint")
    (d / "text.pt").write_text("not a checkpoint")
    bad("text file as checkpoint", d / "text.pt", "text.pt: cannot read checkpoint")
    (d / "folder.pt").mkdir()
    bad("a folder as checkpoint", d / "folder.pt", "folder.pt: a folder, not a checkpoint file")
    bad("no such checkpoint", d / "none.pt", "checkpoint not found: ")
    bad("translator checkpoint given to caption", translator, "expected 'showattend-captioner'")
    bad("captioner checkpoint given to translate", tiny, "expected 'showattend-translator'",
        command=("translate", "ein hund"))
    for missing in ("config", "vocab", "model"):
        save_checkpoint(str(d / f"no_{missing}.pt"), {k: v for k, v in ckpt.items() if k not in (missing, "checksum")})
        bad(f"checkpoint without its {missing}", d / f"no_{missing}.pt", f"no_{missing}.pt: incomplete "
                                                                         f"showattend-captioner checkpoint: no {missing}")
    name = next(iter(ckpt["model"]))
    save_checkpoint(str(d / "shape.pt"), {**ckpt, "model": {**ckpt["model"], name: torch.zeros(3, 3)}})
    bad("a weight of the wrong shape", d / "shape.pt", f"shape.pt: decoder tensor {name} has shape (3, 3)")
    save_checkpoint(str(d / "version.pt"), {**ckpt, "format_version": 99})
    bad("format version 99", d / "version.pt", "version.pt: checkpoint format version 99")
    save_checkpoint(str(d / "config.pt"), {**ckpt, "config": {**ckpt["config"], "hidden_dim": -4}})
    bad("a negative size in the config", d / "config.pt", "config.pt: bad model config")
    tr = load_checkpoint(translator, None)
    save_checkpoint(str(d / "tokenizer.pt"), {**tr, "src_tokenizer": b"\x00garbage" * 64})
    bad("translator with garbage subword-model bytes", d / "tokenizer.pt",
        "tokenizer.pt: the src subword model in the checkpoint is unusable", command=("translate", "ein hund"))
    return cases


def _data(root: Path, tiny: str, translator: str) -> List[Case]:
    d = root / "data"
    d.mkdir()
    cases = []
    tr = ["--checkpoint", translator, "--device", "cpu"]
    cases.append(Case("data", "translate: a line of invalid UTF-8 on stdin, between two good ones",
                      ["translate", *tr], 1, "standard input line 2: not valid UTF-8",
                      stdin=b"ein hund\n\xff\xfe kaputt\nder mann\n", good_outputs=2))
    cases.append(Case("data", "translate: empty stdin", ["translate", *tr], 0))
    cases.append(Case("data", "translate: a 20,000-word line", ["translate", *tr, "--max-len", "10"], 0,
                      "cut to", stdin=("ein hund " * 10000 + "\n").encode(), good_outputs=1))

    def corpus(name, src: bytes, tgt: bytes, gz=False):
        folder = d / name
        folder.mkdir()
        for split in ("train", "val"):
            for lang, data in (("de", src), ("en", tgt)):
                path = folder / f"{split}.{lang}{'.gz' if gz else ''}"
                path.write_bytes(gzip.compress(data) if gz else data)
        return folder

    pairs = [("ein hund läuft", "a dog runs"), ("der mann isst", "the man eats"), ("eine frau schläft", "a woman sleeps")]
    src = "".join(f"{a}\n" for a, _ in pairs * 20).encode()
    tgt = "".join(f"{b}\n" for _, b in pairs * 20).encode()
    run = ["--epochs", "1", "--max-steps", "1", "--vocab-size", "40", "--embed-dim", "8", "--encoder-hidden", "8",
           "--decoder-hidden", "16", "--attention-dim", "8", "--no-progress", "--device", "cpu"]

    def train(what, folder, code, message, *extra):
        cases.append(Case("data", what, ["translate", "train", "--data", str(folder), "--out-dir",
                                         str(folder / "run"), *run, *extra], code, message))

    train("translate train: empty training files", corpus("empty", b"", b""), 1, "train.de: no sentences")
    folder = corpus("truncated", src, tgt, gz=True)
    (folder / "train.en.gz").write_bytes((folder / "train.en.gz").read_bytes()[:-30])
    train("translate train: truncated .gz", folder, 1, "train.en.gz: truncated or corrupt gzip file")
    train("translate train: 60 source lines, 59 target lines", corpus("unequal", src, b"".join(tgt.splitlines(True)[:-1])), 1,
          "train.en has 59: not aligned")
    train("translate train: invalid UTF-8 in a training file", corpus("latin1", src, tgt.replace(b"a dog", b"\xe0 dog")),
          1, "train.en line 1: not valid UTF-8")
    train("translate train: blank target lines", corpus("blank", src, tgt.replace(b"the man eats", b"")), 0,
          "dropped 20 training pairs with an empty side")
    train("translate train: --vocab-size larger than the data can fill", corpus("small", src, tgt), 0,
          "--vocab-size 5000: the training text fills only", "--vocab-size", "5000")
    (d / "folder.json").mkdir()
    ev = ["evaluate", "--images", str(d), "--device", "cpu", "--data"]
    cases.append(Case("data", "evaluate --data given a folder", [*ev, str(d / "folder.json")], 1,
                      "folder.json: a folder, not a Karpathy JSON or COCO captions file"))
    (d / "broken.json").write_text('{"images": [')
    cases.append(Case("data", "evaluate --data: JSON cut short", [*ev, str(d / "broken.json")], 1,
                      "broken.json: not valid JSON"))
    (d / "other.json").write_text('{"licenses": []}')
    cases.append(Case("data", "evaluate --data: JSON of another kind", [*ev, str(d / "other.json")], 1,
                      "other.json: not a Karpathy-format caption file"))
    toy = d / "toy"
    (toy / "images").mkdir(parents=True)
    _jpeg(toy / "images" / "a.jpg"), _jpeg(toy / "images" / "b.jpg")
    (toy / "dataset_toy.json").write_text(json.dumps({"images": [
        {"filename": f, "split": s, "sentences": [{"tokens": ["a", "dog"], "raw": "a dog"}]}
        for f, s in (("a.jpg", "train"), ("b.jpg", "val"))]}))
    cases.append(Case("data", "train --encoder resnet101 offline (its weights need a download)",
                      ["train", "--data", str(toy / "dataset_toy.json"), "--images", str(toy / "images"), "--encoder",
                       "resnet101", "--cache-dir", str(toy / "cache"), "--out-dir", str(toy / "run"), "--device",
                       "cpu", "--no-progress"], 1, "pass the file with --encoder-weights FILE", offline=True))
    nojava = {"PATH": str(d)}  # a PATH without java
    evaluate = ["evaluate", "--data", str(toy / "dataset_toy.json"), "--images", str(toy / "images"), "--split", "val",
                "--cache-dir", str(toy / "cache"), "--device", "cpu", "--beam-size", "1", "--max-len", "3",
                "--checkpoint", tiny]
    cases.append(Case("data", "evaluate without Java (METEOR and the PTB tokenizer need it)", evaluate, 1,
                      "no `java` on PATH: METEOR and coco-caption's PTB tokenizer need a Java runtime", env=nojava))
    cases.append(Case("data", "evaluate without Java, --metrics bleu rouge cider", [*evaluate, "--metrics", "bleu",
                                                                                    "rouge", "cider"], 0,
                      env=nojava, good_outputs=1))
    cases.append(Case("data", "train --data: no such file", ["train", "--data", str(d / "none.json"), "--images",
                                                             str(d), "--out-dir", str(d / "run"), "--device", "cpu"],
                      1, "none.json"))
    return cases


def _options(root: Path, tiny: str, translator: str) -> List[Case]:
    d = root / "options"
    d.mkdir()
    good = str(_jpeg(d / "photo.jpg"))
    cap = ["caption", good, "--checkpoint", tiny]
    cases = [Case("option", f"caption {' '.join(extra)}", [*cap, *extra], 2, message) for extra, message in [
        (["--beam-size", "0"], "--beam-size must be at least 1"),
        (["--max-len", "1"], "--max-len must be at least 2"),
        (["--length-penalty", "-1"], "--length-penalty must be a number >= 0 (0: no penalty), got -1.0"),
        (["--attention", "hard", "--samples", "0"], "--samples must be at least 1"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--beam-size", "three"], "--beam-size"),
    ]]
    cases.append(Case("option", "caption --device cuda (where torch sees no CUDA device)", [*cap, "--device", "cuda"],
                      2, "--device cuda", no_cuda=True))
    tr = ["translate", "x", "--checkpoint", translator]
    cases += [Case("option", f"translate {' '.join(extra)}", [*tr, *extra], 2, message) for extra, message in [
        (["--beam-size", "0"], "--beam-size must be at least 1"),
        (["--max-len", "0"], "--max-len must be at least 2"),
        (["--length-penalty", "-1"], "--length-penalty must be a number >= 0 (0: no penalty), got -1.0"),
    ]]
    cases += [Case("option", what, argv, 2, message) for what, argv, message in [
        ("train --batch-size 0", ["train", "--batch-size", "0"], "--batch-size must be at least 1"),
        ("train --encoder resnet9", ["train", "--encoder", "resnet9"], "--encoder 'resnet9'"),
        ("train --lr -1", ["train", "--lr", "-1"], "--lr must not be negative"),
        ("train --scst without --init", ["train", "--scst"], "--scst trains a captioner that has learnt with"),
        ("train --init with other model options", ["train", "--init", "flickr8k-lite2-soft", "--hidden-dim", "256"],
         "--hidden-dim 256 (the checkpoint: 512)"),
        ("translate train --max-len 0", ["translate", "train", "--max-len", "0"], "--max-len must be at least 1"),
        ("evaluate --split dev", ["evaluate", "--split", "dev"], "invalid choice 'dev' for argument '--split'"),
        ("--threads -1", ["--threads", "-1", "caption", good], "--threads needs a number of threads >= 0"),
        ("a misspelt command: captoin", ["captoin", good], "unknown command 'captoin' (did you mean 'caption'?)"),
        ("an unknown option beside --version", ["--bogus", "--version"], "unknown option --bogus before the command"),
        ("caption --model and --checkpoint together", [*cap, "--model", "flickr8k-lite2-soft"],
         "--model flickr8k-lite2-soft and --checkpoint"),
        ("caption --beam-siz 3 (misspelt)", [*cap, "--beam-siz", "3"],
         "Unrecognized options: --beam-siz, 3 (did you mean --beam-size?)"),
        ("train --resume --overwrite", ["train", "--resume", "--overwrite"], "--overwrite replaces it: give one"),
        *[(f"train --config with {text!r}", ["train", "--config", str(_text(d / f"cfg{i}.yaml", text))], message)
          for i, (text, message) in enumerate([
              ("epochs: null", "epochs must be an integer, got null"),
              ("epochs: true", "epochs must be an integer, got True"),
              ("data:", "data must be a file name or a list of them, got None"),
              ("attention: bogus", "attention must be one of soft, hard, got 'bogus'"),
              ("scst: true", "--scst trains a captioner that has learnt with"),
              ("bogus: 1", "unknown settings bogus")])],
    ]]
    cases += [Case("option", what, argv, 1, message) for what, argv, message in [
        ("train --init: no such file or bundled model", ["train", "--init", "runs/nope/best.pt"],
         "--init runs/nope/best.pt: no such checkpoint file"),
        ("train --config: no such file", ["train", "--config", str(d / "none.yaml")], "config file not found"),
        ("train --config: not YAML", ["train", "--config", str(_text(d / "bad.yaml", "a: [b"))],
         "not a YAML or JSON file"),
    ]]
    cases.append(Case("option", "export over its own source", ["export", tiny, tiny], 1,
                      "export would overwrite its own source"))
    (d / "a_folder").mkdir()
    cases += [Case("option", what, [*cap, *extra], code, message) for what, extra, code, message in [
        ("caption --html given a folder", ["--html", str(d / "a_folder")], 2, "a_folder: a folder; give a file name"),
        ("caption --attention-dir given a file", ["--attention-dir", good], 2, "photo.jpg is a file, not a folder"),
        ("caption --alphas without --format jsonl", ["--alphas"], 2, "--alphas needs --format jsonl"),
    ]]
    cases.append(Case("option", "translate --alignment given a folder", [*tr, "--alignment", str(d / "a_folder")],
                      2, "--alignment " + str(d / "a_folder") + ": a folder; give a file name"))
    if os.path.isdir("/proc/self"):  # Linux: a folder where no file can be made, even by root
        cases += [Case("option", what, argv, 2, message) for what, argv, message in [
            ("caption --attention-dir where nothing can be written (/proc)",
             [*cap, "--attention-dir", "/proc/overlays"], "--attention-dir /proc/overlays: cannot write in /proc"),
            ("translate --html where nothing can be written (/proc)",
             [*tr, "--html", "/proc/r/a.html"], "--html /proc/r/a.html: cannot write in /proc"),
            ("export to where nothing can be written (/proc)", ["export", tiny, "/proc/tiny.pt"],
             "OUTPUT /proc/tiny.pt: cannot write in /proc"),
            ("train --out-dir where nothing can be written (/proc)", ["train", "--out-dir", "/proc/run"],
             "--out-dir /proc/run: cannot write in /proc"),
        ]]
    cases.append(Case("option", "caption - with nothing on stdin", ["caption", "-", "--checkpoint", tiny], 1,
                      "no images given (standard input was empty)"))
    cases.append(Case("option", "translate --model: no such bundled translator",
                      ["translate", "--model", "multi30k-de-fr", "ein hund"], 2,
                      "no bundled translation model 'multi30k-de-fr' (did you mean 'multi30k-de-en'?)"))
    cases.append(Case("option", "evaluate with no --data (and SHOWATTEND_DATA unset)",
                      ["evaluate", "--checkpoint", tiny, "--limit", "1"], 2, "no --data given: pass a Karpathy-format"))
    cases.append(Case("option", "translate evaluate with no --data (and SHOWATTEND_DATA unset)",
                      ["translate", "evaluate", "--checkpoint", translator], 2, "no --data given: pass a folder of"))
    return cases


def make_corpus(root: Path) -> List[Case]:
    """Write the corpus's files under ``root`` and return its cases (a tiny random-weight captioner on the real
    Lite0 encoder and a tiny translator serve as the good models)."""
    import torch

    from showattend.captioning.captioner import Captioner
    from showattend.captioning.config import ModelConfig
    from showattend.captioning.network import build_decoder
    from showattend.checkpoint import save_checkpoint
    from showattend.translation.config import TranslatorConfig
    from showattend.translation.network import Seq2Seq
    from showattend.translation.tokenizer import SubwordTokenizer
    from showattend.translation.translator import Translator
    from showattend.captioning.vocab import Vocab

    root = Path(root)
    torch.manual_seed(0)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "a", "cup", "of", "coffee"])
    cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8)
    tiny = str(root / "tiny.pt")
    Captioner(build_decoder(cfg, len(vocab)), vocab, cfg, device="cpu").save(tiny)
    de = ["ein hund läuft", "der mann isst", "eine frau schläft"] * 10
    en = ["a dog runs", "the man eats", "a woman sleeps"] * 10
    src, tgt = SubwordTokenizer.train(de, 30), SubwordTokenizer.train(en, 30)
    tcfg = TranslatorConfig(decoder="bahdanau", embed_dim=8, encoder_hidden=8, decoder_hidden=16, attention_dim=8,
                            src_vocab_size=len(src), tgt_vocab_size=len(tgt))
    translator = str(root / "translator.pt")
    save_checkpoint(translator, Translator(Seq2Seq(tcfg), src, tgt, torch.device("cpu")).state())
    cases = _images(root) + _checkpoints(root, tiny, translator) + _data(root, tiny, translator) + \
        _options(root, tiny, translator)
    for c in cases:
        if c.kind == "image" or c.argv[0] == "caption" and "--device" not in c.argv:
            c.argv += ["--device", "cpu"] if "--device" not in c.argv else []
        if c.kind == "image":
            c.argv += ["--checkpoint", tiny, "--beam-size", "1", "--max-len", "4"]
    return cases


def run_case(case: Case) -> Outcome:
    """Run ``showattend`` in this process on the case's arguments (and stdin); a traceback means an exception
    escaped ``main``."""
    from showattend.cli import main

    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(case.stdin), encoding="utf-8")
    saved, saved_env = sys.stdin, {k: os.environ.get(k) for k in case.env}
    traceback = False
    try:
        sys.stdin = stdin
        os.environ.update(case.env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(case.argv))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: B902 - what escaped main is the finding
                import traceback as tb

                err.write("Traceback (most recent call last):\n" + "".join(tb.format_exception(e)))
                code, traceback = None, True
    finally:
        sys.stdin = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(code, out.getvalue(), err.getvalue(), traceback)


def said(case: Case, outcome: Outcome, root: str) -> str:
    """The stderr line the table shows: the one holding the case's message (else the first that is not a
    progress bar, a usage line or a box border), paths shortened."""
    text = outcome.stderr.replace("│", " ")
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("usage:", "╭", "╰", "─", "For full helptext", "-----",
                                                              "feature cache:"))  # informational; the free disk varies
             and "%|" not in ln]
    line = next((ln for ln in lines if case.message and case.message in ln), lines[0] if lines else "")
    return line.replace(str(root) + "/", "").replace(str(root), ".")


def table(cases: List[Case], outcomes: List[Outcome], root: str) -> str:
    """The corpus table of docs/reliability.md (Markdown): each case, its exit code and the first line it printed."""
    rows = ["| input | exit code | what showattend says on stderr |", "|---|---|---|"]
    for kind, title in (("image", "Images (`caption`)"), ("checkpoint", "Checkpoints"),
                        ("data", "Text and data files"), ("option", "Options")):
        rows.append(f"| **{title}** | | |")
        for c, o in zip(cases, outcomes):
            if c.kind == kind:
                text = said(c, o, root).replace("|", "\\|") or "(nothing: the input is used)"
                rows.append(f"| {c.what} | {o.code} | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        cases = make_corpus(Path(tmp))
        outcomes = [run_case(c) for c in cases]
        print(table(cases, outcomes, tmp))
