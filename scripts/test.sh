#!/usr/bin/env bash
# Install showattend (virtualenv in .venv, created if needed) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k search
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
python -m pytest -q -ra "$@"
