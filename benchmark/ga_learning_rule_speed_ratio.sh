#!/usr/bin/env bash
# The issue's speed and memory targets, side by side in one invocation: P = 10,000, one generation of one
# 100-step FoodWorld lifetime, one torch thread, for the mpnn rule, the abcd rule and the rule off (--evolve
# actor, the plasticity-off throughput), each its own process: the MEMORY (summary.json's peak RSS above the RSS
# just before the population is allocated) comes from these runs. The throughput ratio is measured after them in ONE
# process, interleaved (off, mpnn, abcd, ...) over 5 rounds, median (benchmark/ga_learning_rule_speed_ratio.py).
#   bash benchmark/ga_learning_rule_speed_ratio.sh     # ~3 min on a quiet 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/ga_learning_rule_speed_ratio
rm -rf "$out" && mkdir -p "$out" && cd "$out"
export OMP_NUM_THREADS=1
common="--population-size 10000 --num-survivors 200 --num-elites 20 --evals-per-gen 1 --steps 100 --generations 1
        --eval-lifetimes 2 --reeval-top 1 --torch-threads 1"
for mode in "--evolve actor" "--rule mpnn" "--rule abcd"; do
  name="$(echo $mode | tr -d ' -')"
  echo "$name load: $(cut -d' ' -f1-3 /proc/loadavg)"
  python "${SCRIPT:-$repo/ga_learning_rule.py}" $common $mode --exp-name "$name" > "$name.log"
done
python - <<'PY'
import glob, json
s = {p.split("/")[1].split("__")[0]: json.load(open(p)) for p in glob.glob("runs/*/summary.json")}
off = s["evolveactor"]["individual_steps_per_cpu_s"]
print("| run (separate processes) | individual-steps per CPU-s | ratio to rule off | peak RSS above start (MB) |")
print("|---|---|---|---|")
for name in ("evolveactor", "rulempnn", "ruleabcd"):
    r = s[name]
    print(f"| {name} | {r['individual_steps_per_cpu_s']:,.0f} | {r['individual_steps_per_cpu_s'] / off:.3f} | "
          f"{r['peak_rss_above_start_mb']:.1f} |")
PY
cd "$repo" && python benchmark/ga_learning_rule_speed_ratio.py 5 "${SCRIPT:-$repo/ga_learning_rule.py}"
