"""Fault tests: real ``showattend`` processes are SIGKILLed at many points (while caching features, inside an epoch,
while a checkpoint is being written, and at seeded random moments), then run again with ``--resume``. At the end
the interrupted run must equal the uninterrupted one: the same per-step losses, parameters and metrics (timing
fields aside), no duplicate rows, no stray files. 13 kills in all (asserted per test: 3 + 10)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import write_toy_images
from showattend.captioning.cache import FeatureStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_images(tmp_path_factory.mktemp("faults"), n=10, splits=(8, 10), size=48)


def _start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "showattend", *args], env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p, timeout=300):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _kill_when(p, predicate, timeout=120):
    """SIGKILL ``p`` as soon as ``predicate()`` holds; True if it was killed (False: it ended first)."""
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if predicate():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.005)
    p.wait()
    return p.returncode == -signal.SIGKILL


def _stray(folder):
    """Files a finished run or cache must not hold: temporary files, progress files, partial arrays."""
    return sorted(f for _, _, files in os.walk(folder) for f in files
                  if ".tmp." in f or f.startswith("progress") or f.endswith(".partial") or f == "running.json")


@pytest.mark.slow
def test_feature_caching_killed_three_times_resumes_to_the_uninterrupted_cache(toy, tmp_path):
    common = ["cache", "--data", str(toy / "dataset_toy.json"), "--images", str(toy / "images"), "--device", "cpu",
              "--batch-size", "2"]
    assert _finish(_start(common + ["--cache-dir", str(tmp_path / "ref")]))[0] == 0
    faulty = common + ["--cache-dir", str(tmp_path / "faulty")]
    kills = 0
    for row in (2, 6):  # after rows are written, before the progress file counts them (a crash between writes)
        kills += _finish(_start(faulty, env={"SHOWATTEND_KILL_AT_CACHE_ROW": str(row)}))[0] == -signal.SIGKILL
    p = _start(faulty)  # from outside, once the progress file says a batch is done
    kills += _kill_when(p, lambda: any(f.startswith("progress") for _, _, fs in os.walk(tmp_path / "faulty")
                                       for f in fs))
    assert kills == 3
    code, out, err = _finish(_start(faulty))
    assert code == 0, err
    ref, = (tmp_path / "ref").iterdir()
    got, = (tmp_path / "faulty").iterdir()
    a, b = FeatureStore(str(ref)), FeatureStore(str(got))
    assert a.meta == b.meta
    np.testing.assert_allclose(np.asarray(a.array, np.float32), np.asarray(b.array, np.float32), rtol=2e-3,
                               atol=2e-3)  # fp16 rounding of batches composed differently
    assert np.abs(np.asarray(b.array, np.float32)).reshape(10, -1).max(axis=1).min() > 0  # no unwritten row
    assert _stray(tmp_path / "faulty") == []


def _train_args(toy, out, cache):
    return ["train", "--data", str(toy / "dataset_toy.json"), "--images", str(toy / "images"), "--cache-dir",
            str(cache), "--out-dir", str(out), "--min-count", "1", "--batch-size", "4", "--epochs", "2",
            "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8", "--lr", "3e-3", "--patience", "9",
            "--val-beam-size", "1", "--no-progress", "--device", "cpu", "--log-every", "1", "--save-every", "1",
            "--resume"]


def _rows(path, drop=("train_s", "val_s", "captions_per_s")):
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in open(path)]


@pytest.mark.slow
def test_training_killed_ten_times_anywhere_resumes_to_the_uninterrupted_run(toy, tmp_path):
    """--resume in every launch (a folder without last.pt starts a new run). Kills: after steps 2 and 5 (fault
    hook), twice while a checkpoint is being written (the write is slowed so that the kill lands inside it), and
    at seeded random moments until 10 have landed."""
    cache = tmp_path / "cache"
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, out, err = _finish(_start(_train_args(toy, ref, cache)))
    assert code == 0, err
    args = _train_args(toy, run, cache)
    kills = 0
    for step in (2, 5):
        kills += _finish(_start(args, env={"SHOWATTEND_KILL_AT_STEP": str(step)}))[0] == -signal.SIGKILL
    for _ in range(2):
        p = _start(args, env={"SHOWATTEND_SLOW_SAVE_S": "2"})
        kills += _kill_when(p, lambda: any(".tmp." in f for f in os.listdir(run)))
    rng = random.Random(0)
    while kills < 10:
        p = _start(args)
        time.sleep(rng.uniform(0.5, 6.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        kills += p.returncode == -signal.SIGKILL
        if p.returncode == 0:  # the run finished before the kill: start it again from scratch
            for f in os.listdir(run):
                os.remove(run / f)
    assert kills == 10
    code, out, err = _finish(_start(args))
    assert code == 0, err
    assert _rows(run / "steps.jsonl") == _rows(ref / "steps.jsonl")  # every step once, the same losses
    assert [r["step"] for r in _rows(run / "steps.jsonl")] == list(range(1, 9))
    assert _rows(run / "metrics.jsonl") == _rows(ref / "metrics.jsonl")
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the raw validation scores and what the loop decided from them (metrics.jsonl rounds to 2 decimals)
    a, b = torch.load(ref / "last.pt", weights_only=True), torch.load(run / "last.pt", weights_only=True)
    for key in ("best_score", "bad_epochs", "scheduler"):
        assert a[key] == b[key], key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert _stray(run) == [] and _stray(cache) == []
