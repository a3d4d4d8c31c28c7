"""The examples of the README and of every page of ``docs/``, extracted from their fenced blocks, so that the
documentation cannot rot.

Every ``python`` block is executed. Every ``bash`` block is either executed (in a scratch folder that has the
repository's ``assets``, with the inputs the block names made there) or, where it needs what a test cannot have
(the full datasets, GPUs, hours of training, a fresh virtualenv), each of its ``showattend`` command lines is
parsed and every setting checked with :func:`showattend.cli.parse`, so a renamed option or a bad value fails here.
The blocks that are not executed are listed in ``NOT_RUN`` with the reason; a new block must be added to one of
the two lists.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from showattend.cli import parse

DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
#: (file, language, block) of every fenced block
FILE_BLOCKS = [(name, m.group(1), m.group(2)) for name in DOCS
               for m in re.finditer(r"```(\w+)\n(.*?)```", open(os.path.join(ROOT, name), encoding="utf-8").read(),
                                    re.S)]
BLOCKS = [(lang, block) for _, lang, block in FILE_BLOCKS]

#: bash blocks that are executed, by their first line, with the files they need (made from the sample photos)
RUN = {
    "showattend caption photo1.jpg photo2.png": {"photo1.jpg": "coffee.jpg", "photo2.png": "cameraman_gray.png"},
    'showattend translate "Ein Hund läuft durch den Schnee."': {},
}

#: blocks whose showattend commands are only parsed, by the start of their first line, and why
NOT_RUN = {
    "scripts/demo.sh": "creates the project's .venv and installs into it; scripts/test.sh is the test command itself",
    "pip install .": "installs into the current environment (tests/test_pretrained.py installs the wheel into a "
                     "fresh virtualenv and captions from another directory instead)",
    "showattend --threads 2 train --data data/flickr8k": "full Flickr8k training (hours)",
    "# one GPU, bf16 autocast": "GPUs, torchrun and full training runs",
    "showattend train --data data/coco": "needs COCO",
    "showattend train --data annotations/captions_train2014.json": "needs COCO",
    "showattend --threads 2 train --attention hard": "full Flickr8k training and evaluation",
    "showattend evaluate --checkpoint runs/flickr8k_soft": "needs a trained run and the full test split",
    "showattend translate train --src de": "full Multi30k training",
    "showattend train --fine-tune-blocks 2": "full Flickr8k training with a fine-tuned encoder (tests/test_finetune.py "
                                             "trains one on toy data)",
    "showattend train --scst --init": "full Flickr8k self-critical training (tests/test_scst.py runs it on toy data)",
}


def _commands(block: str):
    """The showattend command lines of a bash block (continuations joined, comments and pipes dropped), as
    argument lists after ``showattend`` (``torchrun ... -m showattend`` and ``python -m showattend`` too)."""
    text = re.sub(r"\\\n\s*", " ", block)
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("|"):
            words = shlex.split(part)
            cut = next((k for k, w in enumerate(words) if w in ("<", ">", "2>", ">>")), len(words))
            words = words[:cut]  # redirections are the shell's
            if "showattend" not in words:
                continue
            i = words.index("showattend")
            if words[i - 1] == "-m" or i == 0 or "=" in words[0]:
                args = [w for w in words[i + 1:] if w != "..."]
                if args and args[0] not in ("--threads",) and args[0].startswith("-") and len(args) == 1:
                    continue
                yield args


def _first(block: str) -> str:
    return block.strip().splitlines()[0]


def test_every_block_is_run_or_listed():
    for name, lang, block in FILE_BLOCKS:
        if lang == "bash":
            first = _first(block)
            assert any(first.startswith(k) for k in [*RUN, *NOT_RUN]), f"{name}: block not covered: {first}"
        else:
            assert lang in ("python", "yaml"), (name, lang)
    assert {name for name, lang, _ in FILE_BLOCKS if lang == "python"} >= {"README.md", "docs/translation.md"}
    assert len(DOCS) >= 7  # the README and the six pages


@pytest.mark.parametrize("index", [i for i, (lang, _) in enumerate(BLOCKS) if lang == "python"])
def test_python_blocks_run(index, tmp_path):
    os.symlink(os.path.join(ROOT, "assets"), tmp_path / "assets")
    code = BLOCKS[index][1]
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("first", list(RUN))
def test_bash_blocks_run(first, tmp_path):
    block = next(b for lang, b in BLOCKS if lang == "bash" and _first(b).startswith(first))
    assert all(b == block for lang, b in BLOCKS if lang == "bash" and _first(b).startswith(first))  # one text
    for name, photo in RUN[first].items():
        shutil.copy(os.path.join(ROOT, "assets", "photos", photo), tmp_path / name)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()


@pytest.mark.parametrize("first", list(NOT_RUN))
def test_blocks_not_run_have_commands_that_parse(first, monkeypatch, tmp_path):
    """Each showattend command line of these blocks names real options with valid values (--device cuda is
    taken as valid: the GPU examples are checked as if on a GPU machine; ``run.yaml`` is the README's; the data
    options default to ``$SHOWATTEND_DATA``'s folders, as the docs say)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SHOWATTEND_DATA", "data")  # as docs/training.md asks: where flickr8k/ and multi30k/ are
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(next(b for lang, b in BLOCKS if lang == "yaml"))
    blocks = [b for lang, b in BLOCKS if lang == "bash" and _first(b).startswith(first)]
    assert blocks, f"no block starts with {first!r}: remove it from NOT_RUN"
    for args in (a for block in blocks for a in _commands(block)):
        if not args or args[0] in ("--version", "--help"):
            continue
        name, command = parse(args)
        assert command is not None, args
