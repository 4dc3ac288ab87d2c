#!/usr/bin/env bash
# The within-(N, H) design of issue 15: the original's sweep (N in {5,15,30} x H in {8,32,64},
# 300 episodes) with 10 seeds per configuration (90 runs), order parameters every 10 episodes, so
# that the early checkpoints, where some seeds of one (N, H) have learned and others not, give a
# within-(N, H) r over seeds (Fisher-z CIs) next to the final-episode analysis of the seed.
#   bash benchmark/order_parameter_within.sh      # ~6-8 min of CPU time on one core
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/order_parameter
mkdir -p "$out"
cd "$out"
python "$repo/order_parameter.py" --exp-name op_within10 --num-seeds 10 --order-every 10 | tee within_10seeds.txt
