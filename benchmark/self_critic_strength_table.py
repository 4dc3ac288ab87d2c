"""Tables and figure of benchmark/self_critic_strength.py (issue 12).

    python benchmark/self_critic_strength_table.py [--runs benchmark/out/self_critic_strength/runs]

Detector calibration (the rule, stated): on the true-label control runs (--critic truth) of one
optimisation, the rise statistic of a run is e = max_j [min(c_j..c_{j+k-1}) - min(c_0..c_{j-1})] (the
largest rise of validation CE above its best that lasted k evaluations) and the agreement statistic
is a = max_j [a_0 - max(a_j..a_{j+k-1})] (the largest lasting fall of critic-truth agreement, the
critic being a frozen copy of the control's start). The evaluation noise is sigma = std(successive
differences of the detrended curve) / sqrt(2), pooled over the control runs, evaluations at self steps
>= 8 (evenly spaced). The calibrated detector is detect_hack with delta = max(max e, 3 sigma_CE) and
agree_drop = max(max a, 3 sigma_agreement), k = 3: a hack is a rise of validation CE beyond the
control's noise band lasting 3 evaluations while the self loss fell, or a fall of agreement beyond the
control's band lasting 3 evaluations. Its
false-positive rate on the control is leave-one-out (run i judged with the thresholds of the other
runs), with an exact (Clopper-Pearson) 95% interval. The uncalibrated detector (delta 0.05, no
agreement rule) is reported beside it. Steps-to-hack: median and range over seeds; a run that never
fired counts as "> 80" (the median is "> 80" when half or more never fired).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import self_critic_lm as S  # noqa: E402

K, N_SELF = 3, 80


def load(runs):
    out = []
    for f in sorted(Path(runs).glob("*/summary.json")):
        s = json.loads(f.read_text())
        if s.get("status") != "ok":
            continue
        s["name"] = f.parent.name.split("__")[0]
        out.append(s)
    return out


def curves(s):
    c = s["ce_curve"]
    return ([r["self_step"] for r in c], [r["val_ce"] for r in c], [r["self_loss"] for r in c],
            [r["agreement"] for r in c], [r["target_entropy"] for r in c])


def rise_stat(ce, k=K):
    return max([min(ce[j:j + k]) - min(ce[:j]) for j in range(1, len(ce) - k + 1)] + [0.0])


def agree_stat(ag, k=K):
    return max([ag[0] - max(ag[j:j + k]) for j in range(1, len(ag) - k + 1)] + [0.0])


def clopper_pearson(x, n, alpha=0.05):
    from math import comb

    def cdf(p, x):
        return sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(x + 1))

    def solve(f, lo=0.0, hi=1.0):
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) else (lo, mid)
        return (lo + hi) / 2

    lo = 0.0 if x == 0 else solve(lambda p: 1 - cdf(p, x - 1) < alpha / 2)
    hi = 1.0 if x == n else solve(lambda p: cdf(p, x) > alpha / 2)
    return lo, hi


def noise_sigma(curves_):
    """std of successive differences (each run's mean difference removed) / sqrt(2), pooled."""
    diffs = []
    for steps, c in curves_:
        d = np.diff([v for st, v in zip(steps, c) if st >= 8])
        diffs += list(d - d.mean()) if len(d) > 1 else []
    return float(np.std(diffs) / np.sqrt(2)) if diffs else 0.0


def thresholds(ctrl, leave_out=None):
    keep = [s for i, s in enumerate(ctrl) if i != leave_out]
    e = [rise_stat(curves(s)[1]) for s in keep]
    a = [agree_stat(curves(s)[3]) for s in keep]
    sig_c = noise_sigma([(curves(s)[0], curves(s)[1]) for s in keep])
    sig_a = noise_sigma([(curves(s)[0], curves(s)[3]) for s in keep])
    return max(e + [3 * sig_c]), max(a + [3 * sig_a]), sig_c, sig_a


def hack_step(s, delta, drop):
    steps, ce, sl, ag, _ = curves(s)
    j = S.detect_hack(ce, sl, delta, K, ag, drop)
    return None if j is None else steps[j]


def fmt_steps(vals):
    n = len(vals)
    if n == 0:
        return "–"
    hacked = sorted(v for v in vals if v is not None)
    if not hacked:
        return f"none within {N_SELF} (0/{n})"
    key = sorted([v if v is not None else np.inf for v in vals])
    med = np.median(key)
    med = f"> {N_SELF}" if not np.isfinite(med) else f"{med:g}"
    rng = f"{hacked[0]}–{hacked[-1]}" if len(hacked) > 1 else f"{hacked[0]}"
    return f"{med} [{rng}] ({len(hacked)}/{n})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="benchmark/out/self_critic_strength/runs")
    ap.add_argument("--out", default="benchmark/self_critic_strength.png")
    o = ap.parse_args()
    runs = load(o.runs)
    grid = [s for s in runs if s["name"].startswith("m") and s["name"][1].isdigit()]
    optims = {"ours": False, "original": True}
    cal = {}
    print("## Detector calibration on the true-label control\n")
    print("| optimisation | control runs | sigma CE | delta | sigma agreement | agree_drop | LOO false positives, "
          "calibrated | false positives, delta 0.05 (uncalibrated) |\n|---|---|---|---|---|---|---|---|")
    for opt, fresh in optims.items():
        ctrl = [s for s in grid if s["critic"] == "truth" and s["fresh_optimizer"] == fresh]
        if not ctrl:
            continue
        d_all, a_all, sig_c, sig_a = thresholds(ctrl)
        cal[opt] = (d_all, a_all)
        fp = 0
        for i, s in enumerate(ctrl):
            d_i, a_i, _, _ = thresholds(ctrl, leave_out=i)
            fp += hack_step(s, d_i, a_i) is not None
        fp_raw = sum(hack_step(s, 0.05, None) is not None for s in ctrl)
        lo, hi = clopper_pearson(fp, len(ctrl))
        lo2, hi2 = clopper_pearson(fp_raw, len(ctrl))
        print(f"| {opt} | {len(ctrl)} | {sig_c:.4f} | {cal[opt][0]:.3f} | {sig_a:.4f} | {cal[opt][1]:.3f} | {fp}/{len(ctrl)} "
              f"[{lo:.2f}, {hi:.2f}] | {fp_raw}/{len(ctrl)} [{lo2:.2f}, {hi2:.2f}] |")
    modes = [("online", None), ("frozen", None), ("ema", 0.9), ("ema", 0.99)]
    strengths = sorted({s["meta_steps"] for s in grid})
    print("\n## Steps to hack (calibrated detector): median [range of the runs that hacked] (hacked/seeds)\n")
    for opt, fresh, rule in [(o_, f_, r_) for r_ in ("CE or agreement", "CE only") for o_, f_ in optims.items()]:
        if opt not in cal:
            continue
        thr = cal[opt] if rule == "CE or agreement" else (cal[opt][0], None)
        print(f"\n**{opt}** ({'fresh AdamW, lr 1e-4' if fresh else 'AdamW carried over, lr 1e-3'}; rule: {rule}; "
              f"delta {cal[opt][0]:.3f}" + (f", agree_drop {cal[opt][1]:.3f})\n" if thr[1] is not None else ")\n"))
        print("| meta steps | agreement at phase-2 start | " + " | ".join(
            m if d is None else f"{m} {d}" for m, d in modes) + " | control: val CE start → end |")
        print("|---" * (len(modes) + 3) + "|")
        for m in strengths:
            cell = [s for s in grid if s["meta_steps"] == m and s["fresh_optimizer"] == fresh]
            ag = [s["critic_agreement_start"] for s in cell if s["critic"] == "frozen"]
            row = [f"{m}", f"{np.mean(ag):.2f} [{min(ag):.2f}–{max(ag):.2f}]" if ag else "–"]
            for mode, d in modes:
                sel = [s for s in cell if s["critic"] == mode and (d is None or s["ema_decay"] == d)]
                row.append(fmt_steps([hack_step(s, *thr) for s in sel]))
            ctrl = [s for s in cell if s["critic"] == "truth"]
            row.append(f"{np.mean([s['val_ce_end_phase1'] for s in ctrl]):.3f} → "
                       f"{np.mean([s['val_ce_end'] for s in ctrl]):.3f}" if ctrl else "–")
            print("| " + " | ".join(row) + " |")
        if rule != "CE only":
            continue
        print("\nUncalibrated detector (delta 0.05), same runs:\n")
        for m in strengths:
            cell = [s for s in grid if s["meta_steps"] == m and s["fresh_optimizer"] == fresh]
            print(f"- meta {m}: " + "; ".join(
                f"{mode}{'' if d is None else ' ' + str(d)} {fmt_steps([hack_step(s, 0.05, None) for s in cell if s['critic'] == mode and (d is None or s['ema_decay'] == d)])}"
                for mode, d in modes))

    print("\n## Size of the damage: validation CE at self step 80 minus its phase-2 best, mean [min–max] over seeds\n")
    print("| optimisation | meta steps | " + " | ".join(m if d is None else f"{m} {d}" for m, d in modes)
          + " | truth control |\n" + "|---" * (len(modes) + 3) + "|")
    for opt, fresh in optims.items():
        for m in strengths:
            cell = [s for s in grid if s["meta_steps"] == m and s["fresh_optimizer"] == fresh]
            row = []
            for mode, d in modes + [("truth", None)]:
                v = [s["val_ce_end"] - s["val_ce_phase2_best"] for s in cell
                     if s["critic"] == mode and (d is None or s["ema_decay"] == d)]
                row.append(f"{np.mean(v):.3f} [{min(v):.3f}–{max(v):.3f}]" if v else "–")
            print(f"| {opt} | {m} | " + " | ".join(row) + " |")

    # label-free detector (post hoc, entropy of the critic targets, drop 0.5 nats, k 3) against the calibrated one
    print("\n## Label-free detector (critic-target entropy falls > 0.5 nats below its start for 3 evaluations)\n")
    for opt, fresh in optims.items():
        if opt not in cal:
            continue
        sel = [s for s in grid if s["fresh_optimizer"] == fresh]
        selfr = [s for s in sel if s["critic"] != "truth"]
        ctrl = [s for s in sel if s["critic"] == "truth"]
        hk = [s for s in selfr if hack_step(s, *cal[opt]) is not None]
        caught = [s for s in hk if s["label_free_step"] is not None]
        early = [s["label_free_step"] - hack_step(s, *cal[opt]) for s in caught]
        nohk = [s for s in selfr if hack_step(s, *cal[opt]) is None]
        print(f"- {opt}: fires in {len(caught)}/{len(hk)} hacked runs (label-free minus calibrated step: median "
              f"{np.median(early) if early else float('nan'):g}, range {min(early) if early else '–'}–"
              f"{max(early) if early else '–'}); in {sum(s['label_free_step'] is not None for s in nohk)}/{len(nohk)} "
              f"self runs that did not hack; in {sum(s['label_free_step'] is not None for s in ctrl)}/{len(ctrl)} "
              f"control runs")

    guard = [s for s in runs if s["name"].startswith("guard_")]
    if guard:
        print("\n## Hack guard (frozen, 50 meta steps, ours; 50 guard meta steps per restore; detection and "
              "rollback on the guard windows, CE reported on the other windows)\n")
        print("| guard | seeds | restores | val CE end of phase 1 | val CE end | best phase-2 val CE |\n|---|---|---|---|---|---|")
        plain = [s for s in grid if s["meta_steps"] == 50 and s["critic"] == "frozen" and not s["fresh_optimizer"]]
        for name, sel in [("none (plain frozen)", plain)] + [
                (sig, [s for s in guard if s["guard_signal"] == sig]) for sig in ("oracle", "label_free")]:
            if not sel:
                continue
            print(f"| {name} | {len(sel)} | {[s['guard_restores'] for s in sel]} | "
                  f"{np.mean([s['val_ce_end_phase1'] for s in sel]):.3f} | "
                  f"{np.mean([s['val_ce_end'] for s in sel]):.3f} ± {np.std([s['val_ce_end'] for s in sel]):.3f} | "
                  f"{np.mean([s['val_ce_phase2_best'] for s in sel]):.3f} |")

    adv = [s for s in runs if s["name"].startswith("adv_") and s["self_steps"] > 0]
    if adv and "ours" in cal:
        print("\n## Adversarial critic training (50 meta steps, then phase 2 with our optimisation)\n")
        print("| meta phase | agreement at phase-2 start | frozen | online |\n|---|---|---|---|")
        base = [s for s in grid if s["meta_steps"] == 50 and not s["fresh_optimizer"]]
        for name, sel in [("none", base), ("noise", [s for s in adv if s["adversarial"] == "noise"]),
                          ("hotflip", [s for s in adv if s["adversarial"] == "hotflip"])]:
            fz = [s for s in sel if s["critic"] == "frozen"]
            on = [s for s in sel if s["critic"] == "online"]
            ag = [s["critic_agreement_start"] for s in fz]
            print(f"| {name} | {np.mean(ag):.2f} [{min(ag):.2f}–{max(ag):.2f}] | "
                  f"{fmt_steps([hack_step(s, *cal['ours']) for s in fz])} | "
                  f"{fmt_steps([hack_step(s, *cal['ours']) for s in on])} |" if ag else f"| {name} | – | – | – |")

    # figure: steps to hack against agreement at phase-2 start
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (opt, fresh) in zip(axes, optims.items()):
        if opt not in cal:
            continue
        for c, (mode, d) in enumerate(modes):
            sel = [s for s in grid if s["fresh_optimizer"] == fresh and s["critic"] == mode
                   and (d is None or s["ema_decay"] == d)]
            xs = [s["critic_agreement_start"] + 0.004 * (c - 1.5) for s in sel]
            hs = [hack_step(s, *cal[opt]) for s in sel]
            ax.scatter([x for x, h in zip(xs, hs) if h is not None], [h for h in hs if h is not None], color=f"C{c}",
                       label=mode if d is None else f"{mode} {d}")
            ax.scatter([x for x, h in zip(xs, hs) if h is None], [N_SELF + 8] * sum(h is None for h in hs),
                       facecolors="none", edgecolors=f"C{c}", marker="^")
        ax.axhline(N_SELF, color="gray", lw=0.8, ls="--")
        ax.set(xlabel="critic-truth agreement at the start of phase 2", title=f"optimisation: {opt}")
        ax.set_yscale("symlog", linthresh=10)
    axes[0].set_ylabel(f"self steps to hack (open triangles: none within {N_SELF})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(o.out, dpi=100)
    print(f"\nfigure: {o.out}")


if __name__ == "__main__":
    main()
