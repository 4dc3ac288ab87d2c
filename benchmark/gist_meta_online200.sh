#!/usr/bin/env bash
# Issue 13, plan 3 at N = 200: the online stream (theta keeps every inner step) for 200 steps x 8
# parallel streams of 32-token chunks, each rule from the same start model, seeds 1-3; the
# benchmark's 0.14M model on --corpus repeat (P = 8, the default 3M characters), stage A 300 steps
# (gist mask only), B 40 steps, C 20 episodic meta steps (second order) as phi's pre-training.
#   bash benchmark/gist_meta_online200.sh   (about 4 min of CPU per seed; prints the table)
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmark/out/gist_meta_online200
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
for s in 1 2 3; do
  ls "$out"/runs/online200__${s}__*/summary.json > /dev/null 2>&1 && continue
  (cd "$out" && nice -n 10 python ../../../gist_meta.py --n-embd 64 --n-layer 2 --n-head 4 --n-kv-head 2 \
     --corpus repeat --a-steps 300 --a-modes gist --seed $s --stage all --first-order False --b-steps 40 --c-steps 20 \
     --c-eval-episodes 4 --c-online-steps 200 --exp-name online200 > log_s$s.txt 2>&1)
done
python benchmark/gist_meta_issue13_tables.py online200
