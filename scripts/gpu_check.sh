#!/usr/bin/env bash
# The acceptance test of a GPU (at most 5 minutes on one): every check of scripts/gpu_check.py, one JSON summary,
# exit status 1 on any failure. On a CPU, --dry-run lists the checks and runs their CPU halves.
#
#   bash scripts/gpu_check.sh [--dry-run] [--json REPORT.json] [--only NAME,...] [--list]
#
# Uses $PYTHON (default: the checkout's .venv if there is one, else python3), which needs torch (a CUDA build on
# the GPU machine), the project's dependencies and pytest; nothing is downloaded.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
