"""Speed of rd_ppo.py, as ratios measured side by side in one run (the machine is shared and noisy):

1. CPU seconds per env step against CleanRL's ppo.py at the same hyperparameters (CleanRL's CartPole
   defaults: 4 envs, 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4), 100k steps, one torch thread.
   CleanRL's file is not part of this repository: pass its path in CLEANRL_PPO (it needs the
   tensorboard package; put it on PYTHONPATH_CLEANRL if it is not installed). Skipped when unset.
2. --rd-input True against the module without it (lambda 0.3, our defaults, 50k steps).
3. --num-seeds 10 against --num-seeds 1, wall time for the same steps per agent (our defaults, 50k).
Each pair alternates, REPEATS times; the table gives the median of each ratio.

    CLEANRL_PPO=/path/to/cleanrl/ppo.py python benchmark/rd_ppo_speed.py
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPEATS = int(os.environ.get("REPEATS", "3"))
CLEANRL_HP = ["--num-envs", "4", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "4",
              "--learning-rate", "2.5e-4", "--total-timesteps", "100000"]


def timed(cmd, env=None):
    """(wall s, CPU s of the child) of one command run in a fresh temporary folder."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(cmd, cwd=d, env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                                        **(env or {})}, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ours(*args):
    return [sys.executable, os.path.join(REPO, "rd_ppo.py"), *args]


def compare(name, a, b, steps, use_wall=False, env_b=None):
    ratios, ta, tb = [], [], []
    for _ in range(REPEATS):
        wa, ca = timed(a)
        wb, cb = timed(b, env_b)
        xa, xb = (wa, wb) if use_wall else (ca, cb)
        ta.append(xa), tb.append(xb), ratios.append(xb / xa)
    unit = "wall s" if use_wall else "CPU s"
    print(f"| {name} | {statistics.median(ta):.1f} {unit} | {statistics.median(tb):.1f} {unit} | "
          f"{statistics.median(ratios):.2f} | {steps} |", flush=True)


def main():
    print("| comparison (A vs B) | A | B | B / A (median) | steps per agent |")
    print("|---|---|---|---|---|")
    cleanrl = os.environ.get("CLEANRL_PPO")
    if cleanrl:
        env = {"PYTHONPATH": os.environ.get("PYTHONPATH_CLEANRL", "")}
        compare("rd_ppo.py --rd False vs CleanRL ppo.py, CleanRL's hyperparameters", ours(*CLEANRL_HP, "--rd", "False"),
                [sys.executable, cleanrl, *CLEANRL_HP, "--no-cuda", "--env-id", "CartPole-v1"], 100_000, env_b=env)
    base = ["--total-timesteps", "51200", "--rd-weight", "0.3"]
    compare("module, --rd-input False vs True", ours(*base), ours(*base, "--rd-input", "True"), 51_200)
    compare("--num-seeds 1 vs 10 (wall time)", ours(*base), ours(*base, "--num-seeds", "10"), 51_200, use_wall=True)


if __name__ == "__main__":
    main()
