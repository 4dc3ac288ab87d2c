#!/usr/bin/env bash
# The seed-004 experiment (README, "self_critic_lm.py results"): when does self training against the
# model's own critic reward-hack, and which mitigation delays it? Seven settings x 3 seeds, our
# defaults otherwise (1.0M-param Llama-style model, byte tokenizer, pydoc_data.topics, batch 16 x 32
# tokens, lr 1e-3, META meta steps then SELF self steps):
#   online | frozen | ema d=0.9 | ema d=0.99 | frozen + adversarial | frozen + 3x meta | frozen + hack guard
#   bash benchmark/self_critic.sh          # ~40 min with 2 runs at a time on the 2-core CPU; then the table:
#   python benchmark/self_critic_table.py --runs benchmark/out/self_critic/runs --out benchmark/self_critic.png
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/self_critic
mkdir -p "$out"
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
META=${META:-50}
SELF=${SELF:-200}
common="--meta-steps $META --self-steps $SELF --torch-threads 1"
{
  for seed in $SEEDS; do
    echo "--exp-name online --critic online $common --seed $seed"
    echo "--exp-name frozen --critic frozen $common --seed $seed"
    echo "--exp-name ema0.9 --critic ema --ema-decay 0.9 $common --seed $seed"
    echo "--exp-name ema0.99 --critic ema --ema-decay 0.99 $common --seed $seed"
    echo "--exp-name frozen_adversarial --critic frozen --adversarial noise $common --seed $seed"
    echo "--exp-name frozen_meta3x --critic frozen $common --meta-steps $((3 * META)) --seed $seed"
    echo "--exp-name frozen_guard --critic frozen --hack-guard True $common --seed $seed"
  done
} | (cd "$out" && xargs -P "$JOBS" -I{} sh -c "python $repo/self_critic_lm.py {} > /dev/null")
python benchmark/self_critic_table.py --runs "$out/runs" --out benchmark/self_critic.png
