#!/usr/bin/env bash
# Side-by-side speed of order_parameter.py / control_parameter.py against the ORIGINAL scripts
# (zb523/metalearning @ 36a6d57), all on one torch thread, back to back on the same machine.
# The original is not in this repository: clone it and point ORIGINAL_DIR at its scripts/ folder.
#   git clone https://github.com/zb523/metalearning && (cd metalearning && git checkout 36a6d57)
#   pip install tqdm                                    # the original imports it
#   ORIGINAL_DIR=metalearning/scripts bash benchmark/seed000_speed.sh
# Reported: process CPU time (robust on a shared machine) and wall time, per run and in total.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
: "${ORIGINAL_DIR:?set ORIGINAL_DIR to the scripts/ folder of the original repository}"
out=benchmark/out/speed
mkdir -p "$out"
timed() {  # timed NAME CMD...: CPU and wall seconds of one command into $out/NAME.time
  local name=$1; shift
  /usr/bin/time -f '{"cpu_s": %U, "sys_s": %S, "wall_s": %e}' -o "$out/$name.time" "$@" > "$out/$name.log" 2>&1
  cat "$out/$name.time"
}
# ours: the default sweep (9 configurations x 3 seeds) and the default comparison (5 configs x 5 seeds)
(cd "$out" && timed ours_order python "$repo/order_parameter.py" --exp-name speed_order)
(cd "$out" && timed ours_control python "$repo/control_parameter.py" --exp-name speed_control)
# the original, once per configuration (9 for phase 1, 4 for phase 2), one seed
python benchmark/time_original.py --original "$ORIGINAL_DIR/order_parameter.py" --kind order \
  --out "$out/original_order.json"
python benchmark/time_original.py --original "$ORIGINAL_DIR/control_parameter.py" --kind control \
  --out "$out/original_control.json"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for kind, ours_runs in (("order", 27), ("control", 25)):
    o = json.load(open(f"{out}/original_{kind}.json"))["total"]
    n = len(json.load(open(f"{out}/original_{kind}.json"))["runs"])
    t = json.load(open(f"{out}/ours_{kind}.time"))
    cpu = t["cpu_s"] + t["sys_s"]
    print(f"{kind}: original {n} runs {o['cpu_s']:.0f} s CPU ({o['cpu_s'] / n:.1f} s/run); ours {ours_runs} runs "
          f"{cpu:.0f} s CPU ({cpu / ours_runs:.2f} s/run): {o['cpu_s'] / n / (cpu / ours_runs):.1f}x per run, "
          f"{o['cpu_s'] / cpu:.1f}x for the whole script (ours doing {ours_runs / n:.1f}x the runs)")
PY
