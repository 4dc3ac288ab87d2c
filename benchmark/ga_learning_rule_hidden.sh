#!/usr/bin/env bash
# The task that needs learning within a lifetime (--env hiddenfood: the food sits at a hidden place, one per
# lifetime; 6 episodes of 40 steps per lifetime; the agent restarts at the origin each episode). Per seed, on
# the same budget (P = 200, 20 survivors, 4 elites, 2 lifetimes per individual per generation, GENS
# generations): the evolved fixed actor (the bar), the evolved GRU (RL^2-style upper reference), the mpnn
# rule (with the neuron identity), the abcd rule, and OpenAI-ES on the abcd rule. Every run's summary also
# holds, on the same 64 held-out lifetimes, the hand-set node-perturbation rule and its controls, the
# oracle (told where the food is) and zero action. REDUCED budget for a shared 2-core CPU (the seed used
# P = 10,000 on a GPU).
#   SEEDS="1 2 3" GENS=50 bash benchmark/ga_learning_rule_hidden.sh      # ~6 min per seed on one free core
#   (SCRIPT=path runs a frozen copy of the script, so that edits during the run cannot leak into it)
#   python benchmark/ga_learning_rule_hidden_table.py benchmark/out/ga_learning_rule_hidden/runs
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule_hidden
mkdir -p "$out" && cd "$out"
gens=${GENS:-50}
common="--env hiddenfood --actor-shape 4 8 2 --steps 240 --episodes 6 --weight-init 0.1 --rule-lr 0.05
        --population-size 200 --num-survivors 20 --num-elites 4 --evals-per-gen 2 --eval-lifetimes 64
        --generations $gens"
for seed in ${SEEDS:-1 2 3}; do
  for method in actor gru mpnn abcd es_abcd; do
    case $method in
      actor) flags="--evolve actor" ;;
      gru) flags="--evolve gru" ;;
      mpnn) flags="--evolve rule --rule mpnn" ;;
      abcd) flags="--evolve rule --rule abcd" ;;
      es_abcd) flags="--evolve rule --rule abcd --optimizer es" ;;
    esac
    OMP_NUM_THREADS=1 python "${SCRIPT:-$repo/ga_learning_rule.py}" $common $flags --seed "$seed" \
      --exp-name "hidden_${method}_g${gens}" > "log_${method}_${seed}.txt"
    tail -n 3 "log_${method}_${seed}.txt" | head -n 1
  done
done
