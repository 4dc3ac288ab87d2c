#!/usr/bin/env bash
# Wall time of one run at the defaults (all three stages, seed 1, one torch thread):
#   bash benchmark/gist_meta_defaults.sh     # prints the run's summary line; wall_time_s in summary.json
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/gist_meta_defaults
mkdir -p "$out" && cd "$out"
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 /usr/bin/time -v python "$repo/gist_meta.py" --exp-name defaults --seed 1 --first-order False 2>&1 | tail -40
