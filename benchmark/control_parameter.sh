#!/usr/bin/env bash
# The numbers in the README's control_parameter section: the original's four configurations plus
# the kappa ablation (Uncertainty Focus with kappa = 0.01), 10 seeds each, with the fixed U(s) and
# with the original's U = 1; then the same comparison on CartPole-v1 (150 episodes of <= 200 steps).
#   bash benchmark/control_parameter.sh        # ~6 min of CPU time on one core
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/control_parameter
mkdir -p "$out"
cd "$out"
python "$repo/control_parameter.py" --exp-name cp_variance --num-seeds 10 | tee variance.txt
python "$repo/control_parameter.py" --exp-name cp_constant --num-seeds 10 --uncertainty constant | tee constant.txt
python "$repo/control_parameter.py" --exp-name cp_cartpole --env CartPole-v1 --episodes 150 --max-steps 200 \
  | tee cartpole.txt
