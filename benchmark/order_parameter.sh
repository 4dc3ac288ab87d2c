#!/usr/bin/env bash
# The numbers in the README's order_parameter section: the original's sweep (corridor N in
# {5,15,30} x H in {8,32,64}, 300 episodes) with 3 seeds (the default) and a 5-seed replicate on
# another seed; then the same analysis on CartPole-v1 (150 episodes capped at 200 steps). Each
# run prints its correlation table and writes runs/*/summary.json.
#   bash benchmark/order_parameter.sh          # ~10 min of CPU time on one core
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/order_parameter
mkdir -p "$out"
cd "$out"
python "$repo/order_parameter.py" --exp-name op_corridor | tee corridor_3seeds.txt
python "$repo/order_parameter.py" --exp-name op_corridor5 --num-seeds 5 --seed 2 | tee corridor_5seeds.txt
python "$repo/order_parameter.py" --exp-name op_cartpole --env CartPole-v1 --env-sizes 0 --episodes 150 \
  --max-steps 200 | tee cartpole.txt
