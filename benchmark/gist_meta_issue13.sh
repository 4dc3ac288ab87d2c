#!/usr/bin/env bash
# Issue 13 experiments (gist_meta.py), at a reduced scale that fit the shared 2-core VM in ~25 min:
# 0.14M-parameter model (d=64, 2 layers, 4/2 heads), --corpus repeat (lines of a random P-letter
# string repeated), Lc=64, Lx=8 (x_2..x_8 scored), 300 stage-A steps per model, seeds 1-3.
#   main:  --stage all, P=8, k=4, all four masks; B 40 steps; C 20 meta steps (second order),
#          4 evaluation episodes, online phase N=40 steps
#   curve: --stage a, masks gist/full/none trained at each (P, k) in {(8,1), (4,4), (16,4), (16,1)}
#   bash benchmark/gist_meta_issue13.sh; python benchmark/gist_meta_issue13_tables.py
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmark/out/gist_meta_issue13
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
MODEL="--n-embd 64 --n-layer 2 --n-head 4 --n-kv-head 2 --corpus repeat --a-steps 300 --synth-chars 300000"
run() { (cd "$out" && nice -n 10 python ../../../gist_meta.py $MODEL "$@" > "log_$(echo "$@" | tr ' ' '_').txt" 2>&1); }
{
  for s in 1 2 3; do run --exp-name main --seed $s --stage all --first-order False --b-steps 40 --c-steps 20 --c-eval-episodes 4 --c-online-steps 40; done
} &
{
  for cfg in "8 1" "4 4"; do set -- $cfg
    for s in 1 2 3; do run --exp-name curve_P$1_k$2 --seed $s --stage a --repeat-period $1 --num-gist-tokens $2 --a-modes gist full none; done
  done
} &
{
  for cfg in "16 4" "16 1"; do set -- $cfg
    for s in 1 2 3; do run --exp-name curve_P$1_k$2 --seed $s --stage a --repeat-period $1 --num-gist-tokens $2 --a-modes gist full none; done
  done
} &
wait
