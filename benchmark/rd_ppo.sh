#!/usr/bin/env bash
# The blog's comparison (README, "Results"): guidance gamma in {0, 0.01, 0.1, 0.5} with the module
# blended at lambda = 0.3, against the plain-PPO baseline lambda = 0, 5 seeds each, on CartPole-v1
# (300k steps) and stateless CartPole (500k steps). Our defaults otherwise. Two runs at a time.
#   bash benchmark/rd_ppo.sh            # ~20 min on 2 CPU cores; then the tables and curves:
#   python benchmark/plot.py --runs benchmark/out/rd_ppo/runs --filter env=cartpole --out cartpole.png
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/rd_ppo
mkdir -p "$out"
SEEDS=${SEEDS:-"1 2 3 4 5"}
JOBS=${JOBS:-2}
{
  for seed in $SEEDS; do
    for env_steps in "cartpole 300000" "stateless 500000"; do
      set -- $env_steps
      echo "--env $1 --total-timesteps $2 --seed $seed --rd-weight 0"
      for gamma in 0 0.01 0.1 0.5; do
        echo "--env $1 --total-timesteps $2 --seed $seed --rd-weight 0.3 --gamma $gamma"
      done
    done
  done
} | (cd "$out" && xargs -P "$JOBS" -I{} sh -c "python $repo/rd_ppo.py {} > /dev/null")
for env in cartpole stateless; do
  python benchmark/plot.py --runs "$out/runs" --filter "env=$env" --group-by rd_weight gamma \
    --title "rd_ppo on $env (mean ± std over seeds)" --out "benchmark/rd_ppo_$env.png"
done
