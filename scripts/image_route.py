"""Does reproducing the training images' route at caption time help? The shared Flickr8k copy is 224x224 (squashed,
JPEG quality 90), so a Lite2 model (260 px) was trained on upscaled 224-pixel images, while ``caption`` resizes a
photo straight to the encoder's size. This captions the out-of-domain photos (``scripts/out_of_domain.py``) by
three routes and scores each:

* ``direct``: straight to the encoder's size (what ``caption`` does);
* ``224``: down to 224 first (bicubic), then to the encoder's size;
* ``224jpeg``: down to 224, a JPEG quality-90 round trip, then to the encoder's size (the copy's route).

    python scripts/image_route.py [--model NAME | --checkpoint FILE] [--output REPORT.json]

Prints each route's metrics and captions, and the cosine of each photo's annotation vectors (flattened) between
the direct route and the others.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUTES = ("direct", "224", "224jpeg")


def route_loader(route: str, load_image, open_rgb):
    """A ``load_image(source, size)`` that takes ``route`` to the encoder's size."""
    from PIL import Image

    def load(source, size=224):
        if route == "direct":
            return load_image(source, size)
        img = open_rgb(source).resize((224, 224), Image.BICUBIC)
        if route == "224jpeg":
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            buf.seek(0)
            img = Image.open(buf).convert("RGB")
        return load_image(img, size)
    return load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="flickr8k-lite2-soft", help="a bundled captioner (default: %(default)s)")
    ap.add_argument("--checkpoint", default="", help="a captioner checkpoint, instead of --model")
    ap.add_argument("--output", default="", help="also write the JSON report here")
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import torch

    import out_of_domain
    from showattend.captioning import captioner as captioner_module
    from showattend.captioning.images import load_image, open_rgb

    cap = out_of_domain.load_captioner(args.model, args.checkpoint)
    photos = [f for f, _, _ in out_of_domain.load_set()]
    report, feats = {"model": args.checkpoint or args.model}, {}
    try:
        for route in ROUTES:
            captioner_module.load_image = route_loader(route, load_image, open_rgb)
            report[route] = out_of_domain.score(cap)
            feats[route] = cap.encode(photos).flatten(1)
    finally:
        captioner_module.load_image = load_image
    for route in ROUTES[1:]:
        cos = torch.nn.functional.cosine_similarity(feats["direct"], feats[route])
        report[f"cosine_direct_{route}"] = [round(float(c), 3) for c in cos]
    out_of_domain.write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
