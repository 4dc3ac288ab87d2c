"""Tables of benchmark/rd_ppo_grid.sh: one row per cell (an rd_ppo.py --num-seeds run), mean and 95%
t-interval over its agents of the final 20-episode return, the AUC (time-average of the running
mean return over training) and the steps to a running mean of 475 (over the agents that got there).
Then the gamma question paired by seed (agent m of every cell has the same seed, initial weights and
drive matrix): per lambda, AUC(gamma = 0.5) - AUC(gamma = 0) and AUC(gamma = 0.5) - AUC(plain PPO), and
pooled over lambda (each seed's mean over the lambdas, so n stays the number of seeds).

    python benchmark/rd_ppo_table.py benchmark/out/rd_ppo_grid
"""

import json
import math
import sys
from pathlib import Path

import numpy as np

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)


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


def paired(diffs):
    """mean [95% t-interval] of paired differences (n <= 16)."""
    d = np.asarray(diffs, dtype=float)
    half = T975[len(d) - 2] * d.std(ddof=1) / math.sqrt(len(d))
    return f"{d.mean():+.1f} [{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"


def per_agent_auc(cells, name):
    return {int(k): v["auc"] for k, v in cells[name]["per_agent"].items()} if name in cells else None


def gamma_pairs(cells, prefix):
    plain = per_agent_auc(cells, f"{prefix}plain")
    rows, pooled_g, pooled_p = [], [], []
    for lam in ("0.1", "0.3", "0.6", "0.9"):
        lo, hi = per_agent_auc(cells, f"{prefix}blend{lam}_g0"), per_agent_auc(cells, f"{prefix}blend{lam}_g0.5")
        if lo is None or hi is None or plain is None:
            continue
        seeds = sorted(lo)
        dg = [hi[k] - lo[k] for k in seeds]
        dp = [hi[k] - plain[k] for k in seeds]
        pooled_g.append(dg), pooled_p.append(dp)
        rows.append(f"| λ = {lam} | {paired(dg)} | {paired(dp)} |")
    if len(pooled_g) > 1:
        rows.append(f"| pooled over λ (per-seed mean) | {paired(np.mean(pooled_g, 0))} | {paired(np.mean(pooled_p, 0))} |")
    return rows


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
        pairs = gamma_pairs(dict(chosen), prefix) if prefix != "sl_" else []
        if pairs:
            print(f"\n#### {title}: the gamma effect, paired by seed (AUC)\n")
            print("| λ | γ = 0.5 minus γ = 0 | γ = 0.5 minus plain PPO |")
            print("|---|---|---|")
            print("\n".join(pairs))


if __name__ == "__main__":
    main()
