#!/usr/bin/env bash
# Look at the hack (issue 12): phase 2 from the 50- and 200-meta-step checkpoints of
# benchmark/self_critic_strength.py (seed 1), online and frozen critics, with --save-models True: the model and
# tokenizer (save_pretrained) at the start of phase 2, when the detector first fires and at the end, each with
# report.json (greedy samples, critic-target / LM-prediction / true-token histograms).
#   bash benchmark/self_critic_look.sh     # ~2 min; then read benchmark/out/self_critic_look/runs/*/summary.json
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/self_critic_look
mkdir -p "$out"
model="--n-embd 64 --n-layer 2 --n-head 4 --n-kv-head 2 --block-size 32 --batch-size 16 --torch-threads 1"
for m in 50 200; do
  ckpt=$(ls -d benchmark/out/self_critic_strength/runs/meta__1__*)/meta_$m.pt
  for critic in online frozen; do
    (cd "$out" && python "$repo/self_critic_lm.py" $model --exp-name look_m${m}_$critic --critic $critic \
      --init-meta "$repo/$ckpt" --self-steps 80 --eval-every 4 --save-models True --sample-prompts 4 > /dev/null)
  done
done
