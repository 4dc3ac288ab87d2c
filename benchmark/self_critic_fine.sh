#!/usr/bin/env bash
# Follow-up to benchmark/self_critic.sh: the hack step of online vs frozen at one-step resolution
# (evaluate after every self step; no greedy samples), defaults otherwise, seeds 1-3, 40 self steps.
#   bash benchmark/self_critic_fine.sh     # ~10 min with 2 runs at a time on the 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/self_critic_fine
mkdir -p "$out"
common="--meta-steps 50 --self-steps 40 --eval-every 1 --sample-prompts 0 --torch-threads 1"
{
  for seed in 1 2 3; do
    for critic in online frozen; do
      echo "--exp-name $critic --critic $critic $common --seed $seed"
    done
  done
} | (cd "$out" && xargs -P 2 -I{} sh -c "python $repo/self_critic_lm.py {} > /dev/null")
python benchmark/self_critic_table.py --runs "$out/runs" --out "$out/fine.png"
