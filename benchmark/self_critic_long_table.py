"""Tables of benchmark/self_critic_long.py (issue 12, remaining parts) and the label-free detector calibrated
on the true-label control of both experiments.

    python benchmark/self_critic_long_table.py [--long benchmark/out/self_critic_long/runs]
                                               [--grid benchmark/out/self_critic_strength/runs]

The oracle detector is calibrated exactly as in benchmark/self_critic_strength_table.py (its functions),
on the control runs of the same optimisation AND the same phase-2 length (the largest lasting excursion of
a control run grows with the number of evaluations, so an 80-step band does not hold over 1000 steps):
delta = max(max_i e_i, 3 sigma_CE), agree_drop = max(max_i a_i, 3 sigma_agreement), k = 3, with e_i the
largest rise of validation CE above its running best that lasted 3 evaluations and a_i the largest
lasting fall of critic-truth agreement below its start.

Label-free detector (no true token in the statistic; S.detect_label_free): it fires at the first
evaluation from which, for k = 3 evaluations, the entropy of the critic-target histogram stays more than
d_H below its start, or the echo rate (fraction of critic targets equal to the LM's own prediction:
critic-LM agreement) stays more than d_E above its start. d_H = max(max_i h_i, 3 sigma_H) and
d_E = max(max_i r_i, 3 sigma_E) over the control runs (same optimisation, same length), h_i the largest
lasting entropy fall below the start and r_i the largest lasting echo rise above the start of control run
i (the control's critic is a frozen copy of its start, reading an LM trained on the true tokens). False
positives on the control are leave-one-out with a Clopper-Pearson 95% interval; detection delay is the
label-free step minus the calibrated oracle step, over the self runs the oracle calls hacked.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import self_critic_lm as S  # noqa: E402
from self_critic_strength_table import (K, agree_stat, clopper_pearson, curves, hack_step, load, noise_sigma,  # noqa: E402
                                        thresholds)

OPTIMS = {"ours": False, "original": True}
MODES = [("online", None), ("frozen", None), ("ema", 0.9), ("ema", 0.99)]


def echo_rise_stat(echo, k=K):
    """Largest rise of the echo rate above its start that lasted k evaluations."""
    return max([min(echo[j:j + k]) - echo[0] for j in range(1, len(echo) - k + 1)] + [0.0])


def lf_curves(s):
    steps, _, _, _, ent = curves(s)
    return steps, ent, [r["echo_rate"] for r in s["ce_curve"]]


def lf_thresholds(ctrl, leave_out=None):
    """(d_H, d_E): the control's largest lasting entropy fall and echo rise, floored at 3 sigma."""
    keep = [s for i, s in enumerate(ctrl) if i != leave_out]
    h = [agree_stat(lf_curves(s)[1]) for s in keep]
    r = [echo_rise_stat(lf_curves(s)[2]) for s in keep]
    sig_h = noise_sigma([(lf_curves(s)[0], lf_curves(s)[1]) for s in keep])
    sig_e = noise_sigma([(lf_curves(s)[0], lf_curves(s)[2]) for s in keep])
    return max(h + [3 * sig_h]), max(r + [3 * sig_e])


def lf_step(s, d_h, d_e):
    steps, ent, echo = lf_curves(s)
    j = S.detect_label_free(ent, d_h, K, echo, d_e)
    return None if j is None else steps[j]


def loo_fp(ctrl, thr_fn, step_fn):
    """Leave-one-out false positives: control run i judged with the thresholds of the others."""
    return sum(step_fn(s, *thr_fn(ctrl, leave_out=i)) is not None for i, s in enumerate(ctrl))


def fmt(vals, n_self):
    if not vals:
        return "–"
    hacked = sorted(v for v in vals if v is not None)
    per_seed = ", ".join("none" if v is None else f"{v}" for v in vals)
    return f"{len(hacked)}/{len(vals)} [{per_seed}]" if hacked else f"none within {n_self} (0/{len(vals)})"


def select(runs, meta=None, mode=None, decay=None, fresh=None, self_steps=None, prefix=None):
    out = []
    for s in runs:
        if prefix is not None and not s["name"].startswith(prefix):
            continue
        if meta is not None and s["meta_steps"] != meta:
            continue
        if mode is not None and (s["critic"] != mode or (decay is not None and s["ema_decay"] != decay)):
            continue
        if fresh is not None and s["fresh_optimizer"] != fresh:
            continue
        if self_steps is not None and s["self_steps"] != self_steps:
            continue
        out.append(s)
    return sorted(out, key=lambda s: s["seed"])


