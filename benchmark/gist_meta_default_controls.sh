#!/usr/bin/env bash
# Issue 13: the stage-A positive control of each synthetic corpus at the script's defaults (the 1.0M
# model, k = 4, Lc 64, Lx 8, 3M characters, --a-steps at the corpus's default: repeat 300, letters and
# kv 1000), masks gist/full/none, seeds SEEDS (1-3). About 3 min (repeat) and 10 min (letters, kv) per
# run on one thread of the shared 2-core VM; two runs at a time (JOBS). A run whose summary.json exists
# is skipped. SCRIPT: the gist_meta.py to run (default the repo's own).
#   bash benchmark/gist_meta_default_controls.sh && python benchmark/gist_meta_issue13_tables.py defaults
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmark/out/gist_meta_default_model
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
SCRIPT=${SCRIPT:-gist_meta.py}
script=$(cd "$(dirname "$SCRIPT")" && pwd)/$(basename "$SCRIPT")
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
for c in repeat letters kv; do
  for s in $SEEDS; do
    if ls "$out"/runs/dm_${c}__${s}__*/summary.json > /dev/null 2>&1; then continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
    (cd "$out" && nice -n 10 python "$script" --stage a --a-modes gist full none --corpus $c --seed $s \
       --exp-name dm_$c > log_${c}_s$s.txt 2>&1; grep -h "^\[A\] CE" log_${c}_s$s.txt | sed "s/^/dm_$c seed $s: /") &
  done
done
wait
