#!/usr/bin/env bash
# Issue 13, stage-A positive controls on the synthetic corpora letters and kv at their defaults
# (letters: S = 6 of the 62 symbols a-z A-Z 0-9; kv: m = 4 keys, V = 1; every
# synthetic corpus 3M characters, --synth-chars default), with the benchmark's 0.14M model
# (d 64, 2 layers, 4/2 heads), Lc 64, Lx 8 (x_2..x_8 scored), stage-A steps per model 1000 for
# letters and kv (STEPS_LETTERS, STEPS_KV), seeds 1-3, masks gist/full/none all trained
# at each k in {4, 1}.
# One run at a time (a shared 2-core VM); a run whose summary.json exists is skipped.
#   bash benchmark/gist_meta_issue13_controls.sh; python benchmark/gist_meta_issue13_tables.py controls
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmark/out/gist_meta_issue13_controls
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
STEPS_LETTERS=${STEPS_LETTERS:-1000}
STEPS_KV=${STEPS_KV:-1000}
SEEDS=${SEEDS:-"1 2 3"}
KS=${KS:-"4 1"}
CORPORA=${CORPORA:-"letters kv"}
MODEL="--n-embd 64 --n-layer 2 --n-head 4 --n-kv-head 2 --stage a --a-modes gist full none"
for k in $KS; do
  for c in $CORPORA; do
    for s in $SEEDS; do
      if [ "$c" = kv ]; then n=$STEPS_KV; else n=$STEPS_LETTERS; fi
      name=ctl_${c}_k${k}_n${n}
      if ls "$out"/runs/${name}__${s}__*/summary.json > /dev/null 2>&1; then continue; fi
      (cd "$out" && nice -n 10 python ../../../gist_meta.py $MODEL --corpus $c --num-gist-tokens $k --a-steps $n --seed $s \
         --exp-name $name > log_${name}_s$s.txt 2>&1)
      grep -h "^\[A\] CE" "$out/log_${name}_s$s.txt" | sed "s/^/$name seed $s: /"
    done
  done
done
