"""Scoring translations with sacreBLEU, and evaluating a translator on a split."""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

from ..runs import atomic_write_text
from .config import DataConfig
from .data import find_split, read_parallel
from .translator import Translator

__all__ = ["corpus_scores", "evaluate"]


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


def evaluate(checkpoint: str, dataset: DataConfig, split: str = "test_2016_flickr", beam_size: int = 5,
             length_penalty: float = 1.0, device: str = "auto", translations_out: Optional[str] = None) -> Dict:
    """Translate a split and score it with sacreBLEU (BLEU and chrF, signatures included).

    Args:
        checkpoint: translator checkpoint.
        dataset: the data folder and the language pair (as for training).
        split: the split's file name stem (``test_2016_flickr`` for ``test_2016_flickr.de``).
        beam_size, length_penalty: decoding settings (stated in the report).
        device: "auto", "cpu", "cuda".
        translations_out: optional text file for the translations, one per line.

    Returns:
        a report dict: scores (0-100) with sacreBLEU's signatures, decoding settings, split size, wall time.

    Raises:
        ValueError: no data given (:meth:`DataConfig.validate`), unreadable or unaligned split files (named).
        FileNotFoundError: no such split file.
    """
    t0 = time.time()
    dataset.validate()
    src, tgt = dataset.src, dataset.tgt
    bundle = Translator.from_checkpoint(checkpoint, device)
    sources, refs = read_parallel(find_split(dataset.data, split, src), find_split(dataset.data, split, tgt))
    hyps = [r.text for r in bundle.translate(sources, beam_size=beam_size, length_penalty=length_penalty)]
    if translations_out:
        atomic_write_text(translations_out, "\n".join(hyps) + "\n")
    return {"checkpoint": checkpoint, "direction": f"{src}->{tgt}", "split": split, "sentences": len(sources),
            "decoder": bundle.model.cfg.decoder, "beam_size": beam_size, "length_penalty": length_penalty,
            **corpus_scores(hyps, refs, tgt), "wall_s": round(time.time() - t0, 1)}
