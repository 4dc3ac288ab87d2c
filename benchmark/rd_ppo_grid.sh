#!/usr/bin/env bash
# The experiment of docs/rd_ppo.md: every cell is one process training 10 agents in lockstep
# (--num-seeds 10, seeds 1..10) with 10 drive matrices (--vary-rd-seed True: --rd-seed 0..9), so each
# cell's 95% t-interval is over 10 seeds and 10 matrices. Cells run one after another (one CPU core).
#   bash benchmark/rd_ppo_grid.sh [stateless|cartpole|cleanrl ...]   # default: all three parts
#   (two runners may share the work: e.g. one with "stateless cartpole cleanrl", one with
#   "cleanrl cartpole stateless"; a cell being run by one is skipped by the other; a runner that
#   was killed leaves benchmark/out/rd_ppo_grid/NAME.lock behind: remove it to rerun that cell)
#   python benchmark/rd_ppo_table.py benchmark/out/rd_ppo_grid          # the tables
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=benchmark/out/rd_ppo_grid
mkdir -p "$out"
seeds="--num-seeds 10 --vary-rd-seed True"
cell() {  # cell NAME ARGS...: skip a cell that is done, or taken by another runner of this script
  local name=$1; shift
  if ls "$out/$name"/runs/*/summary.json 2>/dev/null | xargs -r grep -l '"num_seeds": 10' | grep -q .; then return; fi
  mkdir "$out/$name.lock" 2>/dev/null || return 0        # two runners (e.g. the parts in two orders) share the cells
  rm -rf "${out:?}/$name"; mkdir -p "$out/$name"
  (cd "$out/$name" && python "$repo/rd_ppo.py" $seeds --exp-name "$name" "$@" > log.txt)
  rmdir "$out/$name.lock"
  echo "$(date +%T) $name done"
}
parts=${*:-stateless cartpole cleanrl}
for part in $parts; do
  case $part in
  stateless)   # 150k steps per agent, our defaults otherwise
    s="--env stateless --total-timesteps 150000"
    cell sl_plain $s --rd False
    cell sl_framestack2 $s --rd False --frame-stack 2
    cell sl_framestack4 $s --rd False --frame-stack 4
    for g in 0 0.01 0.1 0.5; do cell sl_input_g$g $s --rd-input True --rd-weight 0 --gamma $g; done
    cell sl_input_leaky $s --rd-input True --rd-weight 0 --rd-dynamics leaky
    cell sl_input_turing_dh4 $s --rd-input True --rd-weight 0 --gamma 0 --rd-d-h 4
    cell sl_input_fp_dh1 $s --rd-input True --rd-weight 0 --gamma 0 --rd-init fixed-point
    cell sl_input_fp_dh4 $s --rd-input True --rd-weight 0 --gamma 0 --rd-init fixed-point --rd-d-h 4
    cell sl_input_td_g0.1 $s --rd-input True --rd-weight 0 --gamma 0.1 --guidance td
    cell sl_blend0.3_g0.1 $s --rd-weight 0.3 --gamma 0.1
    cell sl_blend0.3_g0.1_zero $s --rd-weight 0.3 --gamma 0.1 --rd-out zero
    cell sl_blend0.3_g0.1_shuffle $s --rd-weight 0.3 --gamma 0.1 --rd-out shuffle
    cell sl_blend0.3_g0.1_td $s --rd-weight 0.3 --gamma 0.1 --guidance td
    cell sl_blend0.9_g0 $s --rd-weight 0.9 --gamma 0
    cell sl_blend0.9_g0.5 $s --rd-weight 0.9 --gamma 0.5
    ;;
  cartpole)    # 100k steps per agent at our defaults (plain PPO reaches 475 at about 50-65k)
    c="--env cartpole --total-timesteps 100000"
    cell cp_plain $c --rd False
    for l in 0.1 0.3 0.6 0.9; do
      for g in 0 0.01 0.1 0.5; do cell cp_blend${l}_g$g $c --rd-weight $l --gamma $g; done
    done
    for l in 0.3 0.9; do
      cell cp_blend${l}_g0.1_zero $c --rd-weight $l --gamma 0.1 --rd-out zero
      cell cp_blend${l}_g0.1_shuffle $c --rd-weight $l --gamma 0.1 --rd-out shuffle
    done
    ;;
  cleanrl)     # CleanRL ppo.py's CartPole hyperparameters, 200k steps (a baseline with headroom)
    h="--env cartpole --total-timesteps 200000 --num-envs 4 --num-steps 128 --learning-rate 2.5e-4"
    cell cr_plain $h --rd False
    for l in 0.1 0.3 0.6 0.9; do
      for g in 0 0.01 0.1 0.5; do cell cr_blend${l}_g$g $h --rd-weight $l --gamma $g; done
    done
    for l in 0.3 0.9; do
      cell cr_blend${l}_g0.5_zero $h --rd-weight $l --gamma 0.5 --rd-out zero
      cell cr_blend${l}_g0.5_shuffle $h --rd-weight $l --gamma 0.5 --rd-out shuffle
    done
    ;;
  esac
done
python benchmark/rd_ppo_table.py "$out"
