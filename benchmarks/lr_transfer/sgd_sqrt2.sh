#!/usr/bin/env bash
# SGD-Nesterov at alpha 4, momentum 0.9 on every group, 400 steps: the sqrt(2) grid around the optima of
# py400sgd128 (0.025) and py400sgd1024 (0.0125), seeds 0-2, and widths 256 and 512 between them
# (results.md, "SGD-Nesterov on a sqrt(2) grid"). One device call per STAGE:
#   bash benchmarks/lr_transfer/sgd_sqrt2.sh STAGE UNTIL
#   1024, 1024b: seeds 0-1 / seed 2 at 1024 (at most 5 width-1024 trials at once: each takes ~19 GB;
#                the session's first call ran all 8 at once and lost 3 to out-of-memory, re-run after)
#   128, mid:    seeds 0-2 at 128; seed 0 at 256 and 512
#   fill:        seeds 1-2 at 128, 256 and 512 where seed 0 trained
#   warm:        at warmup 100 (py400sgdwarm100), the edge divergences of seeds 0-2 again
#   warm2, warm3: at warmup 100, seed 0's grid extended at 128 and 1024 / at 128
#   warm4:       at warmup 100, seeds 0-2 filled in at 0.0177-0.0354 at 128 and 0.0177-0.025 at 1024
#   w200a, w200b: at warmup 200 (py400sgdwarm200), seeds 0-2 at 128 / at 1024 (W200B_JOBS, default below)
#   w200c:       at warmup 200, seeds 0-2 at 256 and 512
#   w200sp:      at warmup 200, SP (py400sgdwarm200sp) at 1024, seed 0 (at 128 SP and muP are one model)
# Seed 0's rows at 128 and 1024 go next to the earlier ones (s0_w<width>_a4), whose lrs are not run again.
# Logs and rows come back under $OUT/<stage>, so stages can run side by side in one call.
set -uo pipefail
STAGE=${1:?stage}; UNTIL=${2:?seconds}; D=benchmarks/lr_transfer
export OPT=sgd-nesterov OUT=${OUT:-/tmp/seeds_out}/$STAGE
case $STAGE in
1024) DIR=py400sgd1024 JOBS="0 1024 0.00884,0.0177;1 1024 0.00884,0.0125,0.0177" ;;
1024b) DIR=py400sgd1024 JOBS="2 1024 0.00884,0.0125,0.0177" ;;
128) DIR=py400sgd128 JOBS="0 128 0.0177,0.0354;1 128 0.0177,0.025,0.0354;2 128 0.0177,0.025,0.0354" ;;
mid) DIR=py400sgdmid JOBS="0 256 0.0125,0.0177,0.025;0 512 0.0125,0.0177,0.025" ;;
fill) DIR=py400sgdfill
      JOBS="1 128 0.00884,0.0125;2 128 0.00884,0.0125;0 128 0.00884;1 512 0.00884,0.0125;2 512 0.00884,0.0125"
      JOBS="$JOBS;1 256 0.0125,0.0177;2 256 0.0125,0.0177" ;;
warm) DIR=py400sgdwarm100
      JOBS="1 1024 0.0125;0 1024 0.0177;2 512 0.00884,0.0125;1 128 0.0177,0.025;2 128 0.025" ;;
warm2) DIR=py400sgdwarm100 JOBS="0 1024 0.025,0.0354;0 128 0.025,0.0354" ;;
warm3) DIR=py400sgdwarm100 JOBS="0 128 0.05,0.0707" ;;
warm4) DIR=py400sgdwarm100
       JOBS="0 128 0.0177;1 128 0.0354;2 128 0.0177,0.0354;1 1024 0.0177,0.025;2 1024 0.0177,0.025" ;;
w200a) DIR=py400sgdwarm200 JOBS="0 128 0.025,0.0354,0.05,0.0707;1 128 0.025,0.0354,0.05;2 128 0.025,0.0354,0.05" ;;
w200c) DIR=py400sgdwarm200
       JOBS="0 256 0.0354,0.05;1 256 0.0354,0.05;2 256 0.0354,0.05;0 512 0.025,0.0354,0.05;1 512 0.025,0.0354,0.05"
       JOBS="$JOBS;2 512 0.025,0.0354,0.05" ;;
w200sp) DIR=py400sgdwarm200sp JOBS="0 1024 0.0354,0.0177,0.00884" ;;
w200b) DIR=py400sgdwarm200 JOBS=${W200B_JOBS:-"0 1024 0.025,0.0354,0.05;1 1024 0.0354;2 1024 0.0354"} ;;
*) echo "stage must be 1024, 1024b, 128, mid, fill, warm, warm2, warm3, warm4, w200a, w200b, w200c or w200sp, got $STAGE" >&2
   exit 2 ;;
esac
case $STAGE in warm*) export EXTRA="--set train.warmup=100" ;; w200*) export EXTRA="--set train.warmup=200" ;; esac
[ "$STAGE" = w200sp ] && EXTRA="$EXTRA --set sweep.parametrizations=[sp]"
A4="--set model.multipliers.readout=4"
export DIR=$D/$DIR JOBS="${JOBS//;/ a4 $A4;} a4 $A4"
exec bash "$(dirname "$0")/seeds.sh" "$UNTIL"
