#!/usr/bin/env bash
# The direct-weight sanity check with a larger budget than benchmark/ga_learning_rule.sh: evolve the
# [7, 8, 8, 2] actor on FoodWorld (random layouts, count input zeroed) with P = 1000 (100 survivors,
# 10 elites), 8 lifetimes per individual per generation, every gene mutated (sigma 0.1), 100
# generations (GENS=200 for the longer run), against the hand-written push-toward-food controller on 32 unseen layouts.
#   bash benchmark/ga_learning_rule_actor.sh    # ~7 min per seed on a shared 2-core CPU (SEEDS="1 2 3" for all)
#   GENS=200 bash benchmark/ga_learning_rule_actor.sh
#   python benchmark/ga_learning_rule_table.py benchmark/out/ga_learning_rule_actor/runs
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule_actor
mkdir -p "$out" && cd "$out"
for seed in ${SEEDS:-"1"}; do
  OMP_NUM_THREADS=1 python "$repo/ga_learning_rule.py" --evolve actor --population-size 1000 --num-survivors 100 \
    --num-elites 10 --evals-per-gen 8 --mutation-probability 1.0 --generations ${GENS:-100} --observe-count False \
    --seed "$seed" --exp-name actor_7882_nocount_P1000_K8_g${GENS:-100} > /dev/null
done
