"""Tables (markdown, stdout) and fitness curves of ga_learning_rule.py runs, grouped by --exp-name.

    python benchmark/ga_learning_rule_table.py benchmark/out/ga_learning_rule/runs --plot fitness.png

Each cell is mean +- std over the runs (seeds) of a group. Held-out numbers are each run's mean over
its unseen lifetimes (summary.json "heldout"): the evolved individual, its first and last quarter,
and the controls (plasticity off, reward zeroed, random rule, push-toward-food controller, zero action).
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

CONTROLS = [("best", "return"), ("best", "first_quarter"), ("best", "last_quarter"), ("plasticity_off", "return"),
            ("reward_zeroed", "return"), ("random_rule", "return"), ("push_toward_food", "return"),
            ("zero_action", "return")]


def fmt(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--plot", default=None)
    opts = ap.parse_args()
    groups = defaultdict(list)
    for run_dir in sorted(Path(opts.runs).iterdir()):
        if not (run_dir / "summary.json").exists():
            continue
        config = json.loads((run_dir / "config.json").read_text())["args"]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        groups[config["exp_name"]].append((config, json.loads((run_dir / "summary.json").read_text()), rows))

    print("| group | runs | generations | final best fitness | final elite mean | final population mean | wall (s) | individual-steps/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in sorted(groups.items()):
        s = [r[1] for r in runs]
        print(f"| {name} | {len(runs)} | {s[0]['generations_done']} | {fmt([x['final_best_fitness'] for x in s])} | "
              f"{fmt([x['final_elite_mean'] for x in s])} | {fmt([x['final_mean_fitness'] for x in s])} | "
              f"{fmt([x['wall_time_s'] for x in s], 0)} | {fmt([x['individual_steps_per_s'] for x in s], 0)} |")
    print()
    print("| group | " + " | ".join(f"{c} {k}".replace("best ", "evolved ").replace(" return", "") for c, k in CONTROLS) + " |")
    print("|---|" + "---|" * len(CONTROLS))
    for name, runs in sorted(groups.items()):
        cells = []
        for control, key in CONTROLS:
            vals = [r[1]["heldout"][control][key] for r in runs if control in r[1].get("heldout", {})]
            cells.append(fmt(vals) if vals else "—")
        print(f"| {name} | " + " | ".join(cells) + " |")

    if opts.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for name, runs in sorted(groups.items()):
            n = min(len(r[2]) for r in runs)
            for ax, key in zip(axes, ("fitness/best", "fitness/mean")):
                y = np.array([[row[key] for row in r[2][:n]] for r in runs])
                m, sd = y.mean(0), y.std(0)
                line, = ax.plot(range(n), m, label=f"{name} (n={len(runs)})")
                ax.fill_between(range(n), m - sd, m + sd, color=line.get_color(), alpha=0.2)
        for ax, title in zip(axes, ("best fitness", "population mean fitness")):
            ax.set(xlabel="generation", ylabel="lifetime return (FoodWorld)", title=f"{title}, mean ± std over seeds")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(opts.plot, dpi=100)
        print(f"\nwrote {opts.plot}")


if __name__ == "__main__":
    main()
