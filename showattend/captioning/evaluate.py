"""Evaluate a captioner on a split with the coco-caption scorers (BLEU-1..4, METEOR, ROUGE-L, CIDEr)."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional, Sequence

from .metrics import METRICS, SPICE_NOTE, caption_metrics, check_java, java_available
from ..runs import atomic_write_text
from .cache import FeatureStore
from .captioner import Captioner
from .task import evaluate_split
from .config import DataConfig
from .train import load_records, prepare_cache

__all__ = ["evaluate"]


def evaluate(checkpoint: str, dataset: DataConfig, split: str = "test", beam_size: int = 3, max_len: int = 20,
             length_penalty: float = 0.0, device: str = "auto", limit: int = 0, captions_out: Optional[str] = None,
             attention: str = "soft", samples: int = 5, metrics: Sequence[str] = METRICS, html: Optional[str] = None,
             precision: str = "fp32") -> Dict:
    """Caption every image of a split and score the captions against its references.

    The frozen encoder's features come from the feature cache (built if missing), so the images are encoded
    once across evaluations; for a fine-tuned encoder the cache holds its frozen trunk's activations, and its
    fine-tuned top blocks run on them.

    Args:
        checkpoint: captioner checkpoint.
        dataset: caption file(s), image folder, split file and feature cache folder (as for training).
        split: "train", "val" or "test".
        beam_size, max_len, length_penalty: decoding settings (stated in the report).
        device: "auto", "cpu", "cuda".
        limit: first N images only (0: all).
        captions_out: optional JSON file for the generated captions.
        attention, samples: inference attention (see :meth:`Captioner.decode`).
        precision: "fp32" or "bf16" decoding (see :meth:`Captioner.decode`).
        metrics: which of "bleu", "meteor", "rouge", "cider" to compute (METEOR needs Java).
        html: also write an HTML report there: each image with its caption, references, per-image scores and
            attention maps (:func:`~showattend.report.write_caption_report`).

    Returns:
        a report dict: metrics (0-100), decoding settings, split size, wall time.

    Raises:
        ValueError: no data given (:meth:`DataConfig.validate`), or the split has no images. JavaMissing: METEOR
            asked for without Java (checked first).
    """
    t0 = time.time()
    dataset.validate()
    check_java(metrics)  # before the decoding, not after it
    captioner = Captioner.from_checkpoint(checkpoint, device=device)
    records = [r for r in load_records(dataset) if r.split == split]
    if limit:
        records = records[:limit]
    if not records:
        raise ValueError(f"{' '.join(dataset.data)}: no images in split {split!r}")
    store: FeatureStore = prepare_cache(dataset, captioner.config, records, captioner.device)
    results = evaluate_split(captioner, store, records, beam_size, max_len, progress=True,
                             length_penalty=length_penalty, attention=attention, samples=samples,
                             precision=precision)
    # keyed by the image's path, unique in the split: several Karpathy JSONs each number their images from 0, so
    # image ids can collide (and one image would overwrite another)
    hyps = {r.key: results[r.key].text for r in records}  # (load_records keeps one record per key)
    refs = {r.key: r.raw for r in records}
    per_image: Dict[str, Dict] = {}
    scores = caption_metrics(refs, hyps, metrics, per_image=per_image)
    if len(per_image) != len(records):
        raise RuntimeError(f"{len(records)} images decoded, {len(per_image)} scored")
    lengths = [len(results[r.key].words) for r in records]
    report = {
        "checkpoint": checkpoint, "data": list(dataset.data), "split": split, "images": len(records),
        "images_scored": len(per_image),
        "references_per_image": round(sum(len(r.raw) for r in records) / len(records), 2),
        "model_attention": captioner.config.attention,
        "inference_attention": attention if attention == "soft" else f"hard ({samples} sampled searches)",
        "beam_size": beam_size, "max_len": max_len, "length_penalty": length_penalty, "precision": precision,
        "scorer": "pycocoevalcap (coco-caption), " + ("PTB tokenizer" if java_available() else
                                                      "showattend's tokenisation (no Java)") + ", scale 0-100",
        "metrics": {k: round(v, 2) for k, v in scores.items()},
        "SPICE": SPICE_NOTE,
        "mean_caption_words": round(sum(lengths) / len(lengths), 2),
        # captions that used all max_len tokens: max_len - 1 words, then the <end> that the search forces there
        "captions_at_max_len": sum(len(results[r.key].words) >= max_len - 1 for r in records),
        "wall_s": round(time.time() - t0, 1),
    }
    if html:
        from ..report import write_caption_report
        from .overlay import report_item

        items = [report_item(r.key, os.path.join(dataset.images, r.key), results[r.key], r.raw, per_image[r.key])
                 for r in records]
        write_caption_report(html, items, f"showattend evaluate: {checkpoint}, {split} split, beam {beam_size}",
                             summary=report["metrics"])
    if captions_out:
        atomic_write_text(captions_out, json.dumps([{"image": r.key, "caption": hyps[r.key]} for r in records],
                                                   indent=1))
    return report