def oracle_calibration(runs, fresh, n_self, label):
    ctrl = select(runs, mode="truth", fresh=fresh, self_steps=n_self)
    if not ctrl:
        return None
    d, a, sig_c, sig_a = thresholds(ctrl)
    fp = sum(hack_step(s, *thresholds(ctrl, leave_out=i)[:2]) is not None for i, s in enumerate(ctrl))
    lo, hi = clopper_pearson(fp, len(ctrl))
    print(f"| {label} | {n_self} | {len(ctrl)} | {sig_c:.4f} | {d:.3f} | {sig_a:.4f} | {a:.3f} | {fp}/{len(ctrl)} "
          f"[{lo:.2f}, {hi:.2f}] |")
    return d, a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", default="benchmark/out/self_critic_long/runs")
    ap.add_argument("--grid", default="benchmark/out/self_critic_strength/runs")
    o = ap.parse_args()
    grid = [s for s in load(o.grid) if s["name"].startswith("m") and s["name"][1].isdigit()]
    allr = load(o.long)
    longr = [s for s in allr if s["name"].startswith("long")]
    n_long = max([s["self_steps"] for s in longr], default=1000)

    print("## Oracle detector recalibrated on the long true-label control\n")
    print("| optimisation | self steps | control runs | sigma CE | delta | sigma agreement | agree_drop | "
          "LOO false positives |\n|---|---|---|---|---|---|---|---|")
    cal = {}
    for opt, fresh in OPTIMS.items():
        cal[(opt, 80)] = oracle_calibration(grid, fresh, 80, opt)
        cal[(opt, n_long)] = oracle_calibration(longr, fresh, n_long, opt)

    print(f"\n## Phase 2 of {n_long} self steps: steps to hack per seed (seeds 1, 2, 3, ...)\n")
    for opt, fresh in OPTIMS.items():
        thr, thr80 = cal.get((opt, n_long)), cal.get((opt, 80))
        if thr is None:
            continue
        print(f"\n**{opt}** (delta {thr[0]:.3f}, agree_drop {thr[1]:.3f} from the {n_long}-step control; "
              f"the 80-step grid's thresholds {thr80[0]:.3f} / {thr80[1]:.3f} beside them)\n")
        print("| meta steps | critic | agreement at start | CE or agreement | CE only | 80-step thresholds, CE or "
              "agreement | val CE start → best → end | end − control's end | end − best |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for meta in sorted({s["meta_steps"] for s in select(longr, fresh=fresh)}):
            ctrl = select(longr, meta=meta, mode="truth", fresh=fresh)
            ctrl_end = {s["seed"]: s["val_ce_end"] for s in ctrl}
            for mode, d in MODES + [("truth", None)]:
                sel = select(longr, meta=meta, mode=mode, decay=d, fresh=fresh)
                if not sel:
                    continue
                ag = [s["critic_agreement_start"] for s in sel]
                gap = [s["val_ce_end"] - ctrl_end[s["seed"]] for s in sel if s["seed"] in ctrl_end]
                dmg = [s["val_ce_end"] - s["val_ce_phase2_best"] for s in sel]
                print(f"| {meta} | {mode if d is None else f'{mode} {d}'} | {np.mean(ag):.2f} | "
                      f"{fmt([hack_step(s, *thr) for s in sel], n_long)} | "
                      f"{fmt([hack_step(s, thr[0], None) for s in sel], n_long)} | "
                      f"{fmt([hack_step(s, *thr80) for s in sel], n_long)} | "
                      f"{np.mean([s['val_ce_end_phase1'] for s in sel]):.3f} → "
                      f"{np.mean([s['val_ce_phase2_best'] for s in sel]):.3f} → {np.mean([s['val_ce_end'] for s in sel]):.3f} | "
                      + (f"{np.mean(gap):+.3f} [{min(gap):+.3f}, {max(gap):+.3f}]" if gap else "–")
                      + f" | {np.mean(dmg):.3f} [{min(dmg):.3f}–{max(dmg):.3f}] |")

    print("\n## Label-free detector calibrated on the true-label control\n")
    print("| optimisation | self steps | control runs | d_H (entropy fall) | d_E (echo rise) | LOO false positives "
          "on the control | oracle-hacked self runs caught | delay (label-free − oracle): median [range] | "
          "caught before the oracle | fires on self runs the oracle did not call hacked |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for opt, fresh in OPTIMS.items():
        for n_self, runs in ((80, grid), (n_long, longr)):
            ctrl = select(runs, mode="truth", fresh=fresh, self_steps=n_self)
            thr = cal.get((opt, n_self))
            if not ctrl or thr is None:
                continue
            d_h, d_e = lf_thresholds(ctrl)
            fp = loo_fp(ctrl, lf_thresholds, lf_step)
            lo, hi = clopper_pearson(fp, len(ctrl))
            selfr = [s for s in runs if s["critic"] != "truth" and s["fresh_optimizer"] == fresh
                     and s["self_steps"] == n_self]
            hk = [(s, hack_step(s, *thr)) for s in selfr]
            hacked = [(s, h) for s, h in hk if h is not None]
            caught = [(lf_step(s, d_h, d_e), h) for s, h in hacked if lf_step(s, d_h, d_e) is not None]
            delay = [a - b for a, b in caught]
            quiet = [s for s, h in hk if h is None]
            print(f"| {opt} | {n_self} | {len(ctrl)} | {d_h:.3f} | {d_e:.3f} | {fp}/{len(ctrl)} [{lo:.2f}, {hi:.2f}] | "
                  f"{len(caught)}/{len(hacked)} | "
                  + (f"{np.median(delay):+g} [{min(delay):+d}, {max(delay):+d}]" if delay else "–")
                  + f" | {sum(x < 0 for x in delay)} | {sum(lf_step(s, d_h, d_e) is not None for s in quiet)}/{len(quiet)} |")
    print("\nBy critic mode (label-free detector as above; per run: oracle step / label-free step):\n")
    for opt, fresh in OPTIMS.items():
        for n_self, runs in ((80, grid), (n_long, longr)):
            ctrl = select(runs, mode="truth", fresh=fresh, self_steps=n_self)
            thr = cal.get((opt, n_self))
            if not ctrl or thr is None:
                continue
            d_h, d_e = lf_thresholds(ctrl)
            for meta in sorted({s["meta_steps"] for s in runs if s["fresh_optimizer"] == fresh and s["self_steps"] == n_self}):
                cells = []
                for mode, d in MODES:
                    sel = select(runs, meta=meta, mode=mode, decay=d, fresh=fresh, self_steps=n_self)
                    if sel:
                        cells.append(f"{mode if d is None else f'{mode} {d}'} " + ", ".join(
                            f"{hack_step(s, *thr) or '–'}/{lf_step(s, d_h, d_e) or '–'}" for s in sel))
                print(f"- {opt}, {n_self} steps, meta {meta}: " + "; ".join(cells))

    adv = [s for s in allr if s["name"].startswith("adv") and s["self_steps"] == 80]
    if adv and cal.get(("ours", 80)):
        thr = cal[("ours", 80)]
        print("\n## Adversarial critic training at two critic strengths (phase 2: 80 self steps, ours; "
              "calibrated 80-step detector, CE or agreement; per seed)\n")
        print("| meta steps | meta phase | agreement at phase-2 start | frozen | online | online: val CE at step 80 − best |\n"
              "|---|---|---|---|---|---|")
        for meta in sorted({s["meta_steps"] for s in adv}):
            base = select(grid, meta=meta, fresh=False)
            for name, sel in [("none (the strength grid)", base),
                              ("noise", [s for s in adv if s["meta_steps"] == meta and s["adversarial"] == "noise"]),
                              ("hotflip", [s for s in adv if s["meta_steps"] == meta and s["adversarial"] == "hotflip"])]:
                fz, on = select(sel, mode="frozen"), select(sel, mode="online")
                ag = [s["critic_agreement_start"] for s in fz]
                dmg = [s["val_ce_end"] - s["val_ce_phase2_best"] for s in on]
                print(f"| {meta} | {name} | " + (f"{np.mean(ag):.2f} [{min(ag):.2f}–{max(ag):.2f}]" if ag else "–")
                      + f" | {fmt([hack_step(s, *thr) for s in fz], 80)} | {fmt([hack_step(s, *thr) for s in on], 80)} | "
                      + (f"{np.mean(dmg):.3f} [{min(dmg):.3f}–{max(dmg):.3f}]" if dmg else "–") + " |")


if __name__ == "__main__":
    main()
