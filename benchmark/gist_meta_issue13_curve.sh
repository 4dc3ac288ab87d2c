#!/usr/bin/env bash
# Issue 13, stage-A retention curve on --corpus repeat (each line one random P-letter string
# repeated; 3M characters, --synth-chars default): k gist tokens against the period P, with the
# benchmark's 0.14M model (d 64, 2 layers, 4/2 heads), Lc 64, Lx 8 (x_2..x_8 scored), stage-A
# steps per model STEPS (default 1000), seeds SEEDS (1-3), masks gist/full/none all trained at
# each (P, k): every k of KS (4 1) at every P of PS (8 16 4 32), in that order, all seeds of a
# point before the next; then k in {2, 8} at P = 16 by a second call with PS=16 KS="2 8"; then seeds
# 4-6 at the four points where seeds 1-3 disagreed (P = 4, k = 1; P = 8, k = 4; P = 16, k = 4 and 8).
# SCRIPT: the gist_meta.py to run (default the repo's own).
# One run at a time (a shared 2-core VM); a run whose summary.json exists is skipped.
#   bash benchmark/gist_meta_issue13_curve.sh; PS=16 KS="2 8" bash benchmark/gist_meta_issue13_curve.sh
#   SEEDS="4 5 6" PS=4 KS=1 bash ...; SEEDS="4 5 6" PS=8 KS=4 bash ...; SEEDS="4 5 6" PS=16 KS="4 8" bash ...
#   python benchmark/gist_meta_issue13_tables.py curve
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmark/out/gist_meta_issue13_curve
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
SCRIPT=${SCRIPT:-gist_meta.py}
script=$(cd "$(dirname "$SCRIPT")" && pwd)/$(basename "$SCRIPT")
STEPS=${STEPS:-1000}
SEEDS=${SEEDS:-"1 2 3"}
PS=${PS:-"8 16 4 32"}
KS=${KS:-"4 1"}
MODEL="--n-embd 64 --n-layer 2 --n-head 4 --n-kv-head 2 --stage a --a-modes gist full none --corpus repeat"
for P in $PS; do
  for k in $KS; do
    for s in $SEEDS; do
      name=curve_P${P}_k${k}_n${STEPS}
      if ls "$out"/runs/${name}__${s}__*/summary.json > /dev/null 2>&1; then continue; fi
      (cd "$out" && nice -n 10 python "$script" $MODEL --repeat-period $P --num-gist-tokens $k --a-steps $STEPS \
         --seed $s --exp-name $name > log_${name}_s$s.txt 2>&1)
      grep -h "^\[A\] CE" "$out/log_${name}_s$s.txt" | sed "s/^/$name seed $s: /"
    done
  done
done
