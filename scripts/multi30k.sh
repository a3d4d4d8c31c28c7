#!/usr/bin/env bash
# Train and evaluate the four Multi30k translators: De->En and En->De, each with the Bahdanau and the Luong
# decoder. Every run has a 3-hour wall-time budget (--max-minutes 180, counted across resumes) and continues from
# its last.pt when run again, so the script can be stopped and restarted. Two runs at a time, one thread each
# (a 2-core machine).
#
#   bash scripts/multi30k.sh [DATA_DIR] [OUT_DIR]      # defaults: ../shared/data/multi30k runs/mt
#
# Per run: OUT_DIR/<src><tgt>_<decoder>/{best.pt,last.pt,metrics.csv}, a log OUT_DIR/<name>.log and the test
# report OUT_DIR/<name>_test.json (sacreBLEU BLEU and chrF on test_2016_flickr, beam 5, with signatures).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
DATA=${1:-../shared/data/multi30k}
OUT=${2:-runs/mt}
mkdir -p "$OUT"

run() {  # src tgt decoder
    local name="$1$2_$3" dir="$OUT/$1$2_$3" resume=()
    [[ -f "$dir/last.pt" ]] && resume=(--resume)
    showattend --threads 1 translate train --data "$DATA" --src "$1" --tgt "$2" --decoder "$3" \
        --max-minutes 180 --out-dir "$dir" --no-progress "${resume[@]}" >> "$OUT/$name.log" 2>&1
    showattend --threads 1 translate evaluate --checkpoint "$dir/best.pt" --data "$DATA" --src "$1" --tgt "$2" \
        --split test_2016_flickr --beam-size 5 --output "$OUT/${name}_test.txt" > "$OUT/${name}_test.json"
    echo "$name: $(python -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['BLEU'], r['chrF'])" \
        "$OUT/${name}_test.json") (BLEU, chrF on test_2016_flickr)"
}

for src_tgt in "de en" "en de"; do
    set -- $src_tgt
    run "$1" "$2" luong & a=$!
    run "$1" "$2" bahdanau & b=$!
    wait $a
    wait $b
done
