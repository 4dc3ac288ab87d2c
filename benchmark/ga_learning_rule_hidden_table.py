"""Table (markdown, stdout) of benchmark/ga_learning_rule_hidden.sh: the hiddenfood task, one row per method.

    python benchmark/ga_learning_rule_hidden_table.py benchmark/out/ga_learning_rule_hidden/runs

Unit of replication: the seed (each seed's number is its mean over 64 held-out lifetimes). Cells are
mean ± the half-width of a 95% t-interval over the seeds (t with n - 1 degrees of freedom; n = 3 is
underpowered: the intervals are wide). "learning" is episode 6 minus episode 1 of the lifetime (paired per
seed). The hand-set rule, the oracle and zero action do not depend on the evolved method: they are read from
every run of a seed (the same lifetimes) and reported once.
"""

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci(values):
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return "—"
    mean = sum(values) / n
    if n == 1:
        return f"{mean:.2f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return f"{mean:.2f} ± {T95.get(n - 1, 1.96) * sd / math.sqrt(n):.2f}"


def get(h, key, field="return"):
    return h[key][field] if key in h else None


def learning(h, key):
    return h[key]["episodes"][-1] - h[key]["episodes"][0] if key in h else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    opts = ap.parse_args()
    groups = defaultdict(list)
    for run_dir in sorted(Path(opts.runs).iterdir()):
        if not (run_dir / "summary.json").exists():
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("status") != "ok":
            continue
        config = json.loads((run_dir / "config.json").read_text())["args"]
        groups[config["exp_name"]].append((config, summary))
    cols = ["lifetime return", "episode 1", "episode 6", "learning (ep 6 − ep 1)", "reward zeroed",
            "reward shuffled", "plasticity off", "frozen, fresh layouts", "frozen, same layouts", "seeds"]
    print("| method | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    fixed = defaultdict(dict)
    for name, runs in groups.items():
        hs = [s["heldout"] for _, s in runs]
        cells = [ci([get(h, "best") for h in hs]), ci([h["best"]["episodes"][0] for h in hs]),
                 ci([h["best"]["episodes"][-1] for h in hs]), ci([learning(h, "best") for h in hs]),
                 ci([get(h, "reward_zeroed") for h in hs]), ci([get(h, "reward_shuffled") for h in hs]),
                 ci([get(h, "plasticity_off") for h in hs]), ci([get(h, "frozen_fresh") for h in hs]),
                 ci([get(h, "frozen_same") for h in hs]), str(len(runs))]
        print(f"| {name} | " + " | ".join(cells) + " |")
        for config, s in runs:
            fixed[config["seed"]] = s["heldout"]
    hs = list(fixed.values())
    if hs:
        p = "hand_rule/"
        cells = [ci([get(h, p + "best") for h in hs]), ci([h[p + "best"]["episodes"][0] for h in hs]),
                 ci([h[p + "best"]["episodes"][-1] for h in hs]), ci([learning(h, p + "best") for h in hs]),
                 ci([get(h, p + "reward_zeroed") for h in hs]), ci([get(h, p + "reward_shuffled") for h in hs]),
                 ci([get(h, p + "plasticity_off") for h in hs]), ci([get(h, p + "frozen_fresh") for h in hs]),
                 ci([get(h, p + "frozen_same") for h in hs]), str(len(hs))]
        print("| hand-set node perturbation (not evolved) | " + " | ".join(cells) + " |")
        for key, label in (("oracle", "oracle (told where the food is)"), ("zero_action", "zero action")):
            cells = [ci([get(h, key) for h in hs]), ci([h[key]["episodes"][0] for h in hs]),
                     ci([h[key]["episodes"][-1] for h in hs])] + ["—"] * 6 + [str(len(hs))]
            print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("| method | champion rank among the re-evaluated top k (per seed) | final best training fitness |")
    print("|---|---|---|")
    for name, runs in groups.items():
        print(f"| {name} | {[s.get('champion_rank') for _, s in runs]} | "
              f"{ci([s.get('final_best_fitness') for _, s in runs])} |")


if __name__ == "__main__":
    main()
