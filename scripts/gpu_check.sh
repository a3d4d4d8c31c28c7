#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine that has one; writes one JSON report.
#
#   bash scripts/gpu_check.sh [REPORT.json]        (default: gpu_check.json)
#
# 1. the CUDA cases of the device-parametrised tests (the sync counter and others; they skip on CPU-only CI);
# 2. a short training run in bf16 on synthetic Flickr8k-sized features (6,000 images x 5 captions, 49x1280),
#    without and with --compile, each capped at --max-steps (about 2 minutes on a small GPU); then 100 steps of
#    self-critical training (--scst) from the first;
# 3. scripts/benchmark.py --device cuda.
# Uses $PYTHON (default python3), which must have a CUDA torch, pytest and showattend's dependencies; this
# checkout is put on PYTHONPATH. GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (a dry run of the script).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT="$(realpath -m "${1:-gpu_check.json}")"
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
STEPS="${GPU_CHECK_STEPS:-400}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "gpu_check: torch sees no CUDA device" >&2; exit 1; }
fi
"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}))" > "$WORK/env.json"

echo "== 1. CUDA tests"
"$PY" -m pytest -q -ra -k "cuda" tests/ > "$WORK/pytest.log" 2>&1; echo $? > "$WORK/pytest.rc"
tail -n 3 "$WORK/pytest.log"

echo "== 2. training runs"
"$PY" scripts/synthetic_data.py "$WORK/data" --train 6000 --val 200 > /dev/null
for compile in no-compile compile; do
    "$PY" -m showattend train --data "$WORK/data/dataset_synthetic.json" --images "$WORK/data/images" \
        --cache-dir "$WORK/data/cache" --out-dir "$WORK/run_$compile" --device "$DEVICE" --precision bf16 \
        --min-count 1 --epochs 1 --max-steps "$STEPS" --val-images 100 --val-beam-size 1 --num-workers 2 \
        --log-every 50 --no-progress "--$compile" > "$WORK/train_$compile.log" 2>&1
    echo $? > "$WORK/train_$compile.rc"
    tail -n 2 "$WORK/train_$compile.log"
done

echo "== 2b. self-critical training from the first run (sampling, CIDEr-D and the update on the device)"
"$PY" -m showattend train --data "$WORK/data/dataset_synthetic.json" --images "$WORK/data/images" \
    --cache-dir "$WORK/data/cache" --out-dir "$WORK/run_scst" --device "$DEVICE" --precision bf16 --scst \
    --init "$WORK/run_no-compile/best.pt" --epochs 1 --max-steps 100 --val-images 100 --val-beam-size 1 \
    --log-every 25 --no-progress > "$WORK/train_scst.log" 2>&1
echo $? > "$WORK/train_scst.rc"
tail -n 2 "$WORK/train_scst.log"

echo "== 3. benchmark"
"$PY" scripts/benchmark.py --device "$DEVICE" --json "$WORK/bench.json" > "$WORK/bench.log" 2>&1
echo $? > "$WORK/bench.rc"

"$PY" - "$WORK" "$REPORT" <<'PY'
import json, os, sys
work, report = sys.argv[1:]
def read(name, default=None):
    p = os.path.join(work, name)
    return open(p).read() if os.path.exists(p) else default
out = {"env": json.loads(read("env.json", "{}")),
       "tests": {"rc": int(read("pytest.rc", "-1")), "tail": read("pytest.log", "")[-2000:]}}
for c in ("no-compile", "compile"):
    rows = [json.loads(x) for x in (read(f"run_{c}/metrics.jsonl", "") or "").splitlines() if x.strip()]
    out[f"train_bf16_{c}"] = {"rc": int(read(f"train_{c}.rc", "-1")), "epoch": rows[-1] if rows else None,
                              "log_tail": read(f"train_{c}.log", "")[-1500:]}
rows = [json.loads(x) for x in (read("run_scst/metrics.jsonl", "") or "").splitlines() if x.strip()]
out["train_scst_bf16"] = {"rc": int(read("train_scst.rc", "-1")), "epoch": rows[-1] if rows else None,
                          "log_tail": read("train_scst.log", "")[-1500:]}
out["benchmark"] = json.loads(read("bench.json", "null") or "null")
out["benchmark_rc"] = int(read("bench.rc", "-1"))
with open(report, "w") as f:
    json.dump(out, f, indent=2)
print(f"report: {report}")
ok = out["tests"]["rc"] in (0, 5) and all(out[f"train_bf16_{c}"]["rc"] == 0 for c in ("no-compile", "compile"))
sys.exit(0 if ok and out["benchmark_rc"] == 0 else 1)
PY
