#!/usr/bin/env bash
# One call of the learning-rate-transfer experiment (issue 6) on a lent GPU machine, from the repo root:
#   bash benchmarks/lr_transfer/device.sh STEPS UNTIL [GRID_SECONDS]
# Installs mudelta (no deps: the image has them) and prepares the BPE data (deterministic). With STEPS=0 it
# first checks the kernels at the experiment's head dims, times one trial per width alone on a GPU (the
# throughput figure) and picks STEPS so that the whole grid takes about GRID_SECONDS per GPU (plan.json).
# Then it runs the sweep until UNTIL seconds after the start: finished trials are appended to
# benchmarks/lr_transfer/results.jsonl (a later call with the same STEPS skips them) and copied to $OUT.
set -uo pipefail
STEPS=${1:?steps}; UNTIL=${2:?seconds}; GRID_SECONDS=${3:-0}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/lr_out}; mkdir -p "$OUT"
CFG=benchmarks/lr_transfer/config.yaml
M="python3 -m mudelta.runtime.cli"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -f data/stdlib-bpe8k/header.json ] || $M data prepare --tokenizer bpe --vocab-size 8192 --out data/stdlib-bpe8k --val-fraction 0.03 \
    --quiet 2>&1 | tail -2
NGPU=$(nvidia-smi -L | wc -l)
if [ "$STEPS" = 0 ]; then
    python3 - <<'PY'
import torch
from mudelta.kernels import chunk_gated_delta_rule
from mudelta.kernels.testing import compare, make_inputs
for K, V in ((16, 32), (32, 64), (64, 128), (128, 256)):  # d_k, d_v at widths 128..1024
    inp = make_inputs(2, 512, 6, K, V, torch.bfloat16, "cuda", seed=K)
    err = compare(chunk_gated_delta_rule, inp, scale=1.0)
    print(f"kernel K={K} V={V}: " + " ".join(f"{n} {e:.1e}" for n, e in err.items()), flush=True)
    assert all(e < 0.02 for e in err.values()), err
PY
    i=0
    for w in 1024 512 256 128; do
        CUDA_VISIBLE_DEVICES=$((i % NGPU)) timeout 400 $M train $CFG --set model.width=$w --set train.steps=60 \
            --set train.warmup=10 --set train.eval_every=1000 --set train.ckpt_every=0 --set train.lr=0.004 \
            --set out=runs/probe$w --quiet >"$OUT/probe$w.log" 2>&1 &
        i=$((i + 1)); [ $((i % NGPU)) = 0 ] && wait
    done
    wait
    python3 - "$NGPU" "$GRID_SECONDS" <<'PY'
import json, sys
from pathlib import Path
ngpu, budget = int(sys.argv[1]), float(sys.argv[2])
rows = {w: json.loads(Path(f"runs/probe{w}/result.json").read_text()) for w in (128, 256, 512, 1024)}
tokens_per_step = 32 * 512
for w, r in rows.items():
    print(f"width {w}: {r['tokens_per_s']:.0f} tokens/s, MFU {r.get('mfu') or 0:.3f}, "
          f"{r['flops_per_token'] / 1e9:.2f} GFLOP/token, val {r['final_val_loss']:.3f}")
per_step = sum(tokens_per_step / r["tokens_per_s"] for r in rows.values())  # one trial per width
trials_per_width = 7 * 2 * 2
steps = int(budget * ngpu / (per_step * trials_per_width))
print(f"plan: {steps} steps ({steps * tokens_per_step / 1e6:.1f}M tokens) per trial for {budget:.0f} s on {ngpu} GPUs")
json.dump({"steps": steps, "probe": rows}, open(f"{__import__('os').environ['OUT']}/plan.json", "w"), indent=1)
PY
    STEPS=$(python3 -c "import json; print(json.load(open('$OUT/plan.json'))['steps'])")
fi
WARM=$((STEPS / 10))
echo "sweep: $STEPS steps per trial, $((UNTIL - SECONDS)) s left in this call"
timeout $((UNTIL - SECONDS)) $M sweep $CFG --per-gpu 3 --set train.steps=$STEPS --set train.warmup=$WARM \
    --set train.eval_every=$((STEPS / 4)) --set train.ckpt_every=0 --quiet 2>&1 | tail -n 150
cp benchmarks/lr_transfer/results.jsonl "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" benchmarks/lr_transfer/trials/*/train.log benchmarks/lr_transfer/trials/*/metrics.jsonl 2>/dev/null
ls -la "$OUT"
