#!/usr/bin/env bash
# More seeds of the AdamW sqrt(2) grid at 400 steps (issue 6, results.md "Seeds at 400 steps"), one device call:
#   bash benchmarks/lr_transfer/seeds.sh UNTIL
# Prepares py-bpe8k (the machine's site-packages and stdlib .py files; deterministic, the same tokens as
# py400q), then runs every JOB ("seed width lr[,lr...] [tag [--set ...]]") as its own `mudelta sweep` at once,
# muP, optimizer OPT (default adamw; sgd, sgd-nesterov), alpha 8, one norm eps, rows into
# DIR/s<seed>_w<width>[_<tag>]/results.jsonl (DIR default benchmarks/lr_transfer/py400seeds). EXTRA holds more
# --set overrides for every trial (e.g. "--set train.momentum_by_kind.input=0"), a job's own after its tag
# (they come later, so they win). Logs: OUT/logs.tar. CHECK=1 also runs the kernels' GPU check
# (benchmarks/kernels.py --check --skip-fp32 $KFLAGS, e.g. KFLAGS="--flag bwd_state.segment=1") beside them.
# Stops UNTIL seconds after the start.
set -uo pipefail
UNTIL=${1:?seconds}
JOBS=${JOBS:-"1 1024 0.0057;2 1024 0.0057;2 1024 0.008;1 128 0.004,0.0057,0.008;2 128 0.004,0.0057,0.008"}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
left() { local t=$((UNTIL - SECONDS)); echo $((t > 1 ? t : 1)); }  # timeout 0 would mean no limit
OUT=${OUT:-/tmp/seeds_out}; mkdir -p "$OUT/logs"
M="python3 -m mudelta.runtime.cli"; CFG=benchmarks/lr_transfer/config.yaml
OPT=${OPT:-adamw}; DIR=${DIR:-benchmarks/lr_transfer/py400seeds}
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
STD=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
[ -f data/py-bpe8k/header.json ] || $M data prepare --tokenizer bpe --vocab-size 8192 --pattern '*.py' \
    "$SP/sympy" "$SP/torch" "$SP/numpy" "$SP/networkx" "$STD" --out data/py-bpe8k --val-fraction 0.03 --quiet
echo "data ready at ${SECONDS}s"
if [ "${CHECK:-0}" = 1 ]; then
    timeout "$(left)" python3 benchmarks/kernels.py --check --skip-fp32 ${KFLAGS:-} --out "$OUT/kernels" \
        >"$OUT/kernels_check.log" 2>&1 &
fi
SET="--set data.path=data/py-bpe8k --set train.steps=400 --set train.warmup=40 --set train.eval_every=100
     --set train.ckpt_every=0 --set model.multipliers.readout=8 --set sweep.parametrizations=[mup]
     --set sweep.optimizers=[$OPT] ${EXTRA:-}"
IFS=';' read -ra LIST <<<"$JOBS"
for job in "${LIST[@]}"; do
    read -r seed width lrs tag extra <<<"$job"
    n=$(echo "$lrs" | tr ',' '\n' | wc -l); name=s${seed}_w$width${tag:+_$tag}
    # shellcheck disable=SC2086  # $SET and $extra are lists of --set words
    timeout "$(left)" $M sweep $CFG --quiet --per-gpu "$n" $SET --set train.seed="$seed" \
        --set "sweep.widths=[$width]" --set "sweep.lrs.$OPT=[$lrs]" --set out=$DIR/$name ${extra:-} \
        >"$OUT/logs/$name.log" 2>&1 &
done
sleep "$(( $(left) < 90 ? $(left) : 90 ))"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee "$OUT/nvidia_smi.txt"
wait
tar cf "$OUT/rows.tar" $DIR/*/results.jsonl
echo "done at ${SECONDS}s"; tail -n 3 "$OUT"/logs/*.log
tar cf "$OUT/logs.tar" -C "$OUT" logs && rm -r "$OUT/logs"
