#!/usr/bin/env bash
# Install showattend (virtualenv in .venv, created if needed), caption the sample photos in assets/photos with
# the bundled Flickr8k model, and write one attention overlay per photo to runs/demo/.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
OUT="${1:-runs/demo}"
shopt -s nullglob
photos=(assets/photos/*.jpg assets/photos/*.png)
showattend caption "${photos[@]}" --beam-size 3 --attention-dir "$OUT"
echo "attention overlays written to $OUT/"
