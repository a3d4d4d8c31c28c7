#!/usr/bin/env python
"""The acceptance test of a GPU: what a CPU cannot prove, checked in a few minutes on one CUDA device.

    python scripts/gpu_check.py [--json REPORT.json] [--dry-run] [--only NAME[,NAME]] [--list]

Every check prints one line and goes into one JSON summary; the exit status is 1 when any check fails (a test
run that collects nothing fails too). It needs torch, the project's dependencies and pytest (the checkout is
put on ``sys.path``); nothing is downloaded: the encoder of the image runs is a random-init EfficientNet-Lite0
written to a file, the data are toy images, toy parallel text and synthetic captions.

``--dry-run`` (on a machine without CUDA) lists every check and runs its CPU half: the CPU references of the
comparisons, the host-read tests on the CPU, the CLI runs on the CPU, gloo DDP; what needs the GPU is reported
as skipped. The tolerances, stated once here:

* CPU vs CUDA, fp32 (TF32 off): the training loss within 1e-5 relative; every gradient within 1e-4 of its
  tensor's largest magnitude; beam search (beam 3, 32 inputs): the same captions for all but at most one
  input (a near tie may fall either way), log-probabilities within 1e-3 where the captions agree;
* bf16 vs fp32 autocast on the device: loss within 2% relative; the gradients' cosine with fp32's ≥ 0.999 over
  all parameters together, ≥ 0.99 for each tensor of 100 elements or more;
* kill and resume: the resumed run's step losses and weights equal the uninterrupted run's, exactly on a CPU,
  within 1e-5 relative on CUDA (its atomic adds may sum in another order);
* DDP, 2 GPUs against 1 on the same global batches, dropout off: step losses within 1e-5 relative, weights
  within 1e-4 absolute after 5 steps of lr 4e-4 (the all-reduce sums in another order, and Adam moves a weight
  whose gradient is near zero by up to lr per step whatever its rounding: 6.6e-5 was seen on 2 gloo processes).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

#: dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s (no sparsity), by device name substring
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0, "GH200": 989.0,
                         "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
                         "RTX 4090": 165.0, "RTX 3090": 71.0, "B200": 2250.0}


class Skip(Exception):
    """The check (or this half of it) cannot run here; the message says why, ``figures`` what the half that
    ran measured."""

    def __init__(self, why: str, figures: dict = None):
        super().__init__(why)
        self.figures = figures or {}


CHECKS: List[Tuple[str, str, Callable]] = []


def check(name: str, what: str):
    def register(fn):
        CHECKS.append((name, what, fn))
        return fn
    return register


class Ctx:
    def __init__(self, dry: bool, work: Path):
        self.dry, self.work = dry, work
        self.device = torch.device("cpu" if dry else "cuda")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}

    def cli(self, args: List[str], env: Dict[str, str] = None, nproc: int = 1, timeout: int = 240):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(nproc)] if nproc > 1 else [sys.executable]
        return subprocess.run([*launcher, "-m", "showattend", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, cwd=self.work)

    def need_gpu(self, what: str, figures: dict = None):
        if self.dry:
            raise Skip(f"{what}: needs the GPU (dry run)", figures)


def _ok(p: subprocess.CompletedProcess, what: str):
    if p.returncode != 0:
        raise AssertionError(f"{what} exited {p.returncode}: {(p.stderr or p.stdout)[-800:]}")


# ---------------------------------------------------------------------------------------------------------
# The checks


@check("env", "torch, CUDA, the device, its bf16 support and datasheet peak")
def env(ctx: Ctx) -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if not ctx.dry:
        if not torch.cuda.is_available():
            raise AssertionError("torch sees no CUDA device (run with --dry-run on a CPU)")
        name = torch.cuda.get_device_name(0)
        out.update(device=name, gpus=torch.cuda.device_count(),
                   bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
                   datasheet_bf16_tflops=_peak(name))
    else:
        out.update(device="cpu (dry run)", cuda_available=torch.cuda.is_available())
    return out


def _peak(name: str):
    for key in sorted(DATASHEET_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return DATASHEET_BF16_TFLOPS[key]
    return None


def _decoder_case(B: int = 32, seed: int = 0):
    """A default-size decoder without dropout (Lite2's annotation vectors, 81 x 1408, V 2539) and a sorted
    caption batch."""
    from showattend.captioning.network import Decoder

    torch.manual_seed(seed)
    dec = Decoder(2539, 1408, dropout=0.0)  # no random masks: the runs compared draw none
    g = torch.Generator().manual_seed(seed + 1)
    lengths = sorted((int(n) for n in torch.randint(9, 16, (B,), generator=g)), reverse=True)
    caps = torch.zeros(B, lengths[0], dtype=torch.long)
    for i, n in enumerate(lengths):
        caps[i, 0], caps[i, 1:n - 1], caps[i, n - 1] = 1, torch.randint(4, 2539, (n - 2,), generator=g), 2
    return dec, torch.randn(B, 81, 1408, generator=g), caps, lengths


def _loss_grads(dec, feats, caps, lengths, device, bf16=False):
    from showattend.captioning.losses import caption_loss

    dec = dec.to(device).train()
    dec.zero_grad()
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        loss = caption_loss(dec(feats.to(device), caps.to(device), lengths), caps.to(device))[0]
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().float().cpu() for n, p in dec.named_parameters() if p.grad is not None}


@check("cpu_vs_cuda_training", "fp32 loss and gradients on the CPU and on CUDA, same weights and batch")
def cpu_vs_cuda_training(ctx: Ctx) -> dict:
    import copy

    dec, feats, caps, lengths = _decoder_case()
    ref_loss, ref = _loss_grads(copy.deepcopy(dec), feats, caps, lengths, torch.device("cpu"))
    out = {"cpu_loss": ref_loss}
    ctx.need_gpu("the CUDA half", out)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    loss, grads = _loss_grads(copy.deepcopy(dec), feats, caps, lengths, ctx.device)
    worst = max(float((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in ref.items())
    out.update(cuda_loss=loss, loss_rel=abs(loss - ref_loss) / abs(ref_loss), grad_rel_max=worst)
    assert out["loss_rel"] <= 1e-5 and worst <= 1e-4, out
    return out


@check("cpu_vs_cuda_beam", "beam search (beam 3) captions and log-probabilities on the CPU and on CUDA")
def cpu_vs_cuda_beam(ctx: Ctx) -> dict:
    from showattend.captioning.captioner import Captioner
    from showattend.captioning.config import ModelConfig
    from showattend.captioning.vocab import Vocab

    dec, feats, _, _ = _decoder_case()
    with torch.no_grad():  # peaked word distributions: a random decoder's are nearly flat, full of near ties
        dec.L_o.weight.mul_(30.0)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(2535)])
    cfg = ModelConfig(encoder="efficientnet_lite2", image_size=260)

    def run(device):
        cap = Captioner(dec, vocab, cfg, device=str(device))
        return [(r.text, r.log_prob) for r in cap.decode(feats, beam_size=3, max_len=16)]

    ref = run("cpu")
    out = {"inputs": len(ref), "cpu_mean_words": sum(len(t.split()) for t, _ in ref) / len(ref)}
    ctx.need_gpu("the CUDA half", out)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    got = run(ctx.device)
    same = [abs(a[1] - b[1]) for a, b in zip(ref, got) if a[0] == b[0]]
    out.update(same_captions=len(same), logprob_diff_max=max(same) if same else None)
    assert len(same) >= len(ref) - 1 and max(same) <= 1e-3, out
    return out


@check("bf16_vs_fp32", "bf16 autocast against fp32 on the device: loss and gradients")
def bf16_vs_fp32(ctx: Ctx) -> dict:
    import copy

    dec, feats, caps, lengths = _decoder_case()
    fp32_loss, fp32 = _loss_grads(copy.deepcopy(dec), feats, caps, lengths, ctx.device)
    bf16_loss, bf16 = _loss_grads(copy.deepcopy(dec), feats, caps, lengths, ctx.device, bf16=True)
    cos = torch.nn.functional.cosine_similarity
    whole = float(cos(torch.cat([g.flatten() for g in bf16.values()]), torch.cat([fp32[n].flatten() for n in bf16]),
                      dim=0))
    per_tensor = min(float(cos(g.flatten(), fp32[n].flatten(), dim=0)) for n, g in bf16.items() if g.numel() >= 100)
    out = {"device": str(ctx.device), "loss_rel": abs(bf16_loss - fp32_loss) / abs(fp32_loss),
           "grad_cos_all": whole, "grad_cos_min_per_tensor": per_tensor}
    assert out["loss_rel"] <= 2e-2 and whole >= 0.999 and per_tensor >= 0.99, out
    return out


@check("host_reads", "tests/test_reads.py: every path's host reads on its named list (CUDA: and CUDA's own "
                     "count of synchronisations)")
def host_reads(ctx: Ctx) -> dict:
    which = "cpu" if ctx.dry else "cuda"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", which,
                        str(ROOT / "tests" / "test_reads.py")], env=ctx.env, capture_output=True, text=True,
                       timeout=240, cwd=ROOT)
    tail = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-300:]
    if p.returncode == 5:
        raise AssertionError(f"no tests collected for -k {which}")
    assert p.returncode == 0 and " passed" in tail and "skipped" not in tail, tail
    return {"cases": which, "pytest": tail}


def _toy_images(ctx: Ctx) -> Path:
    root = ctx.work / "toy"
    if not (root / "dataset_toy.json").exists():
        from conftest import write_toy_images

        write_toy_images(root, n=24, splits=(20, 22), size=64)
        from showattend.captioning.encoders import Encoder

        torch.save(Encoder("efficientnet_lite0", pretrained=False).net.state_dict(), root / "lite0_random.pth")
    return root


def _caption_args(ctx: Ctx, out: str, *extra: str) -> List[str]:
    root = _toy_images(ctx)
    return ["train", "--data", str(root / "dataset_toy.json"), "--images", str(root / "images"), "--cache-dir",
            str(root / "cache"), "--out-dir", str(ctx.work / out), "--encoder-weights",
            str(root / "lite0_random.pth"), "--min-count", "1", "--batch-size", "8", "--embed-dim", "32",
            "--hidden-dim", "32", "--attention-dim", "16", "--val-beam-size", "1", "--no-progress", "--device",
            ctx.device.type, "--log-every", "1", "--patience", "9", *extra]


def _steps(path: Path) -> List[dict]:
    return [json.loads(x) for x in open(path / "steps.jsonl")]


@check("kill_resume", "a run killed by SIGKILL inside epoch 2 and resumed equals the uninterrupted run")
def kill_resume(ctx: Ctx) -> dict:
    args = lambda out: _caption_args(ctx, out, "--epochs", "2", "--save-every", "3")  # noqa: E731
    _ok(ctx.cli(args("kr_a")), "the uninterrupted run")
    p = ctx.cli(args("kr_b"), env={"SHOWATTEND_KILL_AT_STEP": "4"})
    assert p.returncode == -signal.SIGKILL, f"the killed run exited {p.returncode}"
    _ok(ctx.cli(args("kr_b") + ["--resume"]), "the resumed run")
    a, b = _steps(ctx.work / "kr_a"), _steps(ctx.work / "kr_b")
    tol = 0.0 if ctx.dry else 1e-5
    losses = max(abs(x["train_loss"] - y["train_loss"]) / max(abs(x["train_loss"]), 1e-12) for x, y in zip(a, b))
    pa = torch.load(ctx.work / "kr_a" / "last.pt", weights_only=True)["model"]
    pb = torch.load(ctx.work / "kr_b" / "last.pt", weights_only=True)["model"]
    weights = max(float((pa[k].float() - pb[k].float()).abs().max() / pa[k].float().abs().max().clamp_min(1e-12))
                  for k in pa if pa[k].is_floating_point())
    out = {"steps": len(a), "loss_rel_max": losses, "weight_rel_max": weights, "tolerance": tol}
    assert [x["step"] for x in a] == [x["step"] for x in b] and losses <= tol and weights <= tol, out
    return out


@check("apps", "a few steps each: hard attention, SCST, translation (cuDNN LSTM), fine-tuning, --from-images, "
               "--compile")
def apps(ctx: Ctx) -> dict:
    from toys import write_toy_parallel

    runs = {"hard": ["--attention", "hard"], "finetune": ["--fine-tune-blocks", "1"],
            "from_images": ["--from-images", "--fine-tune-blocks", "1"], "compile": ["--compile"]}
    out = {}
    for name, extra in runs.items():
        t0 = time.perf_counter()
        _ok(ctx.cli(_caption_args(ctx, f"app_{name}", "--epochs", "1", "--max-steps", "4", *extra)), name)
        out[name] = {"s": round(time.perf_counter() - t0, 1), "last_loss": _steps(ctx.work / f"app_{name}")[-1]
                     ["train_loss"]}
    t0 = time.perf_counter()
    _ok(ctx.cli(_caption_args(ctx, "app_scst", "--scst", "--init", str(ctx.work / "app_hard" / "best.pt"),
                              "--epochs", "1", "--max-steps", "3", "--batch-size", "4", "--scst-samples", "2")),
        "scst")
    out["scst"] = {"s": round(time.perf_counter() - t0, 1)}
    write_toy_parallel(ctx.work / "mt")
    t0 = time.perf_counter()
    _ok(ctx.cli(["translate", "train", "--data", str(ctx.work / "mt"), "--out-dir", str(ctx.work / "app_mt"),
                 "--vocab-size", "40", "--embed-dim", "16", "--encoder-hidden", "16", "--decoder-hidden", "32",
                 "--attention-dim", "16", "--batch-size", "12", "--epochs", "1", "--no-progress", "--device",
                 ctx.device.type, "--log-every", "1"]), "translation")
    out["translation"] = {"s": round(time.perf_counter() - t0, 1),
                          "last_loss": _steps(ctx.work / "app_mt")[-1]["train_loss"]}
    assert all(v.get("last_loss", 0) == v.get("last_loss", 0) for v in out.values()), out  # no NaN
    return out


@check("ddp", "torchrun over 2 GPUs against 1 process on the same global batches (dry run: 2 gloo processes)")
def ddp(ctx: Ctx) -> dict:
    if not ctx.dry and torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU: needs 2")
    args = lambda out: _caption_args(ctx, out, "--epochs", "1", "--batch-size", "8", "--dropout", "0")  # noqa: E731
    _ok(ctx.cli(args("ddp_1")), "1 process")
    _ok(ctx.cli(args("ddp_2"), nproc=2), "2 processes")
    pa = torch.load(ctx.work / "ddp_1" / "last.pt", weights_only=True)["model"]
    pb = torch.load(ctx.work / "ddp_2" / "last.pt", weights_only=True)["model"]
    worst = max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa if pa[k].is_floating_point())
    a, b = _steps(ctx.work / "ddp_1"), _steps(ctx.work / "ddp_2")
    losses = max(abs(x["train_loss"] - y["train_loss"]) / abs(x["train_loss"]) for x, y in zip(a, b))
    out = {"processes": 2, "backend": "gloo" if ctx.dry else "nccl", "steps": len(a), "weight_abs_max": worst,
           "loss_rel_max": losses}
    assert len(a) == len(b) > 0 and worst <= 1e-4 and losses <= 1e-5, out
    return out


@check("speed", "training captions/s (bf16, batch 64, length-grouped Flickr8k-like captions, 81 x 1408) and MFU "
                "against the datasheet's bf16 peak")
def speed(ctx: Ctx) -> dict:
    from benchmark import training_flops

    from showattend.captioning.network import Decoder
    from showattend.captioning.losses import caption_loss

    torch.manual_seed(0)
    dec = Decoder(2539, 1408).to(ctx.device).train()
    opt = torch.optim.Adam(dec.parameters(), 4e-4, fused=True)
    B, steps = 64, (5 if ctx.dry else 50)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps + 3):
        n = int(torch.randint(9, 15, (1,), generator=g))  # a bucket: lengths within 2 tokens
        lengths = sorted((int(x) for x in torch.randint(n - 1, n + 2, (B,), generator=g)), reverse=True)
        caps = torch.randint(4, 2539, (B, lengths[0]), generator=g)
        batches.append((torch.randn(B, 81, 1408, generator=g).to(ctx.device), caps.to(ctx.device), lengths))
    flops, t0 = 0.0, None
    for i, (f, caps, lengths) in enumerate(batches):
        if i == 3:  # after three warm-up steps
            _sync(ctx.device)
            t0 = time.perf_counter()
        with torch.autocast(ctx.device.type, torch.bfloat16):
            loss = caption_loss(dec(f, caps, lengths), caps)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            flops += training_flops(lengths, 81, 1408)
    _sync(ctx.device)
    spent = time.perf_counter() - t0
    peak = None if ctx.dry else _peak(torch.cuda.get_device_name(0))
    out = {"captions_per_s": round(B * steps / spent, 1), "ms_per_step": round(1000 * spent / steps, 2),
           "tflops": round(flops / spent / 1e12, 4), "datasheet_bf16_tflops": peak,
           "mfu": round(flops / spent / 1e12 / peak, 4) if peak else None, "steps": steps}
    assert bool(loss.isfinite()), out
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@check("loader", "DataLoader captions/s from a synthetic feature cache, with the workers --num-workers -1 "
                 "chooses on this device, and with 0")
def loader(ctx: Ctx) -> dict:
    from showattend.captioning.cache import FeatureStore
    from showattend.captioning.config import TrainConfig
    from showattend.captioning.data import CaptionDataset, collate_captions
    from showattend.captioning.train import load_records
    from showattend.engine.config import resolve_num_workers
    from showattend.captioning.vocab import Vocab

    data = ctx.work / "synthetic"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "synthetic_data.py"), str(data), "--train", "2000",
                        "--val", "10", "--L", "81", "--D", "1408"], env=ctx.env, capture_output=True, text=True,
                       timeout=240)
    _ok(p, "synthetic_data.py")
    records = [r for r in load_records(TrainConfig(data=(str(data / "dataset_synthetic.json"),), images=""))
               if r.split == "train"]
    store = FeatureStore(str(next((data / "cache").glob("*"))))
    dataset = CaptionDataset(records, store, Vocab.build([t for r in records for t in r.tokens], 1), 40,
                             half=True)
    chosen = resolve_num_workers(-1, ctx.device)
    out = {"workers_chosen": chosen}
    for workers in sorted({0, chosen}):
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                                             collate_fn=collate_captions, pin_memory=ctx.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        next(it)  # the workers started
        t0, n = time.perf_counter(), 0
        for batch in it:
            n += batch[0].size(0)
        out[f"captions_per_s_{workers}_workers"] = round(n / (time.perf_counter() - t0), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="checks: " + ", ".join(n for n, _, _ in CHECKS))
    ap.add_argument("--json", default="gpu_check.json", help="the summary (default gpu_check.json)")
    ap.add_argument("--dry-run", action="store_true", help="on a CPU: list the checks and run their CPU halves")
    ap.add_argument("--only", default="", help="comma-separated check names")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args()
    if args.list:
        for name, what, _ in CHECKS:
            print(f"{name:22s} {what}")
        return 0
    only = set(filter(None, args.only.split(",")))
    unknown = only - {n for n, _, _ in CHECKS}
    if unknown:
        ap.error(f"unknown check(s): {', '.join(sorted(unknown))}")
    summary = {"dry_run": args.dry_run, "checks": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(args.dry_run, Path(tmp))
        for name, what, fn in CHECKS:
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            try:
                result = {"status": "ok", **fn(ctx)}
            except Skip as e:
                result = {"status": "skipped", "why": str(e), **e.figures}
            except Exception as e:  # noqa: BLE001 - every failure goes into the summary
                result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
            result["s"] = round(time.perf_counter() - t0, 1)
            summary["checks"][name] = result
            print(f"{result['status']:8s} {name:22s} {result['s']:6.1f} s  "
                  f"{result.get('error') or result.get('why') or ''}"[:300], flush=True)
    summary["total_s"] = round(time.perf_counter() - t_all, 1)
    summary["ok"] = all(r["status"] != "failed" for r in summary["checks"].values())
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"{'all passed' if summary['ok'] else 'FAILED'} in {summary['total_s']} s; summary: {args.json}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
