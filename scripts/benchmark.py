#!/usr/bin/env python
"""Measure showattend's speed on this machine (nothing here is asserted; report what it prints).

    python scripts/benchmark.py [--device cpu|cuda] [--threads N] [--only train,decode,encoder,attention,scst]
                                [--json out.json]

Random inputs of the models' shapes (decoder 512/512/512, V = 2539, captions of 9 to 13 tokens):

* **train**: the decoder's training step (forward + backward + Adam) at 49×1280 (Lite0, the default) and
  196×2048 (a ResNet/VGG-like 14×14 grid), in captions/s:
  - ``baseline``: showattend's step before 0.5, kept in the same run for the ratio
    (:func:`~showattend.captioning.network.reference_forward`, ``torch.tanh`` in the score, the per-parameter
    Adam), batch 32, fp32;
  - ``fp32``/``bf16``: today's step (``Decoder.forward``, fused Adam), batch 32 and 64, without and under bf16
    autocast. The baseline and today's step alternate step by step, so load drift hits both alike.
  - MFU: the model's FLOPs per second divided by the measured throughput of a 2048×2048 matrix product of the
    same dtype, in this process, on the same threads. FLOPs are counted from the layer shapes
    (:func:`training_flops`): 2 per multiply-add of every matrix product, the backward pass twice the forward
    except where one input needs no gradient (the key projection U a_i, h_0 and c_0 of the mean annotation
    vector, and the context read Σ_i α_i a_i: the annotation vectors are inputs), elementwise work not counted.
    ``tests/test_benchmark.py`` checks the count against ``torch.utils.flop_counter``.
* **encoder**: the frozen encoders, EfficientNet-Lite0 at 224 px and Lite2 at 260 px, batch 32, in images/s:
  ``plain``, the PyPI model's own ``extract_features`` run eagerly; ``folded``, showattend's trunk (batch norms
  folded into the convolutions, channels-last; the annotation vectors within 1e-5 relative); ``folded_bf16``,
  the same under bf16 autocast (its largest relative deviation is reported). The variants alternate round by
  round. GFLOP per image from ``torch.utils.flop_counter`` (a multiply-add counts 2), and the folded trunk's
  share of the fp32 2048×2048 matrix product's speed. With ``../shared/data/flickr8k`` present, also end to end
  on 100 Flickr8k photos: ``caption`` (the bundled captioner: read, encode, beam 3) as it was (images read one
  by one in the process, the plain encoder) and as it is (read in a worker process while the batch before is
  encoded, the folded encoder), the encoder's own time on the same images, and the feature-cache build of the
  same 100 images before and after.
* **decode**: images/s of beam 3 (and greedy), 50 images per batch, 13 steps, at each grid of ``--shapes``:
  - ``anchor_per_image``: the per-image loop of the most used public implementation (sgrvinod's tutorial),
    driving showattend's decoder step (``scripts/decode_baselines.py``);
  - ``baseline_0.5``: showattend's search before it moved onto the device, kept in the same run for the ratio;
  - ``fp32``/``bf16``: today's :meth:`Captioner.decode`, and with ``precision="bf16"``.
  The variants alternate batch by batch (``--repeat``/2 rounds after a warm-up round). ``beam3_mfu``: each of
  today's beam-3 searches' FLOPs per second (:func:`decode_flops`, counted as for training) over the
  2048×2048 product's in its dtype: the share of this machine's matrix-product speed it reaches.
  With ``--compiled-decode``, also ``fp32_compiled``/``bf16_compiled``: the same searches with the captioner's
  step function under ``torch.compile`` (inductor fuses the score's elementwise work and the LSTM cell's), the
  seconds its first call took to compile, and how many of the 50 fp32 captions equal the eager search's.
* **attention**: 20 attention steps with the keys projected once vs at every step.
* **scst**: one self-critical step (``train --scst``: 16 images x 5 samples, 49×1280) in its three parts, in ms:
  sampling the 80 captions (no gradients), their CIDEr-D rewards against a corpus of 6,000 images x 5 references
  (random words, 8 to 15 each) and the teacher-forced forward + backward + Adam on the samples; and the reward's
  share of the step. The untrained decoder's <end> is made improbable, so every sample runs 16 tokens (a trained
  model's are shorter: the other parts are upper bounds).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # decode_baselines.py

from decode_baselines import literal_score  # noqa: E402
from showattend.captioning.data import collate_captions  # noqa: E402
from showattend.captioning.network import Decoder, reference_forward  # noqa: E402
from showattend.captioning.losses import caption_loss  # noqa: E402
from showattend.captioning.encoders import Encoder  # noqa: E402
from showattend.captioning.captioner import Captioner  # noqa: E402
from showattend.captioning.config import ModelConfig
from showattend.captioning.vocab import Vocab  # noqa: E402

V, M, N, A = 2539, 512, 512, 512  # vocabulary, embedding m, LSTM n, attention A


def timed(fn, repeat, warmup=1, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def matmul_peak(dtype, device, sync) -> float:
    """GFLOP/s of a 2048×2048 @ 2048×2048 product."""
    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    return 2 * 2048 ** 3 / timed(lambda: a @ b, 5, sync=sync) / 1e9


def matmul_peaks(device, sync, out) -> dict:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s} of :func:`matmul_peak`, measured once per run (kept in ``out``)."""
    if "matmul_2048_gflops" not in out:
        out["matmul_2048_gflops"] = {p: round(matmul_peak(dt, device, sync), 1)
                                     for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return out["matmul_2048_gflops"]


def training_flops(lengths, L: int, D: int) -> float:
    """FLOPs of one training step of the decoder (see the module docstring for what is counted)."""
    B, T = len(lengths), max(lengths)
    tokens = sum(n - 1 for n in lengths)  # predicted words, <end> included
    positions = B * (T - 1)  # the word gates and the deep output are computed at padded positions too
    # key projection, h_0 and c_0 (of the mean annotation vector), context read: backward once
    inputs_only = B * L * D * A + 2 * B * D * N + tokens * L * D
    full = (positions * M * 4 * N  # word part of the LSTM input
            + tokens * (N * (A + 1 + 4 * N) + D * 4 * N + L * A)  # products of h_{t-1}, of ẑ_t, the score v
            + positions * (N * M + D * M + M * V))  # deep output
    return 2 * (3 * full + 2 * inputs_only)


def decode_flops(L: int, D: int, k: int, steps: int) -> float:
    """FLOPs per image of :meth:`Captioner.decode` (beam ``k``, every beam run for ``steps`` steps), counted as
    in :func:`training_flops`: the key projection and h_0, c_0 once per image; per beam and step the products of
    h_{t-1} (attention query, β, W_hh), of ẑ_t (W_z), the score v, the context read and the deep output. The
    word part of the LSTM input is a table lookup (no product)."""
    per_step = N * (A + 1 + 4 * N) + D * 4 * N + L * A + L * D + N * M + D * M + M * V
    return 2 * (L * D * A + 2 * D * N + k * steps * per_step)


def make_batch(B: int, L: int, D: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, L, D, generator=g)
    batch = [(feats[i], torch.tensor([1] + torch.randint(4, V, (int(torch.randint(8, 13, (1,), generator=g)),),
                                                         generator=g).tolist() + [2])) for i in range(B)]
    f, caps, lengths = collate_captions(batch)
    return f.to(device), caps.to(device), lengths.tolist()


def train_steps(L: int, D: int, B: int, device, precision: str, baseline: bool = False):
    """A training step closure (fresh decoder and optimizer) and the batch's FLOPs."""
    torch.manual_seed(0)
    dec = Decoder(V, D, M, N, A).to(device)
    f, caps, lengths = make_batch(B, L, D, device)
    fused = not baseline and device.type in ("cpu", "cuda")
    opt = torch.optim.Adam(dec.parameters(), 4e-4, fused=fused)
    forward = (lambda: reference_forward(dec, f, caps, lengths)) if baseline else (lambda: dec(f, caps, lengths))

    def step():
        # the step before 0.5 computed the additive score with torch.tanh
        with literal_score() if baseline else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = caption_loss(forward(), caps)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step, training_flops(lengths, L, D)


def bench_train(device, sync, out, repeat: int, shapes):
    peak = matmul_peaks(device, sync, out)
    for L, D in shapes:
        shape, reps = f"{L}x{D}", repeat if L == 49 else max(2, repeat // 2)
        res = out.setdefault("train", {}).setdefault(shape, {})
        for B in (32, 64):
            runs = {p: train_steps(L, D, B, device, p) for p in ("fp32", "bf16")}
            if B == 32:
                runs["baseline"] = train_steps(L, D, B, device, "fp32", baseline=True)
            spent = dict.fromkeys(runs, 0.0)
            for step, _ in runs.values():
                step()  # warm-up
            for _ in range(reps):  # alternate, so that load drift hits every variant alike
                for name, (step, _) in runs.items():
                    sync()
                    t0 = time.perf_counter()
                    step()
                    sync()
                    spent[name] += time.perf_counter() - t0
            for name, (_, flops) in runs.items():
                s = spent[name] / reps
                dtype = "bf16" if name == "bf16" else "fp32"
                res[f"{name}_batch{B}"] = {"captions_per_s": round(B / s, 1),
                                           "gflop_per_step": round(flops / 1e9, 2),
                                           "mfu": round(flops / s / 1e9 / peak[dtype], 3)}
            print(shape, B, json.dumps(res), file=sys.stderr, flush=True)
        base = res["baseline_batch32"]["captions_per_s"]
        res["ratio_to_baseline_batch32"] = {p: round(res[f"{p}_batch32"]["captions_per_s"] / base, 2)
                                            for p in ("fp32", "bf16")}


def bench_encoder(device, sync, out, rounds: int = 3):
    """The encoder section (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    peak = matmul_peaks(device, sync, out)["fp32"]
    for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite2", 260)):
        enc = Encoder(name).to(device).eval()
        images = torch.rand(32, 3, size, size, device=device)
        normed = (images - enc.mean) / enc.std

        def bf16():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return enc.trunk(images)

        variants = {"plain": lambda: enc.net.extract_features(normed), "folded": lambda: enc.trunk(images),
                    "folded_bf16": bf16}
        times = {k: 0.0 for k in variants}
        with torch.no_grad():
            ref = enc.trunk(images, folded=False)
            dev16 = float((bf16().float() - ref).abs().max() / ref.abs().max())
            for f in variants.values():  # warm-up
                f()
            for _ in range(rounds):
                for k, f in variants.items():
                    times[k] += timed(f, 1, warmup=0, sync=sync)
            with FlopCounterMode(display=False) as fc:
                enc.trunk(images[:1])
        gflop = fc.get_total_flops() / 1e9
        ips = {k: round(32 * rounds / t, 1) for k, t in times.items()}
        out[f"encoder_{name}"] = {"image_size": size, "images_per_s": ips,
                                  "folded_vs_plain": round(ips["folded"] / ips["plain"], 2),
                                  "bf16_vs_plain": round(ips["folded_bf16"] / ips["plain"], 2),
                                  "bf16_max_rel_deviation": round(dev16, 4), "gflop_per_image": round(gflop, 3),
                                  "folded_share_of_fp32_matmul_peak": round(ips["folded"] * gflop / peak, 3)}
    bench_end_to_end(device, out, sync)


def bench_end_to_end(device, out, sync, n: int = 100):
    """``caption`` on n Flickr8k photos and the feature-cache build of the same photos, as they were and as they
    are (skipped without ../shared/data/flickr8k)."""
    import shutil
    import tempfile

    from showattend.captioning.cache_build import build_feature_cache
    from showattend.captioning.images import load_image

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                          "flickr8k", "images")
    if not os.path.isdir(folder):
        out["end_to_end"] = "skipped: no ../shared/data/flickr8k/images"
        return
    names = sorted(os.listdir(folder))[:n]
    paths = [os.path.join(folder, f) for f in names]
    cap = Captioner.from_pretrained("flickr8k-lite2-soft", device=device)
    enc, size = cap.encoder, cap.config.image_size
    folded = enc._folded
    res = {}

    def caption_before():  # as it was: read every image in the process, then the plain encoder, batches of 16
        enc._folded = None
        try:
            good = [load_image(p, size) for p in paths]
            for i in range(0, n, 16):
                with torch.no_grad():
                    cap.decode(enc(torch.stack(good[i:i + 16]).to(device)), beam_size=3)
        finally:
            enc._folded = folded

    def caption_after():
        for _ in cap.caption_stream(paths, batch_size=16, beam_size=3):
            pass

    batch = torch.stack([load_image(p, size) for p in paths]).to(device)
    with torch.no_grad():
        res["encoder_only_s"] = round(timed(lambda: [enc(batch[i:i + 16]) for i in range(0, n, 16)], 1,
                                            sync=sync), 2)
    res["caption_before_s"] = round(timed(caption_before, 1, warmup=0), 2)
    res["caption_after_s"] = round(timed(caption_after, 1, warmup=0), 2)
    res["caption_after_vs_encoder_only"] = round(res["caption_after_s"] / res["encoder_only_s"], 2)
    tmp = tempfile.mkdtemp()
    try:
        for when in ("before", "after"):
            enc._folded = None if when == "before" else folded
            t0 = time.perf_counter()
            build_feature_cache(enc, folder, names, os.path.join(tmp, when), batch_size=32, num_workers=1,
                                device=str(device), progress=False, image_size=size)
            res[f"cache_build_{when}_images_per_s"] = round(n / (time.perf_counter() - t0), 1)
    finally:
        enc._folded = folded
        shutil.rmtree(tmp)
    out[f"end_to_end_{n}_flickr8k_photos"] = res


def bench_other(device, sync, out, sections):
    if "encoder" in sections:
        bench_encoder(device, sync, out)
    dec = Decoder(V, 1280).to(device)
    if "attention" in sections:  # key projection once per image vs at every step (20 steps, 150 rows)
        att = dec.attention
        a = torch.randn(150, 49, 1280, device=device)
        h = torch.randn(150, 512, device=device)
        with torch.no_grad():
            once = timed(lambda: [att(h, keys, a) for keys in [att.project_keys(a)] for _ in range(20)], 3, sync=sync)
            every = timed(lambda: [att(h, att.project_keys(a), a) for _ in range(20)], 3, sync=sync)
        out["attention_20_steps_ms_keys_once"] = round(1000 * once, 1)
        out["attention_20_steps_ms_keys_every_step"] = round(1000 * every, 1)


def bench_decode(device, sync, out, repeat: int, shapes, compiled: bool = False):
    """Beam 3, 50 images, 13 steps: the per-image anchor, showattend 0.5's search, today's fp32 and bf16,
    alternating image batch by image batch; greedy for today's."""
    from decode_baselines import old_decode, per_image_decode

    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(V - 4)])
    for L, D in shapes:
        torch.manual_seed(0)
        dec = Decoder(V, D).to(device)
        cap = Captioner(dec, vocab, ModelConfig(), device=device)
        with torch.no_grad():  # untrained weights: make <end> improbable so that every caption runs all 13 steps
            dec.L_o.bias[vocab.end] = -30
        x = torch.randn(50, L, D, device=device)
        variants = {
            "anchor_per_image": lambda: per_image_decode(cap, x, 3, 13),
            "baseline_0.5": lambda: old_decode(cap, x, 3, 13),
            "fp32": lambda: cap.decode(x, beam_size=3, max_len=13),
            "bf16": lambda: cap.decode(x, beam_size=3, max_len=13, precision="bf16"),
            "greedy_fp32": lambda: cap.decode(x, beam_size=1, max_len=13),
            "greedy_bf16": lambda: cap.decode(x, beam_size=1, max_len=13, precision="bf16"),
        }
        res = {}
        if compiled:  # a second captioner on the same decoder, its step function compiled (one graph per dtype)
            fast = Captioner(dec, vocab, ModelConfig(), device=device)
            fast._step = torch.compile(fast._step, dynamic=False)
            for prec in ("fp32", "bf16"):
                t0 = time.perf_counter()
                fast.decode(x, beam_size=3, max_len=13, precision=prec)
                res[f"compile_{prec}_s"] = round(time.perf_counter() - t0, 1)
            same = zip(fast.decode(x, beam_size=3, max_len=13), cap.decode(x, beam_size=3, max_len=13))
            res["compiled_fp32_same_captions"] = sum(a.words == b.words for a, b in same)
            variants["fp32_compiled"] = lambda: fast.decode(x, beam_size=3, max_len=13)
            variants["bf16_compiled"] = lambda: fast.decode(x, beam_size=3, max_len=13, precision="bf16")
        seconds = {k: 0.0 for k in variants}
        for r in range(repeat + 1):  # the first round warms up
            for k, fn in variants.items():
                s = timed(fn, 1, warmup=0, sync=sync)
                if r:
                    seconds[k] += s
        res.update({f"{k}_images_per_s": round(50 * repeat / v, 1) for k, v in seconds.items()})
        beam3 = [k for k in seconds if k in ("fp32", "bf16", "fp32_compiled", "bf16_compiled")]
        res["beam3_ratio_to_anchor"] = {k: round(seconds["anchor_per_image"] / seconds[k], 2)
                                        for k in ["baseline_0.5"] + beam3}
        res["beam3_ratio_to_baseline"] = {k: round(seconds["baseline_0.5"] / seconds[k], 2) for k in beam3}
        # the share of the matrix-product peak each of today's beam-3 searches reaches (its FLOPs per second
        # over the 2048x2048 product's in the same dtype): how far the hardware leaves it to go
        peak, flops = matmul_peaks(device, sync, out), decode_flops(L, D, 3, 13)
        res["beam3_gflop_per_image"] = round(flops / 1e9, 3)
        res["beam3_mfu"] = {k: round(flops * 50 * repeat / seconds[k] / 1e9 / peak["bf16" if "bf16" in k else "fp32"],
                                     3) for k in beam3}
        out[f"decode_{L}x{D}"] = res


