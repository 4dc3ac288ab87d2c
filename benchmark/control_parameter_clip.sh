#!/usr/bin/env bash
# Issue 15: the corridor comparison of benchmark/control_parameter.sh (4 original configs + the
# kappa ablation, 10 seeds, fixed U and the original's U = 1) rerun with Student-t / Welch CIs and
# the gradient-clip fraction per configuration (the share of gradient steps the norm clip scaled).
#   bash benchmark/control_parameter_clip.sh     # ~4 min of CPU time on one core
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/control_parameter
mkdir -p "$out"
cd "$out"
python "$repo/control_parameter.py" --exp-name cp_variance --num-seeds 10 | tee variance_t.txt
python "$repo/control_parameter.py" --exp-name cp_constant --num-seeds 10 --uncertainty constant | tee constant_t.txt
