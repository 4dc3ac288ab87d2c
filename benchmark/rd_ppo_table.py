"""Tables of benchmark/rd_ppo_grid.sh: one row per cell (an rd_ppo.py --num-seeds run), mean and 95%
t-interval over its agents of the final 20-episode return, the AUC (time-average of the running
mean return over training) and the steps to a running mean of 475 (over the agents that got there).

    python benchmark/rd_ppo_table.py benchmark/out/rd_ppo_grid
"""

import json
import sys
from pathlib import Path


def cell_summaries(root: Path):
    for path in sorted(root.glob("*/runs/*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("num_seeds", 1) > 1:
            yield path.parts[-4], s


def ci(d):
    if d is None or d.get("mean") is None:
        return "n/a"
    if d.get("ci_low") is None:
        return f"{d['mean']:.0f}"
    return f"{d['mean']:.0f} [{d['ci_low']:.0f}, {d['ci_high']:.0f}]"


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmark/out/rd_ppo_grid")
    rows = list(cell_summaries(root))
    for prefix, title in (("sl_", "stateless CartPole, 150k steps"), ("cp_", "CartPole-v1, our defaults, 100k steps"),
                          ("cr_", "CartPole-v1, CleanRL's hyperparameters, 200k steps")):
        chosen = [(n, s) for n, s in rows if n.startswith(prefix)]
        if not chosen:
            continue
        print(f"\n### {title}\n")
        print("| cell | n | status | final return(20) | AUC | steps to 475 (solved) | SPS |")
        print("|---|---|---|---|---|---|---|")
        for name, s in chosen:
            print(f"| {name} | {s['num_seeds']} | {s['status']} | {ci(s['final_return_mean20'])} | {ci(s['auc'])} | "
                  f"{ci(s['steps_to_475'])} ({s['solved']}/{s['num_seeds']}) | {s['SPS']:.0f} |")


if __name__ == "__main__":
    main()
