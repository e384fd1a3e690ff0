#!/usr/bin/env bash
# muP coordinate checks of the attention models at widths 1024-8192 on one GPU (issue 4), from the repo root:
#   bash benchmarks/coord/gpu_widths.sh   # writes $OUT/{CASE.json, log.txt} as each case ends, then $OUT/plots.tar
# The CPU run (benchmarks/coord_check.py) stops at 1024 (gdn) / 4096 (transformer); method.md says why the
# remaining misses need wider models (a crossover: the predicted term overtakes an n^-1/2 one only at ~1-2k).
# Same method as the CPU muP rows: base width 64, one sequence of 32 bytes, 3 steps, 3 seeds; models are
# initialised on the CPU, then run in float32 on the GPU (the recurrence on the chunked PyTorch path). CASES
# (default: the three whose CPU rows miss) run at the same time; the CPU init of the widest models dominates.
# PAR=sp runs the SP rows instead (BATCH=4 SEQ=64 gives the CPU SP rows' batch); STREAMS=N runs the cases in
# N parallel streams, one after the other within each (the widest SP models need ~40 GB each).
set -uo pipefail
OUT=${OUT:-/tmp/coord_gpu}; D=$(mktemp -d); mkdir -p "$OUT"
CASES=${CASES:-"gdn:adamw gdn:sgd transformer:adamw"}
PAR=${PAR:-mup}; BATCH=${BATCH:-1}; SEQ=${SEQ:-32}; STREAMS=${STREAMS:-0}
WIDTHS=${WIDTHS:-1024,2048,4096,8192}
M="python3 -m mudelta.runtime.cli coord-check"
COMMON="--widths $WIDTHS --base-width 64 --batch $BATCH --seq $SEQ --seeds 3 --device cuda --format json"
COMMON="$COMMON --quiet"  # stderr holds only warnings and errors
run() {  # run SPEC OPTIMIZER
    local name=$1_${PAR}_$2 t0=$SECONDS set=(--set layers=2)
    [ "$1" = mlp ] && set=()  # the MLP preset's own depth, as in the CPU rows
    $M "$1" --optimizer "$2" --parametrization "$PAR" "${set[@]}" $COMMON --plot "$D/$name.png" \
        >"$OUT/$name.json" 2>"$D/$name.err"
    echo "$name: rc $? in $((SECONDS - t0)) s; $(tail -c 300 "$D/$name.err")" | tee -a "$OUT/log.txt"
}
if [ "$STREAMS" -gt 0 ]; then  # case i goes to stream i mod STREAMS
    for s in $(seq 0 $((STREAMS - 1))); do
        (i=0; for c in $CASES; do [ $((i % STREAMS)) = "$s" ] && run "${c%%:*}" "${c##*:}"; i=$((i + 1)); done) &
    done
else
    for c in $CASES; do run "${c%%:*}" "${c##*:}" & done
fi
wait
python3 - "$OUT" <<'PY' | tee -a "$OUT/log.txt"
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        r = json.loads(f.read_text())
    except ValueError:
        print(f.stem, "no JSON (its error is in this log, above)"); continue
    bad = [n for n in r["nodes"] if not n["pass"]]
    print(f"{f.stem}: {len(r['nodes']) - len(bad)}/{len(r['nodes'])} pass;",
          ", ".join(f"{n['name']}@{n['step']} {n['measured']:+.2f} (pred {n['predicted']})" for n in bad) or "-")
PY
tar -C "$D" -cf "$OUT/plots.tar" .
