#!/usr/bin/env bash
# The experiments behind every gist_meta.py number in the README (1.0M-parameter Llama-style model,
# byte tokenizer, pydoc_data.topics, one torch thread per run, JOBS runs at a time):
#   main     --stage all at the defaults (A: 300 steps x 3 masks, k=4, Lc=64, Lx=16; B: 100 steps;
#            C: 100 meta steps, second order, --val-select next), seeds 1-3
#   C        --stage c with --val-select similar (second order) and --first-order True (next), seeds 1-3
#   A sweeps --stage a, seed 1: k in {1, 16} (gist mask only; CE_full/none do not depend on k),
#            context length Lc in {16, 128} (all three masks)
#   bash benchmark/gist_meta.sh          # about 30 min on the 2-core VM; then
#   python benchmark/gist_meta_tables.py # prints the README tables
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/gist_meta
mkdir -p "$out"
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"1 2 3"}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
{
  for seed in $SEEDS; do
    echo "--exp-name main --seed $seed"
  done
  for seed in $SEEDS; do
    echo "--exp-name c_similar --stage c --val-select similar --seed $seed"
    echo "--exp-name c_first_order --stage c --first-order True --seed $seed"
  done
  for k in 1 16; do
    echo "--exp-name a_k$k --stage a --a-modes gist --num-gist-tokens $k --seed 1"
  done
  for lc in 16 128; do
    echo "--exp-name a_ctx$lc --stage a --context-len $lc --seed 1"
  done
} | (cd "$out" && xargs -P "$JOBS" -I{} sh -c "python $repo/gist_meta.py {} > /dev/null 2>&1 || echo 'failed: {}'")
