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


def rows_for(h, p=""):
    """The numbers of one seed's run (prefix p: the hand-set rule's entries)."""
    g = lambda key: get(h, p + key)
    diff = lambda a, b: None if a is None or b is None else a - b
    ep = h[p + "best"]["episodes"]
    return {"return": g("best"), "ep1": ep[0], "ep6": ep[-1], "learning": ep[-1] - ep[0],
            "zeroed": g("reward_zeroed"), "shuffled": g("reward_shuffled"),
            "best-shuffled": diff(g("best"), g("reward_shuffled")), "off": g("plasticity_off"),
            "fresh": g("frozen_fresh"), "same": g("frozen_same"), "same-fresh": diff(g("frozen_same"), g("frozen_fresh"))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    opts = ap.parse_args()
    groups = defaultdict(dict)
    for run_dir in sorted(Path(opts.runs).iterdir()):
        if not (run_dir / "summary.json").exists():
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("status") != "ok":
            continue
        config = json.loads((run_dir / "config.json").read_text())["args"]
        groups[config["exp_name"]][config["seed"]] = summary
    fixed_name = next((n for n in groups if "actor" in n), None)
    table = {}
    for name, runs in sorted(groups.items()):
        table[name] = {seed: rows_for(s["heldout"]) for seed, s in runs.items()}
    per_seed = {}
    for runs in groups.values():
        per_seed.update({seed: s["heldout"] for seed, s in runs.items()})
    table["hand-set node perturbation (not evolved)"] = {seed: rows_for(h, "hand_rule/") for seed, h in per_seed.items()}
    fixed = table.get(fixed_name, {})
    print("| method | seeds | lifetime return | episode 1 | episode 6 | learning (ep 6 − ep 1) | "
          "minus the fixed actor (paired) |")
    print("|---|---|---|---|---|---|---|")
    for name, seeds in table.items():
        col = lambda key: ci([r[key] for r in seeds.values()])
        vs = ci([r["return"] - fixed[s]["return"] for s, r in seeds.items() if s in fixed])
        print(f"| {name} | {len(seeds)} | {col('return')} | {col('ep1')} | {col('ep6')} | {col('learning')} | {vs} |")
    for key, label in (("oracle", "oracle (told where the food is)"), ("zero_action", "zero action")):
        hs = list(per_seed.values())
        print(f"| {label} | {len(hs)} | {ci([get(h, key) for h in hs])} | {ci([h[key]['episodes'][0] for h in hs])} | "
              f"{ci([h[key]['episodes'][-1] for h in hs])} | — | — |")
    print()
    print("| method | reward zeroed | reward shuffled | return − shuffled (paired) | plasticity off | "
          "frozen, fresh layouts | frozen, same layouts | same − fresh (paired) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seeds in table.items():
        if name == fixed_name:
            continue
        col = lambda key: ci([r[key] for r in seeds.values()])
        print(f"| {name} | " + " | ".join(col(k) for k in ("zeroed", "shuffled", "best-shuffled", "off", "fresh", "same",
                                                            "same-fresh")) + " |")
    print()
    print("| method | per seed: lifetime return (seed: value) | champion's rank among the re-evaluated top k |")
    print("|---|---|---|")
    for name, runs in sorted(groups.items()):
        vals = ", ".join(f"{seed}: {s['heldout']['best']['return']:.2f}" for seed, s in sorted(runs.items()))
        print(f"| {name} | {vals} | {[s.get('champion_rank') for _, s in sorted(runs.items())]} |")


if __name__ == "__main__":
    main()
