"""Table and curves of benchmark/self_critic.sh: one row per setting (runs grouped by --exp-name).

    python benchmark/self_critic_table.py --runs benchmark/out/self_critic/runs --out benchmark/self_critic.png

Reads each run's summary.json. Steps-to-hack is the hack detector's self step (see self_critic_lm.py);
the mean +- std is over the runs that hacked, and "k/n hacked" says how many did (a run that never
hacked is censored at its --self-steps, not averaged in). Val CE columns are mean +- std over all runs.
The figure shows mean validation CE (+- std over seeds) against the self step, one line per setting.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def fmt(values, digits=1):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def last_per_self_step(curve):
    """{self_step: val_ce} keeping the last evaluation at each self step (a guard restore re-evaluates)."""
    return {p["self_step"]: p["val_ce"] for p in curve}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="benchmark/out/self_critic/runs")
    ap.add_argument("--out", default="benchmark/self_critic.png")
    opts = ap.parse_args()
    groups = defaultdict(list)
    for run_dir in sorted(Path(opts.runs).iterdir()):
        if (run_dir / "summary.json").exists():
            config = json.loads((run_dir / "config.json").read_text())["args"]
            groups[config["exp_name"]].append(json.loads((run_dir / "summary.json").read_text()))
    if not groups:
        raise SystemExit(f"self_critic_table.py: error: no finished runs under {opts.runs}")

    print("| setting | n | hacked | steps to hack | val CE end of phase 1 | val CE end of phase 2 | "
          "phase-2 best | end − phase 1 | critic agreement (end) | guard restores |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in sorted(groups.items()):
        hacks = [r["hack_step"] for r in runs if r["hack_step"] is not None]
        censor = max(r["self_steps"] for r in runs)
        steps = fmt(hacks) if hacks else f"none within {censor}"
        print(f"| {name} | {len(runs)} | {len(hacks)}/{len(runs)} | {steps} | "
              f"{fmt([r['val_ce_end_phase1'] for r in runs], 3)} | {fmt([r['val_ce_end'] for r in runs], 3)} | "
              f"{fmt([r['val_ce_phase2_best'] for r in runs], 3)} | {fmt([r['val_ce_end_minus_phase1'] for r in runs], 3)} | "
              f"{fmt([r['critic_agreement_end'] for r in runs], 3)} | {fmt([r['guard_restores'] for r in runs])} |")
        curves = [last_per_self_step(r["ce_curve"]) for r in runs]
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        ys = np.array([[c[x] for x in xs] for c in curves])
        line, = ax.plot(xs, ys.mean(0), "-o", ms=2, label=f"{name} (n={len(runs)})")
        ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.15, color=line.get_color())
    ax.set(xlabel="self step (phase 2)", ylabel="validation CE (nats/token)", yscale="log",
           title="self_critic_lm: true validation CE during self training (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(opts.out, dpi=110)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
