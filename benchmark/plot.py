"""Mean +- std learning curves across seeds, and a table of each group's summary.json numbers.

    python benchmark/plot.py --runs runs --group-by env gamma rd_weight rd --out curves.png

Reads runs/*/config.json (the run's args), metrics.jsonl and summary.json. Runs that share the
values of --group-by form one curve: each run's per-episode metric is smoothed with a running
mean over --window episodes, put on a common x grid by step interpolation (the latest value so
far, NaN before the first episode), and the group's mean +- std across runs is drawn. The table
(markdown, on stdout) gives mean +- std over runs of each --summary-keys entry, and how many runs
reached each threshold key (None counts as not reached).
"""

import argparse
import json
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def load_runs(root: Path):
    for run_dir in sorted(p for p in root.iterdir() if (p / "config.json").exists()):
        config = json.loads((run_dir / "config.json").read_text())
        if config["args"].get("num_seeds", 1) > 1:          # rd_ppo --num-seeds: the agents have own folders
            continue
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        yield run_dir.name, config, rows, summary


def curve(rows, x_axis, metric, window):
    pts = [(r[x_axis], r[metric]) for r in rows if metric in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = map(np.asarray, zip(*pts))
    c = np.cumsum(np.insert(y.astype(float), 0, 0.0))
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(i - window, 0)
    return x, (c[i] - c[lo]) / (i - lo)


def fmt(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="folder holding run folders")
    ap.add_argument("--group-by", nargs="+", default=["env", "gamma", "rd_weight", "rd"], help="config args")
    ap.add_argument("--metric", default="charts/episodic_return")
    ap.add_argument("--window", type=int, default=20, help="running-mean window in episodes")
    ap.add_argument("--filter", nargs="*", default=[], help="KEY=VALUE config constraints, e.g. env=cartpole")
    ap.add_argument("--summary-keys", nargs="*", default=["steps_to_475", "final_return_mean20", "auc"])
    ap.add_argument("--out", default="curves.png")
    ap.add_argument("--title", default="")
    opts = ap.parse_args()

    groups = defaultdict(list)
    for name, config, rows, summary in load_runs(Path(opts.runs)):
        args = config["args"]
        if any(str(args.get(k)) != v for k, v in (f.split("=", 1) for f in opts.filter)):
            continue
        key = tuple((k, args.get(k)) for k in opts.group_by)
        groups[key].append((curve(rows, config["x_axis"], opts.metric, opts.window), summary, config["x_axis"]))
    if not groups:
        raise SystemExit(f"plot.py: error: no runs under {opts.runs} match")

    fig, ax = plt.subplots(figsize=(8, 5))
    print("| " + " | ".join(opts.group_by) + " | n | " + " | ".join(opts.summary_keys) + " |")
    print("|" + "---|" * (len(opts.group_by) + 1 + len(opts.summary_keys)))
    for key, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        x_max = max((c[0][-1] for c, _, _ in members if len(c[0])), default=0)
        grid = np.linspace(0, x_max, 200)
        ys = []
        for (x, y), _, _ in members:
            idx = np.searchsorted(x, grid, side="right") - 1
            ys.append(np.where(idx >= 0, y[np.clip(idx, 0, None)] if len(y) else np.nan, np.nan))
        ys = np.array(ys, dtype=float)
        with warnings.catch_warnings():                       # grid points before any run's first episode
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)
        label = ", ".join(f"{k}={v}" for k, v in key) + f" (n={len(members)})"
        ax.plot(grid, mean, label=label)
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        cells = []
        for k in opts.summary_keys:
            vals = [s.get(k) for _, s, _ in members]
            reached = sum(v is not None for v in vals)
            cells.append(fmt(vals) + ("" if reached == len(vals) else f" ({reached}/{len(vals)} reached)"))
        print("| " + " | ".join(str(v) for _, v in key) + f" | n={len(members)} | " + " | ".join(cells) + " |")
    ax.set(xlabel=members[0][2], ylabel=f"{opts.metric} ({opts.window}-episode mean)", title=opts.title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(opts.out, dpi=110)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
