"""Caption one image with several checkpoints and draw their attention maps in one figure (soft vs hard).

    python scripts/compare_attention.py assets/photos/astronaut.jpg \
        --checkpoint runs/flickr8k_soft_s0/best.pt --checkpoint runs/flickr8k_hard_s0/best.pt \
        --out assets/soft_vs_hard.png

Each checkpoint gets a block of panels titled by its attention mode (or ``--label``); hard-attention models also
get the argmax location α would sample most often outlined in red. Exit code 1 on an unreadable image or
checkpoint.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from showattend.captioning.images import ImageError, open_rgb  # noqa: E402
from showattend.captioning.captioner import Captioner  # noqa: E402
from showattend.captioning.overlay import AttentionRow, plot_attention_rows  # noqa: E402
from showattend.checkpoint import CheckpointError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("image")
    p.add_argument("--checkpoint", action="append", required=True, help="a captioner checkpoint (repeat)")
    p.add_argument("--label", action="append", help="block title per checkpoint (default: '<mode> attention')")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--columns", type=int, default=6)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/compare_attention.png")
    args = p.parse_args(argv)
    if args.label and len(args.label) != len(args.checkpoint):
        p.error("give one --label per --checkpoint")
    try:
        image = open_rgb(args.image)
        rows, grid = [], None
        for i, path in enumerate(args.checkpoint):
            cap = Captioner.from_checkpoint(path, device=args.device)
            r = cap.caption([args.image], beam_size=args.beam_size)[0]
            label = args.label[i] if args.label else f"{cap.config.attention} attention"
            rows.append(AttentionRow(label, r.words, r.alphas, r.betas, cap.config.attention == "hard"))
            grid = r.grid
            print(f"{label}: {r.text}")
    except (ImageError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(plot_attention_rows(image, rows, grid, args.out, columns=args.columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
