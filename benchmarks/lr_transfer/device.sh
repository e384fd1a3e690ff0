#!/usr/bin/env bash
# One call of the learning-rate-transfer experiment (issue 6) on a lent GPU machine, from the repo root:
#   bash benchmarks/lr_transfer/device.sh STEPS UNTIL
# Installs mudelta (no deps: the image has them), checks the kernels at the experiment's head dims (each in its
# own process: an illegal access poisons a CUDA context) while it prepares the BPE data (deterministic), then:
#  1. tunes the readout's base-width multiplier (model.multipliers.$MULT, default readout; lm_head for an
#     untied model; KEY replaces the whole key, e.g. KEY=train.lr_multipliers.hidden) at the base width:
#     muP AdamW trials for every alpha in ALPHAS (default "2 4 8"), each alpha's trials under $TAG<A>/ (TAG
#     default alpha) with their own results.jsonl; picks the alpha of the lowest final validation loss
#     (cpu_ablation.md says why); a single alpha is taken as given, untuned;
#  2. runs the grid with that alpha: widths (largest first), mup and sp, for each optimizer in OPTS
#     (default "adamw sgd-nesterov"), into alpha<A>/results.jsonl.
# WIDTHS (space-separated) replaces the config's widths. SOURCES (paths) replaces the data's default source, the
# standard library, with those folders' *.py files, prepared into DATA (default data/stdlib-bpe8k). EXTRA holds more --set overrides for every trial (e.g. "--set model.options.tied=false").
# Works on any number of GPUs (PER_GPU trials share one). Stops UNTIL seconds after the start; a later call
# with the same STEPS skips the finished trials of the results files it is given back. Results go to $OUT.
set -uo pipefail
STEPS=${1:?steps}; UNTIL=${2:?seconds}
ALPHAS=${ALPHAS:-"2 4 8"}; OPTS=${OPTS:-"adamw sgd-nesterov"}; PER_GPU=${PER_GPU:-4}
MULT=${MULT:-readout}; KEY=${KEY:-model.multipliers.$MULT}; TAG=${TAG:-alpha}; EXTRA=${EXTRA:-}; DATA=${DATA:-data/stdlib-bpe8k}; SOURCES=${SOURCES:-}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/lr_out}; mkdir -p "$OUT"
CFG=benchmarks/lr_transfer/config.yaml
DIR=benchmarks/lr_transfer
M="python3 -m mudelta.runtime.cli"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { tail /tmp/pip.log; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader | uniq -c
PREP=(); [ -n "$SOURCES" ] && PREP=(--pattern '*.py' $SOURCES)
for KV in "16 32" "32 64" "64 128" "128 256"; do  # d_k, d_v at widths 128..1024
    set -- $KV
    python3 - "$1" "$2" >"/tmp/kcheck$1.log" 2>&1 <<'PY' &
import sys, torch
from mudelta.kernels import chunk_gated_delta_rule
from mudelta.kernels.testing import compare, make_inputs
K, V = int(sys.argv[1]), int(sys.argv[2])
err = compare(chunk_gated_delta_rule, make_inputs(4, 512, 6, K, V, torch.bfloat16, "cuda", seed=K), l2norm=True)
ok = all(e < 0.02 for e in err.values())
print(f"kernel K={K} V={V} bf16: " + " ".join(f"{n} {e:.1e}" for n, e in err.items()) + (" ok" if ok else " FAIL"))
sys.exit(0 if ok else 1)
PY
done
[ -f $DATA/header.json ] || $M data prepare --tokenizer bpe --vocab-size 8192 "${PREP[@]}" \
    --out $DATA --val-fraction 0.03 --quiet 2>&1 | tail -1
echo "data ready at ${SECONDS}s"
fail=0; for j in 1 2 3 4; do wait -n || fail=1; done
cat /tmp/kcheck*.log >"$OUT/kcheck.log"; for f in /tmp/kcheck*.log; do tail -n 1 "$f"; done
[ $fail = 0 ] || { echo "kernel check failed: no sweep"; exit 1; }
SET="--set data.path=$DATA --set train.steps=$STEPS --set train.warmup=$((STEPS / 10)) --set train.eval_every=$((STEPS / 4)) --set train.ckpt_every=0"
sweep() {  # sweep ALPHA ARGS...
    local a=$1; shift
    echo "sweep alpha $a $* ($((UNTIL - SECONDS)) s left)"
    timeout $((UNTIL - SECONDS)) $M sweep $CFG --quiet $SET --per-gpu "$PER_GPU" \
        --set "$KEY=$a" --set out=$DIR/$TAG"$a" $EXTRA "$@" 2>&1 | grep -v "^\s*$" | tail -n 40
}
# 1. alpha at the base width (all alphas at once: small models)
BASE=$(python3 -c "import yaml; print(yaml.safe_load(open('$CFG'))['model']['base_width'])")
set -- $ALPHAS; [ $# = 1 ] && ALPHAS_TUNED="" || ALPHAS_TUNED=$ALPHAS
for a in $ALPHAS_TUNED; do
    sweep "$a" --set "sweep.widths=[$BASE]" --set "sweep.parametrizations=[mup]" --set "sweep.optimizers=[adamw]" \
        >"/tmp/alpha$a.log" &
done
wait
[ -n "$ALPHAS_TUNED" ] && tail -n 3 /tmp/alpha*.log | tee "$OUT/alpha.log"
BEST=$(python3 - "$TAG" $ALPHAS <<'PY'
import json, sys
best = None
if len(sys.argv) == 3:
    print(sys.argv[2])
    sys.exit()
for a in sys.argv[2:]:
    try:
        rows = [json.loads(l) for l in open(f"benchmarks/lr_transfer/{sys.argv[1]}{a}/results.jsonl")]
    except OSError:
        continue
    for r in rows:
        if r.get("status") == "ok" and r.get("final_val_loss") is not None:
            best = min(best or (1e9, a), (r["final_val_loss"], a))
print(best[1] if best else "")
PY
)
[ -n "$BEST" ] || { echo "no alpha trial finished"; exit 1; }
echo "alpha $BEST at ${SECONDS}s"
# 2. the grid at that alpha, one optimizer after the other: the base width's sp trials, the largest width, the rest
WIDTHS=${WIDTHS:-$(python3 -c "import yaml; print(' '.join(map(str, yaml.safe_load(open('$CFG'))['sweep']['widths'])))")}
REST=$(echo $WIDTHS | tr ' ' '\n' | grep -vx "$BASE" | sort -n | head -n -1 | paste -sd,)
LARGEST=$(echo $WIDTHS | tr ' ' '\n' | sort -n | tail -n 1)
for opt in $OPTS; do
    sweep "$BEST" --set "sweep.optimizers=[$opt]" --set "sweep.widths=[$BASE,$LARGEST]"
    [ -n "$REST" ] && sweep "$BEST" --set "sweep.optimizers=[$opt]" --set "sweep.widths=[$REST]"
done
for a in $ALPHAS; do cp $DIR/$TAG"$a"/results.jsonl "$OUT/results_$TAG$a.jsonl" 2>/dev/null; done
echo "done at ${SECONDS}s"; ls "$OUT"
