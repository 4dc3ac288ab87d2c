#!/usr/bin/env bash
# Speed and memory of ga_learning_rule.py on the CPU, one torch thread, one generation per run:
# individual-steps/s (one env step of one individual's lifetime, rule update included) and the peak
# RSS above the RSS just before the population is allocated (summary.json: peak_rss_above_start_mb,
# bytes_per_individual). P = 1000 and 10,000, one lifetime of 200 steps each, rule on (mpnn, abcd)
# and off (--evolve actor). The machine is shared: the script logs the load average beside each run and
# also reports individual-steps per second of this process's CPU time (less sensitive to the other jobs).
#   bash benchmark/ga_learning_rule_speed.sh      # ~5 min on a quiet 2-core CPU; prints the table
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule_speed
rm -rf "$out" && mkdir -p "$out" && cd "$out"
export OMP_NUM_THREADS=1
common="--evals-per-gen 1 --steps 200 --generations 1 --eval-lifetimes 2 --torch-threads 1"
for P in 1000 10000; do
  S=$((P / 50))
  for mode in "--rule mpnn" "--rule abcd" "--evolve actor"; do
    name="P${P}_$(echo $mode | tr -d ' -')"
    echo "$name load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a load.log
    python "$repo/ga_learning_rule.py" $common $mode --population-size $P --num-survivors $S --num-elites $((S / 10)) \
      --exp-name "$name" > "$name.log"
  done
done
python - <<'PY'
import glob, json
print("| run | P | individual-steps/s (wall) | individual-steps per CPU-s | peak RSS above start (MB) | bytes per individual |")
print("|---|---|---|---|---|---|")
for path in sorted(glob.glob("runs/*/summary.json")):
    s = json.load(open(path))
    name = path.split("/")[1].split("__")[0]
    print(f"| {name} | {s['population_size']} | {s['individual_steps_per_s']:,.0f} | {s['individual_steps_per_cpu_s']:,.0f} | "
          f"{s['peak_rss_above_start_mb']:.1f} | {s['bytes_per_individual']:,.0f} |")
PY
