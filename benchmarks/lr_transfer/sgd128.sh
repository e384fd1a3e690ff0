#!/usr/bin/env bash
# SGD-Nesterov at the base width, alpha (4, 8) x momentum on the input kind (0.9, none), 400 steps
# (results.md, "SGD-Nesterov without momentum on the input kind, at alpha 8"): one device call,
#   bash benchmarks/lr_transfer/sgd128.sh UNTIL
set -uo pipefail
A4="--set model.multipliers.readout=4"; NOMOM="--set train.momentum_by_kind.input=0"
LO="0.00313,0.00625,0.0125,0.025"; HI="0.00625,0.0125,0.025,0.05,0.1"
export OPT=sgd-nesterov DIR=${DIR:-benchmarks/lr_transfer/py400sgd128}
export JOBS="0 128 $HI a4 $A4;0 128 $HI a4nomom $A4 $NOMOM;0 128 $LO a8;0 128 $LO a8nomom $NOMOM"
exec bash "$(dirname "$0")/seeds.sh" "${1:?seconds}"
