"""Caption the out-of-domain photos (``assets/out_of_domain/references.json``: photos outside Flickr8k's
people-and-dogs world, with three hand-written references each) and score the captions with the coco-caption
scorers, beside the test split's figures on a model card: a model that wins the test split by saying "a man"
and "a dog" to everything shows here.

    python scripts/out_of_domain.py [--model NAME | --checkpoint FILE] [--beam-size K] [--length-penalty P]
        [--output REPORT.json]

The report (printed, and written to ``--output``): the metrics (0-100; CIDEr's document frequencies are those
of this small set's references, so it is comparable between models on this set only) and each photo's caption.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCES = os.path.join(ROOT, "assets", "out_of_domain", "references.json")


def load_set(path: str = REFERENCES):
    """[(photo path, kind, [reference captions])] of the set, paths made absolute.

    Raises:
        ValueError: a photo without three references, or a missing photo (named).
    """
    with open(path, encoding="utf-8") as f:
        photos = json.load(f)["photos"]
    out = []
    for p in photos:
        file = os.path.join(ROOT, p["file"])
        if not os.path.isfile(file) or len(p["references"]) < 3:
            raise ValueError(f"{path}: {p['file']} is missing or has fewer than 3 references")
        out.append((file, p["kind"], list(p["references"])))
    return out


def score(captioner, beam_size: Optional[int] = None, length_penalty: Optional[float] = None,
          path: str = REFERENCES) -> dict:
    """The set captioned by ``captioner`` (beam search; beam size and length penalty: the captioner's own decoding
    defaults, a bundled model's registry entry, where not given) and scored: {"photos", "beam_size",
    "length_penalty", "metrics": {BLEU-1..4, METEOR, ROUGE-L, CIDEr}, "captions": {file: caption}}."""
    from showattend.captioning.metrics import caption_metrics

    beam_size = captioner.decoding["beam_size"] if beam_size is None else beam_size
    length_penalty = captioner.decoding["length_penalty"] if length_penalty is None else length_penalty
    photos = load_set(path)
    results = captioner.caption([f for f, _, _ in photos], beam_size=beam_size, length_penalty=length_penalty)
    keys = [os.path.relpath(f, ROOT) for f, _, _ in photos]
    hyps = {k: r.text for k, r in zip(keys, results)}
    metrics = caption_metrics({k: refs for k, (_, _, refs) in zip(keys, photos)}, hyps)
    return {"photos": len(photos), "beam_size": beam_size, "length_penalty": length_penalty,
            "metrics": {k: round(v, 2) for k, v in metrics.items()}, "captions": hyps}


def load_captioner(model: str, checkpoint: str = "", device: str = "cpu"):
    """The captioner of ``--checkpoint`` if given, else the bundled ``--model``."""
    sys.path.insert(0, ROOT)
    from showattend.captioning import Captioner

    return Captioner.from_checkpoint(checkpoint, device) if checkpoint else Captioner.from_pretrained(model, device)


def write_report(report: dict, output: str = "") -> None:
    """Print the JSON report and, given ``output``, write it there too."""
    text = json.dumps(report, indent=1)
    print(text)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="flickr8k-lite2-soft", help="a bundled captioner (default: %(default)s)")
    ap.add_argument("--checkpoint", default="", help="a captioner checkpoint, instead of --model")
    ap.add_argument("--beam-size", type=int, default=None, help="default: the model's (a bundled model's registry "
                    "entry; 3 for a checkpoint)")
    ap.add_argument("--length-penalty", type=float, default=None, help="default: the model's (0 for a checkpoint)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output", default="", help="also write the JSON report here")
    args = ap.parse_args(argv)
    cap = load_captioner(args.model, args.checkpoint, args.device)
    write_report({"model": args.checkpoint or args.model, **score(cap, args.beam_size, args.length_penalty)},
                 args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
