#!/usr/bin/env python
"""Measure showattend's speed on this machine (nothing here is asserted; report what it prints).

    python scripts/benchmark.py [--device cpu|cuda] [--threads N] [--json out.json]

Measures, with random inputs of the default model's shapes (Lite0: L=49, D=1280; 512/512/512; V=2539):
  * encoder throughput (images/s, batch 32, 224 px) of the frozen EfficientNet-Lite0;
  * decoder training throughput (captions/s: forward + backward + Adam step, batch 64, 13 tokens), in fp32 and
    under bf16 autocast (--precision bf16);
  * decoding throughput (images/s) of greedy and batched beam search (k=3, 50 images per batch, 20 steps max);
  * the cost of recomputing the attention key projection at every step instead of once per image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from showattend.captioning.data import collate_captions  # noqa: E402
from showattend.captioning.decoder import Decoder, caption_loss  # noqa: E402
from showattend.captioning.encoders import Encoder  # noqa: E402
from showattend.captioning.model import Captioner, ModelConfig  # noqa: E402
from showattend.vocab import Vocab  # noqa: E402


def timed(fn, repeat, warmup=1, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    out = {"device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__}

    enc = Encoder("efficientnet_lite0").to(dev).eval()
    images = torch.rand(32, 3, 224, 224, device=dev)
    with torch.no_grad():
        s = timed(lambda: enc(images), 3, sync=sync)
    out["encoder_images_per_s"] = round(32 / s, 1)

    V, B, T = 2539, 64, 13
    dec = Decoder(V, 1280).to(dev)
    feats = torch.randn(B, 49, 1280)
    g = torch.Generator().manual_seed(0)
    batch = [(feats[i], torch.tensor([1] + torch.randint(4, V, (int(torch.randint(8, T, (1,), generator=g)),),
                                                         generator=g).tolist() + [2])) for i in range(B)]
    f, caps, lengths = collate_captions(batch)
    f, caps, lengths = f.to(dev), caps.to(dev), lengths.tolist()
    opt = torch.optim.Adam(dec.parameters(), 4e-4)

    for precision in ("fp32", "bf16"):  # what --precision does: torch.autocast around forward and loss
        def train_step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = caption_loss(dec(f, caps, lengths), caps)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()

        s = timed(train_step, 5, sync=sync)
        out[f"train_captions_per_s_{precision}"] = round(B / s, 1)

    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(V - 4)])
    cap = Captioner(dec, vocab, ModelConfig(), device=dev)
    with torch.no_grad():  # untrained weights: make <end> improbable so every caption runs all 20 steps
        dec.L_o.bias[vocab.end] = -30
    x = torch.randn(50, 49, 1280, device=dev)
    for k in (1, 3):
        s = timed(lambda: cap.decode(x, beam_size=k, max_len=20), 2, sync=sync)
        out[f"decode_beam{k}_images_per_s"] = round(50 / s, 1)

    # key projection once per image vs at every step (20 steps, batch 150 = 50 images x beam 3)
    att = dec.attention
    a = torch.randn(150, 49, 1280, device=dev)
    h = torch.randn(150, 512, device=dev)
    with torch.no_grad():
        once = timed(lambda: [att(h, keys, a) for keys in [att.project_keys(a)] for _ in range(20)], 3, sync=sync)
        every = timed(lambda: [att(h, att.project_keys(a), a) for _ in range(20)], 3, sync=sync)
    out["attention_20_steps_ms_keys_once"] = round(1000 * once, 1)
    out["attention_20_steps_ms_keys_every_step"] = round(1000 * every, 1)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
