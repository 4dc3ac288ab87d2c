#!/usr/bin/env bash
# The experiments behind the ga_learning_rule.py results (README): FoodWorld, random food layouts,
# P = 500 (50 survivors, 5 elites), 2 lifetimes x 200 steps per individual per generation, 30
# generations, seeds 1-3, one torch thread, two runs at a time:
#   rule mpnn (the seed's cells)  |  rule abcd (reward-modulated Hebbian)  |
#   evolve actor [7, 8, 8, 2] (30 and 60 generations)  |  evolve actor [7, 2] (linear)
# Every run ends with its held-out controls on 32 unseen random layouts (summary.json "heldout").
#   bash benchmark/ga_learning_rule.sh      # ~15 min on a shared 2-core CPU; then the tables and plot:
#   python benchmark/ga_learning_rule_table.py benchmark/out/ga_learning_rule/runs
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule
mkdir -p "$out"
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
ga="--population-size 500 --num-survivors 50 --num-elites 5 --evals-per-gen 2 --steps 200 --food-layout random"
{
  for seed in $SEEDS; do
    echo "$ga --seed $seed --rule mpnn --generations 30 --exp-name rule_mpnn"
    echo "$ga --seed $seed --rule abcd --generations 30 --exp-name rule_abcd"
    echo "$ga --seed $seed --evolve actor --mutation-probability 1.0 --generations 30 --exp-name actor_7882_g30"
    echo "$ga --seed $seed --evolve actor --mutation-probability 1.0 --generations 60 --exp-name actor_7882_g60"
    echo "$ga --seed $seed --evolve actor --mutation-probability 1.0 --generations 30 --actor-shape 7 2 --exp-name actor_72_g30"
  done
} | (cd "$out" && OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "python $repo/ga_learning_rule.py {} > /dev/null")
python benchmark/ga_learning_rule_table.py "$out/runs" --plot benchmark/ga_learning_rule_fitness.png
