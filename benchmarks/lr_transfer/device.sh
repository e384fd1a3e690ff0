#!/usr/bin/env bash
# One call of the learning-rate-transfer experiment (issue 6) on a lent GPU machine, from the repo root:
#   bash benchmarks/lr_transfer/device.sh STEPS UNTIL
# Installs mudelta (no deps: the image has them), prepares the BPE data (deterministic), checks the kernels
# at the experiment's head dims (each in its own process: an illegal access poisons a CUDA context), then
# runs the grid in the order that is most useful if time runs out: the base width (muP only: SP is the same
# model there), the largest width, then the rest; meanwhile one width-1024 trial alone on the last GPU
# gives the throughput figure. Stops UNTIL seconds after the start; finished trials are in
# benchmarks/lr_transfer/results.jsonl (a later call with the same STEPS skips them), copied to $OUT.
# Environment: ALPHA=4 sets the readout's base-width multiplier (model.multipliers.readout, tune it at the
# base width first: cpu_ablation.md); MORE_TEXT=1 adds the torch package's Python source to the stdlib text.
set -uo pipefail
STEPS=${1:?steps}; UNTIL=${2:?seconds}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/lr_out}; mkdir -p "$OUT"
CFG=benchmarks/lr_transfer/config.yaml
M="python3 -m mudelta.runtime.cli"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader | uniq -c
SOURCES=()
if [ "${MORE_TEXT:-0}" = 1 ]; then
    SOURCES=("$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
             "$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')" --pattern '*.py')
fi
[ -f data/stdlib-bpe8k/header.json ] || $M data prepare "${SOURCES[@]}" --tokenizer bpe --vocab-size 8192 \
    --out data/stdlib-bpe8k --val-fraction 0.03 --quiet 2>&1 | tail -1
NGPU=$(nvidia-smi -L | wc -l); LAST=$((NGPU - 1))
i=0
for KV in "16 32 float32" "32 64 bfloat16" "64 128 bfloat16" "128 256 bfloat16"; do  # d_k, d_v at 128..1024
    set -- $KV
    CUDA_VISIBLE_DEVICES=$((i % NGPU)) python3 - "$1" "$2" "$3" >"$OUT/kcheck$1.log" 2>&1 <<'PY' &
import sys, torch
from mudelta.kernels import chunk_gated_delta_rule
from mudelta.kernels.testing import compare, make_inputs
K, V, dt = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
err = compare(chunk_gated_delta_rule, make_inputs(4, 512, 6, K, V, dt, "cuda", seed=K), scale=1.0)
ok = all(e < 0.02 for e in err.values())
print(f"kernel K={K} V={V} {sys.argv[3]}: " + " ".join(f"{n} {e:.1e}" for n, e in err.items()) + (" ok" if ok else " FAIL"))
sys.exit(0 if ok else 1)
PY
    i=$((i + 1))
done
fail=0; for j in 1 2 3 4; do wait -n || fail=1; done
for f in "$OUT"/kcheck*.log; do tail -n 1 "$f"; done
[ $fail = 0 ] || { echo "kernel check failed: no sweep"; exit 1; }
SET="--set train.steps=$STEPS --set train.warmup=$((STEPS / 10)) --set train.eval_every=$((STEPS / 4)) --set train.ckpt_every=0"
[ -n "${ALPHA:-}" ] && SET="$SET --set model.multipliers.readout=$ALPHA --set out=benchmarks/lr_transfer/alpha$ALPHA \
    --results benchmarks/lr_transfer/results.jsonl"
GPUS=$(seq -s, 0 $((LAST - 1)))
CUDA_VISIBLE_DEVICES=$LAST timeout $((UNTIL - SECONDS)) $M train $CFG --set model.width=1024 --set train.steps=80 \
    --set train.warmup=8 --set train.eval_every=1000 --set train.ckpt_every=0 --set train.lr=0.004 \
    --set out=runs/throughput1024 --quiet >"$OUT/throughput1024.log" 2>&1 &
sweep() {
    echo "sweep $* ($((UNTIL - SECONDS)) s left)"
    timeout $((UNTIL - SECONDS)) $M sweep $CFG --quiet $SET "$@" 2>&1 | grep -v "^\s*$" | tail -n 60
}
sweep --devices "$GPUS" --per-gpu 5 --set "sweep.widths=[128]" --set "sweep.parametrizations=[mup]"
wait
cp runs/throughput1024/result.json "$OUT/throughput1024.json" 2>/dev/null
sweep --per-gpu 3 --set "sweep.widths=[1024]"
sweep --per-gpu 4 --set "sweep.widths=[256,512]"
cp benchmarks/lr_transfer/results.jsonl "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" benchmarks/lr_transfer/trials/*/metrics.jsonl 2>/dev/null
ls "$OUT"
