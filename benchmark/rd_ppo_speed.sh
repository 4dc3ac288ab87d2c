#!/usr/bin/env bash
# Speed of rd_ppo.py on the CPU, one torch thread, one run at a time (run nothing else meanwhile).
# 1. CleanRL's ppo.py hyperparameters (4 envs, 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4):
#    module off; module on at lambda = 0.3; module on at lambda = 0 (computed and stored, same
#    trajectory as module off, so episode resets cost the same).
# 2. Our defaults: time to a 20-episode mean of 475, module off and on.
#   bash benchmark/rd_ppo_speed.sh      # ~8 min; prints the tables
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/rd_ppo_speed
rm -rf "$out" && mkdir -p "$out" && cd "$out"
cleanrl="--num-envs 4 --num-steps 128 --num-minibatches 4 --update-epochs 4 --learning-rate 2.5e-4 --total-timesteps 200000"
for seed in 1 2 3; do
  python "$repo/rd_ppo.py" $cleanrl --seed $seed --rd False --exp-name cleanrl_off > /dev/null
  python "$repo/rd_ppo.py" $cleanrl --seed $seed --rd-weight 0.3 --exp-name cleanrl_on > /dev/null
  python "$repo/rd_ppo.py" $cleanrl --seed $seed --rd-weight 0 --exp-name cleanrl_on_lambda0 > /dev/null
done
for seed in 1 2 3 4 5; do
  python "$repo/rd_ppo.py" --total-timesteps 150000 --seed $seed --rd False --exp-name defaults_off > /dev/null
  python "$repo/rd_ppo.py" --total-timesteps 150000 --seed $seed --exp-name defaults_on > /dev/null
done
python - <<'PY'
import glob, json, collections, statistics as st
groups = collections.defaultdict(list)
for path in glob.glob("runs/*/summary.json"):
    groups[path.split("/")[1].split("__")[0]].append(json.load(open(path)))
fmt = lambda xs: f"{st.mean(xs):.1f} ± {st.stdev(xs):.1f}" if len(xs) > 1 else (f"{xs[0]:.1f}" if xs else "n/a")
print("| setting | n | SPS | steps to 475 | wall-clock to 475 (s) | total wall (s) |")
print("|---|---|---|---|---|---|")
for name in sorted(groups):
    runs = groups[name]
    reached = [r for r in runs if r["steps_to_475"] is not None]
    print(f"| {name} | {len(runs)} | {fmt([r['SPS'] for r in runs])} | "
          f"{fmt([r['steps_to_475'] for r in reached])} ({len(reached)}/{len(runs)}) | "
          f"{fmt([r['time_to_475_s'] for r in reached])} | {fmt([r['wall_time_s'] for r in runs])} |")
PY
