#!/usr/bin/env bash
# The experiments behind the ga_learning_rule.py results (README): FoodWorld, random food layouts,
# P = 500 (50 survivors, 5 elites), 2 lifetimes x 200 steps per individual per generation, seeds
# 1-3, one torch thread, two runs at a time. "nocount" = --observe-count False (the 7th input is 0).
#   rule mpnn / abcd, 30 generations, with and without the count input
#   evolve actor [7, 8, 8, 2] (every gene mutated), 100 generations, with and without the count input;
#   evolve actor [7, 2] (linear), without the count input
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
    for rule in mpnn abcd; do
      echo "$ga --seed $seed --rule $rule --generations 30 --exp-name rule_${rule}"
      echo "$ga --seed $seed --rule $rule --generations 30 --observe-count False --exp-name rule_${rule}_nocount"
    done
    actor="$ga --seed $seed --evolve actor --mutation-probability 1.0 --generations 100"
    echo "$actor --exp-name actor_7882"
    echo "$actor --observe-count False --exp-name actor_7882_nocount"
    echo "$actor --observe-count False --actor-shape 7 2 --exp-name actor_72_nocount"
  done
} | (cd "$out" && OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "python $repo/ga_learning_rule.py {} > /dev/null")
python benchmark/ga_learning_rule_table.py "$out/runs" --plot benchmark/ga_learning_rule_fitness.png
