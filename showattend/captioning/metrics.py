"""Thin wrappers around the standard scorers: coco-caption (pycocoevalcap) for captions.

All scores are on a 0-100 scale. BLEU is coco-caption's corpus BLEU (closest reference length, brevity
penalty), METEOR is METEOR 1.5 (Java), ROUGE-L, CIDEr-D. SPICE needs a Stanford CoreNLP download and is not
computed here. The PTB tokenizer and METEOR need Java; without it, BLEU, ROUGE-L and CIDEr can still be computed
on showattend's own tokenisation (lower case, letters and digits), which is close to but not the published
protocol.
"""
from __future__ import annotations

import contextlib
import io
import shutil
from typing import Dict, List, Optional, Sequence

__all__ = ["caption_metrics", "bleu4", "cider", "check_java", "java_available", "JavaMissing", "METRICS"]

#: the metric names ``caption_metrics`` takes
METRICS = ("bleu", "meteor", "rouge", "cider")


class JavaMissing(ValueError):
    """No ``java`` on PATH: the coco-caption PTB tokenizer and METEOR cannot run."""

SPICE_NOTE = "SPICE not computed: it needs Stanford CoreNLP models that cannot be downloaded here"


_SENTINEL = ("\x00showattend-last-line", "showattendsentinel")  # a last line whose place is checked


def _ptb_tokenize(captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """pycocoevalcap's PTB tokenizer, checked: it writes one caption a line and reads the Java tokenizer's lines
    back in order, so a caption that the tokenizer breaks in two (it breaks at ``\r`` and U+2028 as well as
    ``\n``, which alone pycocoevalcap replaces) would shift every later image's captions by a line, silently.
    A sentinel line after the last caption must come back in its place.

    Raises:
        RuntimeError: the tokenizer returned another number of lines than it was given."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    key, text = _SENTINEL
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        out = PTBTokenizer().tokenize({**{k: [{"caption": c} for c in v] for k, v in captions.items()},
                                       key: [{"caption": text}]})
    if out.pop(key, None) != [text] or any(len(out.get(k, ())) != len(v) for k, v in captions.items()):
        raise RuntimeError("coco-caption's PTB tokenizer returned its lines shifted (a caption held a line break "
                           "it split at): the scores would pair captions with other images' references")
    return out


def _one_line(text: str) -> str:
    """Whitespace of any kind (line and paragraph separators, tabs, runs of spaces) as single spaces."""
    return " ".join(text.split())


def _simple_tokenize(captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    from .vocab import tokenize

    return {k: [" ".join(tokenize(c)) for c in v] for k, v in captions.items()}


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (the PTB tokenizer and METEOR need one)."""
    return shutil.which("java") is not None


def check_java(metrics: Sequence[str]) -> None:
    """Raises JavaMissing: METEOR is asked for and there is no Java (the message says what to do)."""
    if "meteor" in metrics and not java_available():
        raise JavaMissing("no `java` on PATH: METEOR and coco-caption's PTB tokenizer need a Java runtime "
                          "(e.g. apt-get install default-jre-headless); without it, `--metrics bleu rouge cider` "
                          "scores on showattend's own tokenisation (close to, but not, the published protocol)")


def caption_metrics(references: Dict[str, Sequence[str]], hypotheses: Dict[str, str],
                    metrics: Sequence[str] = METRICS, per_image: Optional[dict] = None) -> Dict[str, float]:
    """Score generated captions with the coco-caption scorers after PTB tokenisation (Java), or, when Java is
    missing and METEOR is not asked for, after showattend's own tokenisation. Line breaks and other whitespace
    inside a caption are made single spaces first (the tokenizer works line by line).

    Args:
        references: image id -> reference captions (raw text).
        hypotheses: image id -> one generated caption; every id must have references.
        metrics: any of "bleu", "meteor", "rouge", "cider".
        per_image: a dict that receives each image's scores, {image id: {"BLEU-4": ..., "CIDEr": ...}} (CIDEr's
            document frequencies are the whole set's, as for the corpus score).

    Returns:
        {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} (those asked for), each on 0-100.

    Raises:
        KeyError: a hypothesis id has no references.
        JavaMissing: METEOR asked for without Java (the message says how to get the other metrics).
        RuntimeError: the PTB tokenizer's lines came back shifted (see :func:`_ptb_tokenize`).
    """
    missing = [k for k in hypotheses if k not in references]
    if missing:
        raise KeyError(f"{len(missing)} hypotheses have no references, e.g. {missing[:3]}")
    check_java(metrics)
    tok = _ptb_tokenize if java_available() else _simple_tokenize
    gts = tok({k: [_one_line(r) for r in references[k]] for k in hypotheses})
    res = tok({k: [_one_line(v)] for k, v in hypotheses.items()})
    return _score(gts, res, metrics, per_image)


def _score(gts, res, metrics, per_image: Optional[dict] = None) -> Dict[str, float]:
    """Corpus scores (0-100); with ``per_image`` (a dict), also each image's, as {image id: {metric: score}}."""
    out: Dict[str, float] = {}
    ids = list(gts)
    quiet = contextlib.redirect_stdout(io.StringIO())

    def keep(name, values):
        if per_image is not None:
            for k, v in zip(ids, values):
                per_image.setdefault(k, {})[name] = round(100 * float(v), 2)

    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        with quiet:
            scores, each = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{i + 1}": 100 * s for i, s in enumerate(scores)})
        keep("BLEU-4", each[3])
    if "meteor" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            scorer = Meteor()
        except OSError as err:
            raise JavaMissing(f"METEOR could not start Java ({err})") from None
        score, each = scorer.compute_score(gts, res)
        out["METEOR"] = 100 * score
        keep("METEOR", each)
        with contextlib.suppress(Exception):
            scorer.close()
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        score, each = Rouge().compute_score(gts, res)
        out["ROUGE-L"] = 100 * score
        keep("ROUGE-L", each)
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        score, each = Cider().compute_score(gts, res)
        out["CIDEr"] = 100 * score
        keep("CIDEr", each)
    return out


def bleu4(references: Dict[str, Sequence[Sequence[str]]], hypotheses: Dict[str, Sequence[str]]) -> float:
    """coco-caption corpus BLEU-4 (0-100) of already tokenised text (no Java; for validation during training)."""
    return _score(*_joined(references, hypotheses), ("bleu",))["BLEU-4"]


def cider(references: Dict[str, Sequence[Sequence[str]]], hypotheses: Dict[str, Sequence[str]]) -> float:
    """coco-caption CIDEr-D (0-100, document frequencies of these references) of already tokenised text (no Java;
    for SCST's validation): words, not vocabulary ids, so that rare reference words count as themselves and no
    reference is cut, as in ``showattend evaluate``."""
    return _score(*_joined(references, hypotheses), ("cider",))["CIDEr"]


def _joined(references, hypotheses):
    """Tokenised references and hypotheses as the scorers take them: (gts, res) of space-joined words."""
    return ({k: [" ".join(r) for r in references[k]] for k in hypotheses},
            {k: [" ".join(v)] for k, v in hypotheses.items()})
