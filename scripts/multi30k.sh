#!/usr/bin/env bash
# Train and evaluate the four Multi30k translators: De->En and En->De, each with the Bahdanau and the Luong
# decoder. Every run has a 3-hour wall-time budget (--max-minutes 180, counted across resumes) and continues from
# its last.pt when run again, so the script can be stopped and restarted. Two lanes, one thread each (a 2-core
# machine): the Luong lane trains De->En then En->De, and so does the Bahdanau lane. A test report newer than its
# best.pt is kept, not recomputed.
#
#   bash scripts/multi30k.sh [DATA_DIR] [OUT_DIR]      # defaults: ../shared/data/multi30k runs/mt
#   MULTI30K_LANES=bahdanau bash scripts/multi30k.sh   # one lane only
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
    echo "$(date -u +%FT%TZ) train ${resume[*]:-(new)}" >> "$OUT/$name.log"  # wall clock, for lost epochs
    showattend --threads 1 translate train --data "$DATA" --src "$1" --tgt "$2" --decoder "$3" \
        --max-minutes 180 --out-dir "$dir" --no-progress "${resume[@]}" >> "$OUT/$name.log" 2>&1
    if [[ -f "$OUT/${name}_test.json" && "$OUT/${name}_test.json" -nt "$dir/best.pt" ]]; then
        echo "$name: test report up to date"; return
    fi
    showattend --threads 1 translate evaluate --checkpoint "$dir/best.pt" --data "$DATA" --src "$1" --tgt "$2" \
        --split test_2016_flickr --beam-size 5 --translations-out "$OUT/${name}_test.txt" > "$OUT/${name}_test.json.tmp"
    mv "$OUT/${name}_test.json.tmp" "$OUT/${name}_test.json"
    echo "$name: $(python -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['BLEU'], r['chrF'])" \
        "$OUT/${name}_test.json") (BLEU, chrF on test_2016_flickr)"
}

lane() {  # decoder
    run de en "$1"
    run en de "$1"
}

pids=()
for decoder in ${MULTI30K_LANES:-luong bahdanau}; do
    lane "$decoder" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
