"""Tables of benchmark/gist_meta_issue13_controls.sh (read from
benchmark/out/gist_meta_issue13_controls/runs/*/summary.json): per corpus, k and step count, the
mean and 95% t-interval over seeds (n = 3: t = 4.30) of the scored CE of full, gist and none, the
positive-control gap none - full, and retention R = (none - gist) / (none - full).
Run: python benchmark/gist_meta_issue13_controls_tables.py"""
import glob
import json
import math
import os
from collections import defaultdict

T95 = {2: 12.71, 3: 4.303, 4: 3.182, 5: 2.776}
root = os.path.join(os.path.dirname(__file__), "out", "gist_meta_issue13_controls", "runs")
runs = defaultdict(list)
for path in sorted(glob.glob(os.path.join(root, "*", "summary.json"))):
    s = json.load(open(path))
    if s.get("status") == "ok":
        runs[os.path.basename(os.path.dirname(path)).split("__")[0]].append(s)


def ci(vals):
    vals = [v for v in vals if v is not None]
    n = len(vals)
    if n == 0:
        return "—"
    m = sum(vals) / n
    if n == 1:
        return f"{m:.3f} (n=1)"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    return f"{m:.3f} ± {T95.get(n, 2.0) * sd / math.sqrt(n):.3f}"


def key(name):                                     # ctl_<corpus>_k<k>_n<steps>
    _, corpus, k, n = name.split("_")
    return corpus, int(k[1:]), int(n[1:])


print("| corpus | k | stage-A steps | n | CE full | CE gist | CE none | gap none − full | gap per seed | "
      "retention R | R per seed |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name in sorted(runs, key=lambda n: (key(n)[0], -key(n)[1], key(n)[2])):
    corpus, k, steps = key(name)
    rs = sorted(runs[name], key=lambda s: s.get("seed", 0))
    gaps = [s["a_gap_none_full"] for s in rs]
    rets = [s.get("a_retention") for s in rs]
    print(f"| {corpus} | {k} | {steps} | {len(rs)} | " + " | ".join(ci([s[c] for s in rs]) for c in (
        "a_ce_full", "a_ce_gist", "a_ce_none")) + f" | {ci(gaps)} | " + ", ".join(f"{g:.2f}" for g in gaps)
        + f" | {ci(rets)} | " + ", ".join("—" if r is None else f"{r:.2f}" for r in rets) + " |")
