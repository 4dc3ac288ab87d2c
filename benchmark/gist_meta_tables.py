"""Print the README tables of gist_meta.py from the runs of benchmark/gist_meta.sh.

    python benchmark/gist_meta_tables.py [--runs benchmark/out/gist_meta/runs]
Mean ± std over seeds (population std of the per-seed values; n given)."""

import argparse
import collections
import glob
import json
import os
import statistics as st

parser = argparse.ArgumentParser()
parser.add_argument("--runs", default="benchmark/out/gist_meta/runs")
runs_dir = parser.parse_args().runs

groups = collections.defaultdict(list)                   # exp_name -> [(seed, summary, args)]
for path in sorted(glob.glob(os.path.join(runs_dir, "*", "summary.json"))):
    config = json.load(open(os.path.join(os.path.dirname(path), "config.json")))["args"]
    groups[config["exp_name"]].append((config["seed"], json.load(open(path)), config))


def fmt(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{st.mean(values):.{digits}f} ± {st.pstdev(values):.{digits}f}"


def col(exp, key):
    return [s.get(key) for _, s, _ in groups.get(exp, [])]


def status(exp):
    bad = [f"seed {seed}: {s['status']}" for seed, s, _ in groups.get(exp, []) if s["status"] != "ok"]
    return f" (not ok: {bad})" if bad else ""


print(f"runs: {', '.join(f'{k} x{len(v)}' for k, v in sorted(groups.items()))}\n")

head = "a_main" if "a_main" in groups else "main"        # a_main: main's stage A again + first-token CE
print(f"## Stage A: continuation CE (nats/token) on validation text, k=4, Lc=64, Lx=16 [{head}]" + status(head))
print("| seed | CE none | CE gist | CE full | retention | first-4 CE none | gist | full | first-4 retention |")
print("|---|---|---|---|---|---|---|---|---|")
for seed, s, _ in sorted(groups.get(head, [])):
    hd = [s.get(f"a_ce_head_{m}", float("nan")) for m in ("none", "gist", "full")]
    print(f"| {seed} | {s['a_ce_none']:.3f} | {s['a_ce_gist']:.3f} | {s['a_ce_full']:.3f} | {s.get('a_retention', float('nan')):.3f} | "
          f"{hd[0]:.3f} | {hd[1]:.3f} | {hd[2]:.3f} | {s.get('a_retention_head', float('nan')):.3f} |")
print(f"| mean (n={len(groups.get(head, []))}) | " + " | ".join(fmt(col(head, key)) for key in (
    "a_ce_none", "a_ce_gist", "a_ce_full", "a_retention", "a_ce_head_none", "a_ce_head_gist", "a_ce_head_full",
    "a_retention_head")) + " |\n")

ref1 = next((s for seed, s, _ in groups.get(head, []) if seed == 1), None)
print("## Stage A: retention vs k and context length (seed 1)")
print("| k | Lc | CE none | CE gist | CE full | retention | first-4: none / gist / full | first-4 retention |")
print("|---|---|---|---|---|---|---|---|")
rows = []
for exp in ("a_k1", head, "a_k16", "a_ctx16"):
    for seed, s, a in groups.get(exp, []):
        if seed != 1:
            continue
        ref = s if "a_ce_none" in s else ref1          # k sweeps train the gist mask only
        ret = (ref["a_ce_none"] - s["a_ce_gist"]) / (ref["a_ce_none"] - ref["a_ce_full"])
        hn, hg, hf = ref.get("a_ce_head_none"), s.get("a_ce_head_gist"), ref.get("a_ce_head_full")
        hret = (hn - hg) / (hn - hf) if None not in (hn, hg, hf) else float("nan")
        note = "" if ref is s else " (none/full: k=4 run)"
        rows.append((a["num_gist_tokens"], a["context_len"],
                     f"| {a['num_gist_tokens']} | {a['context_len']} | {ref['a_ce_none']:.3f} | {s['a_ce_gist']:.3f} | "
                     f"{ref['a_ce_full']:.3f} | {ret:.3f}{note} | {hn or float('nan'):.3f} / {hg or float('nan'):.3f} / "
                     f"{hf or float('nan'):.3f} | {hret:.3f} |"))
for _, _, line in sorted(rows):
    print(line)
print()

print("## Stage B: validation CE after N updates (from stage A's gist model)" + status("main"))
print("| seed | no update | gist loss L_B | true CE | gist spread truth (start -> end) | gist spread prediction (end) |")
print("|---|---|---|---|---|---|")
for seed, s, a in sorted(groups.get("main", [])):
    print(f"| {seed} | {s['b_val_ce_none']:.3f} | {s['b_val_ce_gist']:.3f} | {s['b_val_ce_ce']:.3f} | "
          f"{s['b_gist_spread_true_start']:.3f} -> {s['b_gist_spread_true_final']:.3f} | {s['b_gist_spread_pred_final']:.3f} |")
print(f"| mean | {fmt(col('main', 'b_val_ce_none'))} | {fmt(col('main', 'b_val_ce_gist'))} | {fmt(col('main', 'b_val_ce_ce'))} | "
      f"| {fmt(col('main', 'b_gist_spread_pred_final'))} |\n")

rules = ("learned", "fixed", "stage_b", "ce", "none")
print("## Stage C: validation CE lowered by K=5 inner SGD steps (nats; vs no update; + = better)")
print("| variant | n | " + " | ".join(rules) + " | loss scale e^s | inner improvement (last 20 meta steps) |")
print("|---|---|" + "---|" * (len(rules) + 2))
for exp, label in (("main", "next, second order"), ("c_similar", "similar, second order"),
                   ("c_first_order", "next, first order")):
    if exp not in groups:
        continue
    cells = " | ".join(fmt(col(exp, f"c_eval_gain_{r}"), 4) for r in rules)
    print(f"| {label}{status(exp)} | {len(groups[exp])} | {cells} | {fmt(col(exp, 'c_loss_scale_final'))} | "
          f"{fmt(col(exp, 'c_mean_inner_improvement_last20'), 5)} |")
print()

print("## Speed (same process, min over repeats; the VM was shared with other jobs)")
print("| variant | n | stage-A tokens/s (gist) | masked / unmasked forward | s per meta step | meta / plain step | meta / CE fwd+bwd |")
print("|---|---|---|---|---|---|---|")
for exp in ("main", "c_similar", "c_first_order"):
    if exp not in groups:
        continue
    print(f"| {exp} | {len(groups[exp])} | {fmt(col(exp, 'a_tokens_per_s_gist'), 0)} | {fmt(col(exp, 'a_fwd_masked_ratio'), 2)} | "
          f"{fmt(col(exp, 'c_sec_per_meta_step'), 2)} | {fmt(col(exp, 'c_meta_vs_plain'), 2)} | {fmt(col(exp, 'c_meta_vs_ce_step'), 2)} |")
print("\nwall time per run (s): " + ", ".join(f"{k} {fmt(col(k, 'wall_time_s'), 0)}" for k in sorted(groups)))
