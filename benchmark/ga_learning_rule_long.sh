#!/usr/bin/env bash
# A longer rule search than benchmark/ga_learning_rule.sh: rule abcd, 100 generations, otherwise the
# same setting (FoodWorld, random layouts, P = 500, 50 survivors, 5 elites, 2 lifetimes x 200 steps).
#   bash benchmark/ga_learning_rule_long.sh     # ~8 min per seed on a shared 2-core CPU
#   python benchmark/ga_learning_rule_table.py benchmark/out/ga_learning_rule_long/runs
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule_long
mkdir -p "$out" && cd "$out"
for seed in ${SEEDS:-"1"}; do
  OMP_NUM_THREADS=1 python "$repo/ga_learning_rule.py" --population-size 500 --num-survivors 50 --num-elites 5 \
    --evals-per-gen 2 --steps 200 --food-layout random --rule abcd --generations 100 --seed "$seed" \
    --exp-name rule_abcd_g100 > /dev/null
done
