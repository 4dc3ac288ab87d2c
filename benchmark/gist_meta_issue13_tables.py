"""Tables of the issue-13 benchmarks, read from benchmark/out/<folder>/runs/*/summary.json: mean and
95% t-interval over seeds (n = 3: t = 4.30; n = 6: 2.57).
    python benchmark/gist_meta_issue13_tables.py            # benchmark/gist_meta_issue13.sh; retention only
                                                            # over runs whose gap CE_none - CE_full >= 0.5 nats
    python benchmark/gist_meta_issue13_tables.py controls   # benchmark/gist_meta_issue13_controls.sh
    python benchmark/gist_meta_issue13_tables.py online200  # benchmark/gist_meta_online200.sh
    python benchmark/gist_meta_issue13_tables.py defaults   # benchmark/gist_meta_default_controls.sh
    python benchmark/gist_meta_issue13_tables.py curve      # benchmark/gist_meta_issue13_curve.sh; retention only
                                                            # over runs whose gap CE_none - CE_full >= 1 nat"""
import glob
import json
import math
import os
import sys
from collections import defaultdict

CURVE_MIN_GAP = 1.0   # nats: the curve reports retention only over runs whose gap CE_none - CE_full reaches it
T95 = {2: 12.71, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}   # by n, df = n - 1


def load_runs(folder: str) -> dict:
    """{experiment name: [summary of each run with status ok]} of benchmark/out/<folder>/runs."""
    runs = defaultdict(list)
    root = os.path.join(os.path.dirname(__file__), "out", folder, "runs")
    for path in sorted(glob.glob(os.path.join(root, "*", "summary.json"))):
        s = json.load(open(path))
        if s.get("status") == "ok":
            runs[os.path.basename(os.path.dirname(path)).split("__")[0]].append(s)
    for name in runs:
        runs[name].sort(key=lambda s: s.get("seed", 0))
    return runs


def ci(vals):
    vals = [v for v in vals if v is not None]
    n = len(vals)
    if n == 0:
        return "—"
    m = sum(vals) / n
    if n == 1:
        return f"{m:.3f} (n=1)"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    return f"{m:.3f} ± {T95[n] * sd / math.sqrt(n):.3f}"


def issue13_tables(runs) -> None:
    def col(name, key):
        return ci([s.get(key) for s in runs[name]])

    print("## Stage A, P = 8, k = 4 (main)  n =", len(runs["main"]))
    print("| CE full | CE gist | CE none (ours) | CE neg (Mu et al.) | gap none-full | gap neg-full | retention vs none | vs neg |")
    print("|---|---|---|---|---|---|---|---|")
    print("| " + " | ".join(col("main", k) for k in ("a_ce_full", "a_ce_gist", "a_ce_none", "a_ce_neg", "a_gap_none_full",
                                                      "a_gap_neg_full", "a_retention", "a_retention_neg")) + " |")
    print("\n## Retention curve (masks trained at each point)")
    print("| P | k | n | CE full | CE gist | CE none | gap none-full | retention (runs with gap >= 0.5 nats) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in sorted([n for n in runs if n.startswith("curve_")] + ["main"],
                       key=lambda n: (8, 4) if n == "main" else tuple(int(x[1:]) for x in n.split("_")[1:])):
        P, k = (8, 4) if name == "main" else tuple(int(x[1:]) for x in name.split("_")[1:])
        passing = [s["a_retention"] for s in runs[name] if s.get("a_gap_none_full", 0) >= 0.5]
        ret = f"{ci(passing)} ({len(passing)} of {len(runs[name])} runs pass)" if passing else \
            f"undefined: positive control fails in all {len(runs[name])} runs"
        print(f"| {P} | {k} | {len(runs[name])} | " + " | ".join(col(name, key) for key in (
            "a_ce_full", "a_ce_gist", "a_ce_none", "a_gap_none_full")) + f" | {ret} |")
    print("\n## Stage B (main)")
    print("| val CE none | L_B | true CE | pair cos truth start->end | pair cos pred end | eff rank pred / truth end | grad cos(L_B, CE) mean | first |")
    print("|---|---|---|---|---|---|---|---|")
    m = "main"
    print(f"| {col(m, 'b_val_ce_none')} | {col(m, 'b_val_ce_gist')} | {col(m, 'b_val_ce_ce')} | {col(m, 'b_pair_cos_true_start')} -> "
          f"{col(m, 'b_pair_cos_true_final')} | {col(m, 'b_pair_cos_pred_final')} | {col(m, 'b_eff_rank_pred_final')} / "
          f"{col(m, 'b_eff_rank_true_final')} | {col(m, 'b_grad_cos_ce_mean')} | {col(m, 'b_grad_cos_ce_first')} |")
    print("\n## Stage C online phase (main): CE over the whole stream (nats/token), gain = none - rule")
    print("| rule | CE over the stream | last quarter | gain vs none |")
    print("|---|---|---|---|")
    for r in ("gist_meta", "gist_fixed", "stage_b", "ce", "none"):
        print(f"| {r} | {col(m, f'c_online_ce_{r}')} | {col(m, f'c_online_ce_last_{r}')} | {col(m, f'c_online_gain_{r}')} |")
    print("\n## Stage C episodic K-step gains (main)")
    print("| " + " | ".join(("learned", "fixed", "stage_b", "ce")) + " | e^s |")
    print("|---|---|---|---|---|")
    print("| " + " | ".join(col(m, f"c_eval_gain_{r}") for r in ("learned", "fixed", "stage_b", "ce"))
          + f" | {col(m, 'c_loss_scale_final')} |")
    print("\n## Speed inside the main runs")
    print(f"masked/unmasked forward {col(m, 'a_fwd_masked_ratio')}; second-order meta step / CE fwd+bwd "
          f"{col(m, 'c_meta_vs_ce_step')}; / plain step {col(m, 'c_meta_vs_plain')}")


