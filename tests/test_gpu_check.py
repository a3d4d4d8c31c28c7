"""scripts/gpu_check.py, the acceptance test of a GPU: its dry run on a CPU, its summary and its exit status."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gpu_check  # noqa: E402


def test_the_list_names_every_check():
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--list"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert names == [n for n, _, _ in gpu_check.CHECKS] and {"cpu_vs_cuda_training", "host_reads", "kill_resume",
                                                            "ddp", "speed", "loader"} <= set(names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_a_dry_run_runs_the_cpu_halves_and_writes_one_summary(tmp_path):
    report = tmp_path / "r.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--dry-run", "--json",
                        str(report), "--only", "env,cpu_vs_cuda_training,cpu_vs_cuda_beam,bf16_vs_fp32,speed"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    checks = json.loads(report.read_text())["checks"]
    assert [checks[n]["status"] for n in ("env", "cpu_vs_cuda_training", "cpu_vs_cuda_beam", "bf16_vs_fp32",
                                          "speed")] == ["ok", "skipped", "skipped", "ok", "ok"]
    assert "needs the GPU" in checks["cpu_vs_cuda_training"]["why"] and checks["speed"]["captions_per_s"] > 0
    assert checks["bf16_vs_fp32"]["loss_rel"] <= 2e-2


def test_a_failing_check_fails_the_run_and_the_summary_says_why(tmp_path, monkeypatch):
    def broken(ctx):
        raise AssertionError("3 != 4")

    def skipped(ctx):
        raise gpu_check.Skip("not here")

    monkeypatch.setattr(gpu_check, "CHECKS", [("a", "", skipped), ("b", "", broken)])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run", "--json", str(tmp_path / "r.json")])
    assert gpu_check.main() == 1
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["ok"] is False and summary["checks"]["b"] == {"status": "failed", "error": "AssertionError: 3 != 4",
                                                                 "s": summary["checks"]["b"]["s"]}
    monkeypatch.setattr(gpu_check, "CHECKS", [("a", "", skipped)])
    assert gpu_check.main() == 0  # skipped is not failed


def test_host_reads_fails_when_no_test_is_collected(tmp_path, monkeypatch):
    real = subprocess.run

    def no_tests(cmd, **kw):  # pytest's exit status when it collected nothing
        return subprocess.CompletedProcess(cmd, 5, "no tests ran in 0.01s\n", "")

    monkeypatch.setattr(gpu_check.subprocess, "run", no_tests)
    with pytest.raises(AssertionError, match="no tests collected"):
        gpu_check.host_reads(gpu_check.Ctx(True, tmp_path))
    monkeypatch.setattr(gpu_check.subprocess, "run", real)
