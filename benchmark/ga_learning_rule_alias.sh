#!/usr/bin/env bash
# Re-run of the FoodWorld rule rows of benchmark/ga_learning_rule.sh that the aliasing fix changes (the trace
# now holds a copy of the observation; before, the rules' layer-0 input was s_{t+1} whenever the count was
# observed, the default). Only the rows with the count observed were aliased (--observe-count False built a
# fresh tensor), so only they are re-run. Same settings as those rows (P = 500, 50 survivors, 5 elites,
# 2 lifetimes x 200 steps, random layouts, 30 generations), with --neuron-id False (the old mpnn rule) and
# --reeval-top 1 (the old champion: the final generation's best), so that only the fix differs.
#   SCRIPT=/path/to/frozen/copy SEEDS="1 2 3" bash benchmark/ga_learning_rule_alias.sh   # ~3-8 min per run
#   python benchmark/ga_learning_rule_table.py benchmark/out/ga_learning_rule_alias/runs
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule_alias
mkdir -p "$out" && cd "$out"
ga="--population-size 500 --num-survivors 50 --num-elites 5 --evals-per-gen 2 --steps 200 --food-layout random
    --generations 30 --neuron-id False --reeval-top 1"
for seed in ${SEEDS:-1 2 3}; do
  for rule in ${RULES:-mpnn abcd}; do
    OMP_NUM_THREADS=1 python "${SCRIPT:-$repo/ga_learning_rule.py}" $ga --seed "$seed" --rule $rule \
      --exp-name "rule_${rule}" > /dev/null
  done
done
