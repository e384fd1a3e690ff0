#!/usr/bin/env bash
# SGD-Nesterov at alpha 4, momentum 0.9 on every group, 400 steps: the sqrt(2) grid around the optima of
# py400sgd128 (0.025) and py400sgd1024 (0.0125), seeds 0-2, and widths 256 and 512 between them
# (results.md, "SGD-Nesterov on a sqrt(2) grid"). One device call per STAGE (1024, 128, mid, fill or warm):
#   bash benchmarks/lr_transfer/sgd_sqrt2.sh STAGE UNTIL
# Seed 0's rows at 128 and 1024 go next to the earlier ones (s0_w<width>_a4), whose lrs are not run again.
set -uo pipefail
STAGE=${1:?stage}; A4="--set model.multipliers.readout=4"; D=benchmarks/lr_transfer
export OPT=sgd-nesterov
case $STAGE in
1024) L=0.00884,0.0125,0.0177; export DIR=$D/py400sgd1024
      export JOBS="0 1024 0.00884,0.0177 a4 $A4;1 1024 $L a4 $A4;2 1024 $L a4 $A4" ;;
128) L=0.0177,0.025,0.0354; export DIR=$D/py400sgd128
     export JOBS="0 128 0.0177,0.0354 a4 $A4;1 128 $L a4 $A4;2 128 $L a4 $A4" ;;
mid) L=0.0125,0.0177,0.025; export DIR=$D/py400sgdmid JOBS="0 256 $L a4 $A4;0 512 $L a4 $A4" ;;
fill) export DIR=$D/py400sgdfill  # seeds 1 and 2 diverged at lrs seed 0 trained at: their edges
      L=0.00884,0.0125; export JOBS="1 128 $L;2 128 $L;0 128 0.00884;1 512 $L;2 512 $L;1 256 0.0125,0.0177;2 256 0.0125,0.0177"
      JOBS=$(echo "$JOBS" | sed "s/;/ a4 $A4;/g")" a4 $A4" ;;
warm) export DIR=$D/py400sgdwarm100 EXTRA="--set train.warmup=100"  # the divergences again, longer warmup
      export JOBS="1 1024 0.0125;0 1024 0.0177;2 512 0.00884,0.0125;1 128 0.0177,0.025;2 128 0.025"
      [ "${WARM2:-0}" = 1 ] && export JOBS="0 1024 0.025,0.0354;0 128 0.025,0.0354"  # seed 0's grid, extended
      [ "${WARM2:-0}" = 2 ] && export JOBS="0 128 0.05,0.0707"
      JOBS=$(echo "$JOBS" | sed "s/;/ a4 $A4;/g")" a4 $A4" ;;
*) echo "stage must be 1024, 128, mid, fill or warm, got $STAGE" >&2; exit 2 ;;
esac
exec bash "$(dirname "$0")/seeds.sh" "${2:?seconds}"
