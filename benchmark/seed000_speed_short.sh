#!/usr/bin/env bash
# Side by side at a reduced budget: order_parameter.py against the ORIGINAL repository itself
# (zb523/metalearning @ 36a6d57, scripts/order_parameter.py, imported and called by
# benchmark/time_original.py once per configuration), both at EPISODES episodes per run (default
# 40 instead of 300: the full-budget comparison is benchmark/seed000_speed.sh, ~10 min of CPU).
# Early episodes are the long, exploring ones, so this is not a proxy for the per-run ratio at
# 300 episodes. One torch thread each, back to back; process CPU time.
#   ORIGINAL_DIR=path/to/metalearning/scripts bash benchmark/seed000_speed_short.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
: "${ORIGINAL_DIR:?set ORIGINAL_DIR to the scripts/ folder of the original repository}"
EPISODES=${EPISODES:-40}
out=benchmark/out/speed_short
mkdir -p "$out"
python benchmark/time_original.py --original "$ORIGINAL_DIR/order_parameter.py" --kind order \
  --episodes "$EPISODES" --out "$out/original_order.json" > "$out/original_order.log" 2>&1
# ours: the default sweep (27 runs), timed in process around run_experiment like the original
# (imports excluded on both sides; ours includes its analysis and four plots)
(cd "$out" && python "$repo/benchmark/seed000_time_ours.py" ours_order.time --exp-name speed_short \
  --episodes "$EPISODES" > ours_order.log 2>&1)
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
o = json.load(open(f"{out}/original_order.json"))
n, ocpu = len(o["runs"]), o["total"]["cpu_s"]
t = json.load(open(f"{out}/ours_order.time"))
cpu = t["cpu_s"] + t["sys_s"]
print(f"order, {o['episodes']} episodes: original {n} runs {ocpu:.1f} s CPU ({ocpu / n:.2f} s/run); ours 27 runs "
      f"{cpu:.1f} s CPU ({cpu / 27:.3f} s/run): {ocpu / n / (cpu / 27):.1f}x per run")
PY