def bench_scst(device, sync, out):
    import functools

    from showattend.captioning.cider import CiderD
    from showattend.captioning.losses import scst_loss, self_critical_baseline
    from showattend.search import sample_search

    g = torch.Generator().manual_seed(0)
    refs = [[torch.randint(4, V, (int(torch.randint(8, 16, (1,), generator=g)),), generator=g).tolist()
             for _ in range(5)] for _ in range(6000)]
    cider = CiderD(refs, V, device=device)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(V - 4)])
    dec = Decoder(V, 1280).to(device)
    cap = Captioner(dec, vocab, ModelConfig(), device=device)
    with torch.no_grad():
        dec.L_o.bias[vocab.end] = -30
    opt = torch.optim.Adam(dec.parameters(), lr=5e-5, fused=device.type in ("cpu", "cuda"))
    banned = torch.zeros(V, dtype=torch.bool, device=device)
    banned[:2] = True
    banned[3] = True
    x = torch.randn(16, 49, 1280, device=device)
    images = torch.randint(0, 6000, (16,), device=device).repeat_interleave(5)
    parts = {"sample": 0.0, "reward": 0.0, "train": 0.0}

    def step():
        t0 = time.perf_counter()
        with torch.no_grad():
            dec.eval()
            fn = functools.partial(cap._step, banned=banned, weights=dec.step_weights())
            tokens, lengths = sample_search(fn, dec.init_state(x), (x, dec.attention.project_keys(x)), 1, 2, 16, 5)
            sync()
            t1 = time.perf_counter()
            reward = cider(tokens, lengths, images).float()
            baseline = self_critical_baseline(reward.view(16, 5)).reshape(-1)
            sync()
        t2 = time.perf_counter()
        captions = torch.cat([torch.ones(80, 1, dtype=torch.long, device=device), tokens], 1)
        o = dec(x.repeat_interleave(5, 0), captions, [int(n) + 1 for n in lengths.tolist()])
        loss, _ = scst_loss(o.logits, captions[:, 1:], o.mask, reward, baseline, banned)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k] += v

    step()
    parts.update({k: 0.0 for k in parts})
    n = 5
    for _ in range(n):
        step()
    res = {f"{k}_ms": round(1000 * v / n, 1) for k, v in parts.items()}
    res["reward_share_of_step"] = round(parts["reward"] / sum(parts.values()), 4)
    out["scst_step_16x5"] = res


def main():
    global V
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--only", default="train,encoder,decode,attention,scst", help="comma-separated sections")
    ap.add_argument("--shapes", default="49x1280,196x2048", help="LxD grids of the training and decode sections")
    ap.add_argument("--repeat", type=int, default=6, help="training steps timed per variant at 49x1280")
    ap.add_argument("--vocab-size", type=int, default=V, help="V (2539: Flickr8k's; COCO's is about 10,000)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--compiled-decode", action="store_true",
                    help="decode section: also time the search with its step under torch.compile")
    args = ap.parse_args()
    V = args.vocab_size
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    sections = set(args.only.split(","))
    out = {"device": str(dev), "vocab_size": V, "cpu": cpu_name(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    if "train" in sections:
        bench_train(dev, sync, out, args.repeat, [tuple(map(int, x.split("x"))) for x in args.shapes.split(",")])
    bench_other(dev, sync, out, sections)
    if "decode" in sections:
        bench_decode(dev, sync, out, max(1, args.repeat // 2),
                     [tuple(map(int, x.split("x"))) for x in args.shapes.split(",")], args.compiled_decode)
    if "scst" in sections:
        bench_scst(dev, sync, out)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
