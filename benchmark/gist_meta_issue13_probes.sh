#!/usr/bin/env bash
# Positive-control probes for issue 13 (seed 1 only; run by hand in a scratch folder before the main
# benchmark): does full beat none by >= 1 nat at each synthetic corpus's default, with the
# benchmark's model and budget (0.14M parameters, 300 stage-A steps, Lc 64, k 4, Lx 8)?
# The gist model is always trained too (it is the first model of stage A).
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmark/out/gist_meta_issue13_probes
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
for c in repeat letters kv; do
  (cd "$out" && nice -n 10 python ../../../gist_meta.py --stage a --corpus $c --n-embd 64 --n-layer 2 --n-head 4 \
     --n-kv-head 2 --a-steps 300 --synth-chars 300000 --letters-support 12 --kv-keys 8 --a-modes full none --exp-name probe8_$c > probe8_$c.log 2>&1)
done
grep -h "^\[A\] CE" "$out"/probe8_*.log
