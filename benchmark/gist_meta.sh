#!/usr/bin/env bash
# The experiments behind every gist_meta.py number in the README (1.0M-parameter Llama-style model,
# byte tokenizer, pydoc_data.topics, one torch thread per run, JOBS runs at a time):
# Budgets are below the defaults so that everything fits ~40 min on the shared 2-core VM ($SMALL):
#   main     --stage all (A: 200 steps x 3 masks, k=4, Lc=64, Lx=16; B: 60 steps; C: 60 meta steps,
#            second order, --val-select next; 6 evaluation episodes), seeds 1-3
#   C        --stage c with --val-select similar (second order) and --first-order True (next), seeds 1-2
#   A head  --stage a, seeds 1-3: the main runs' stage A again (deterministic: same numbers), now also
#            with the CE of the first 4 continuation tokens (added after the main runs had started)
#   A sweeps --stage a, seed 1: k in {1, 16} (gist mask only; CE_full/none do not depend on k),
#            context length Lc = 16 (all three masks)
#   bash benchmark/gist_meta.sh          # ~40 min on the 2-core VM shared with other jobs; then
#   python benchmark/gist_meta_tables.py # prints the README tables
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/gist_meta
mkdir -p "$out"
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"1 2 3"}
SMALL="--a-steps 200 --b-steps 60 --c-steps 60 --c-eval-episodes 6"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
{
  for seed in $SEEDS; do
    echo "--exp-name main --seed $seed --first-order False $SMALL"
  done
  for seed in 1 2; do
    echo "--exp-name c_similar --stage c --val-select similar --first-order False --seed $seed $SMALL"
    echo "--exp-name c_first_order --stage c --first-order True --seed $seed $SMALL"
  done
  for k in 1 16; do
    echo "--exp-name a_k$k --stage a --a-modes gist --num-gist-tokens $k --seed 1 $SMALL"
  done
  echo "--exp-name a_ctx16 --stage a --context-len 16 --seed 1 $SMALL"
  for seed in $SEEDS; do
    echo "--exp-name a_main --stage a --seed $seed $SMALL"
  done
} | (cd "$out" && xargs -P "$JOBS" -I{} sh -c "python $repo/gist_meta.py {} > /dev/null 2>&1 || echo 'failed: {}'")