def controls_table(runs) -> None:
    """Per corpus, k and step count: scored CE of full, gist and none, the positive-control gap
    none - full and retention R = (none - gist) / (none - full), with the per-seed values."""
    def key(name):                                 # ctl_<corpus>_k<k>_n<steps>
        _, corpus, k, n = name.split("_")
        return corpus, int(k[1:]), int(n[1:])

    print("| corpus | k | stage-A steps | n | CE full | CE gist | CE none | gap none − full | gap per seed | "
          "retention R | R per seed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(runs, key=lambda n: (key(n)[0], -key(n)[1], key(n)[2])):
        corpus, k, steps = key(name)
        rs = runs[name]
        gaps = [s["a_gap_none_full"] for s in rs]
        rets = [s.get("a_retention") for s in rs]
        print(f"| {corpus} | {k} | {steps} | {len(rs)} | " + " | ".join(ci([s[c] for s in rs]) for c in (
            "a_ce_full", "a_ce_gist", "a_ce_none")) + f" | {ci(gaps)} | " + ", ".join(f"{g:.2f}" for g in gaps)
            + f" | {ci(rets)} | " + ", ".join("—" if r is None else f"{r:.2f}" for r in rets) + " |")


def online200_table(runs) -> None:
    """CE over the N = 200 stream per rule, its last quarter, and the gain none - rule per seed."""
    rs = runs["online200"]
    print(f"| rule | CE over the stream (N = 200, {len(rs)} seeds) | last quarter | gain vs none (+ = better) |")
    print("|---|---|---|---|")
    for rule in ("gist_meta", "gist_fixed", "stage_b", "ce", "none"):
        gain = [s["c_online_ce_none"] - s[f"c_online_ce_{rule}"] for s in rs]
        print(f"| {rule} | {ci([s[f'c_online_ce_{rule}'] for s in rs])} | {ci([s[f'c_online_ce_last_{rule}'] for s in rs])} "
              f"| {ci(gain)} (per seed {', '.join(f'{g:+.3f}' for g in gain)}) |")


def curve_table(runs) -> None:
    """Retention curve on --corpus repeat, one table per stage-A step count: per (P, k), sorted by P
    then k, scored CE of full, gist and none, the positive-control gap none - full and retention
    R = (none - gist) / (none - full) over the runs whose gap is >= 1 nat (R of a run whose full
    model did not learn the copy is a ratio of noise); n = seeds."""
    def key(name):                                 # curve_P<P>_k<k>_n<steps>
        _, P, k, n = name.split("_")
        return int(n[1:]), int(P[1:]), int(k[1:])

    for steps in sorted({key(n)[0] for n in runs}):
        print(f"## Stage A on --corpus repeat, {steps} steps per model")
        print("| P | k | n | CE full | CE gist | CE none | gap none − full | retention (runs with gap >= 1 nat) "
              "| per seed: gap / R |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in sorted((n for n in runs if key(n)[0] == steps), key=key):
            _, P, k = key(name)
            rs = runs[name]
            passing = [s.get("a_retention") for s in rs if s.get("a_gap_none_full", 0) >= CURVE_MIN_GAP]
            ret = f"{ci(passing)} ({len(passing)} of {len(rs)} runs pass)" if passing else \
                f"undefined: positive control fails in all {len(rs)} runs"
            print(f"| {P} | {k} | {len(rs)} | " + " | ".join(ci([s.get(c) for s in rs]) for c in (
                "a_ce_full", "a_ce_gist", "a_ce_none", "a_gap_none_full")) + f" | {ret} | " + ", ".join(
                f"{s['a_gap_none_full']:.2f} / " + (f"{s['a_retention_unchecked']:.2f}" if s['a_gap_none_full'] >= CURVE_MIN_GAP
                                                    else "—") for s in rs) + " |")


def defaults_table(runs) -> None:
    """Positive control of each synthetic corpus at the script's defaults (benchmark/gist_meta_default_controls.sh):
    per corpus, the stage-A steps (from each run's config.json), CE of full, gist and none, the gap none - full
    with each seed's value, and retention R (null where the script's gate refused it)."""
    root = os.path.join(os.path.dirname(__file__), "out", "gist_meta_default_model", "runs")
    print("| corpus | stage-A steps | n | CE full | CE gist | CE none | gap none − full | gap per seed | retention R | R per seed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(runs):                      # dm_<corpus>
        rs = runs[name]
        steps = sorted({json.load(open(p))["args"]["a_steps"] for p in glob.glob(os.path.join(root, name + "__*", "config.json"))})
        print(f"| {name[3:]} | {', '.join(map(str, steps))} | {len(rs)} | " + " | ".join(
            ci([s.get(c) for s in rs]) for c in ("a_ce_full", "a_ce_gist", "a_ce_none", "a_gap_none_full"))
            + " | " + ", ".join(f"{s['a_gap_none_full']:.2f}" for s in rs) + f" | {ci([s.get('a_retention') for s in rs])} | "
            + ", ".join("—" if s.get("a_retention") is None else f"{s['a_retention']:.2f}" for s in rs) + " |")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "issue13"
    folders = {"issue13": ("gist_meta_issue13", issue13_tables), "controls": ("gist_meta_issue13_controls", controls_table),
               "online200": ("gist_meta_online200", online200_table), "curve": ("gist_meta_issue13_curve", curve_table),
               "defaults": ("gist_meta_default_model", defaults_table)}
    if which not in folders:
        sys.exit(f"usage: python benchmark/gist_meta_issue13_tables.py [{' | '.join(folders)}]")
    folder, table = folders[which]
    table(load_runs(folder))
