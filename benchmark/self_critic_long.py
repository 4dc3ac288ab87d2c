"""Issue 12, remaining parts: (a) a phase 2 long enough to test the seed's "frozen critic hacked in ~750
steps" (1000 self steps from the 200-meta-step checkpoints of benchmark/self_critic_strength.py, with the
true-label control to recalibrate the detector at this length); (b) adversarial critic training (noise,
hotflip) at more than one critic strength (100 and 200 meta steps), then the 80-step phase 2 of the
strength grid. One run at a time (the machine is shared); a rerun skips every finished run.

    nice -n 10 python benchmark/self_critic_long.py              # needs benchmark/out/self_critic_strength
    python benchmark/self_critic_long_table.py

Same model, batch and evaluation cadence as the strength grid (hidden 64, 2 layers, batch 16 x 32,
evaluations at self steps 0, 1, 2, 4, then every 4), so the detector's evaluation spacing is unchanged.
Stages (run in the order 1, 4, 2, 3, 5; --stages picks):
  1. long, ours (phase 1's AdamW carried over, lr 1e-3), meta 200: truth, frozen, ema 0.99 per seed, then ema 0.9;
  2. adversarial meta phases of 200 steps (noise, hotflip) saving at 100 and 200, then frozen and online
     phase 2 of 80 steps (ours) from each;
  3. long, original (fresh AdamW, lr 1e-4), meta 200: truth and frozen;
  4. long, ours, meta 400 (truth, frozen, ema 0.99, ema 0.9) and meta 100 (truth, frozen): the control, pooled
     over strengths as in the strength grid, calibrates the detector at this length;
  5. long, original, meta 400 (truth, frozen), meta 100 (truth), meta 200 (ema 0.99, ema 0.9).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from self_critic_strength import MODES, OPTIMS, REPO, ckpt, run, todo  # noqa: E402

LONG_STEPS, EVAL_EVERY, LONG_META = 1000, 4, 200
ADV_STRENGTHS = (100, 200)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default=str(REPO / "benchmark/out/self_critic_strength/runs"),
                    help="runs folder of benchmark/self_critic_strength.py (its meta checkpoints)")
    ap.add_argument("--out", default=str(REPO / "benchmark/out/self_critic_long"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--self-steps", type=int, default=LONG_STEPS)
    o = ap.parse_args()
    root = os.path.join(o.out, "runs")
    os.makedirs(root, exist_ok=True)

    def long(modes, opt, meta=LONG_META):
        return [(f"long{o.self_steps}_m{meta}_{mode}_{opt}", root,
                 dict(seed=s, init_meta=ckpt(o.grid, "meta", s, meta), **MODES[mode], **OPTIMS[opt],
                      self_steps=o.self_steps, eval_every=EVAL_EVERY))
                for s in o.seeds for mode in modes]

    tasks = []
    if 1 in o.stages:
        tasks += long(("truth", "frozen", "ema0.99"), "ours") + long(("ema0.9",), "ours")
    if 4 in o.stages:          # more control runs for the noise band (pooled over strengths, as in the grid)
        tasks += long(("truth", "frozen"), "ours", 400) + long(("truth", "frozen"), "ours", 100)
        tasks += long(("ema0.99", "ema0.9"), "ours", 400)
    if 2 in o.stages:
        tasks += [(f"advlong_{a}", root, dict(seed=s, meta_steps=max(ADV_STRENGTHS), self_steps=0, eval_every=50,
                                              adversarial=a, save_meta_at=ADV_STRENGTHS))
                  for s in o.seeds for a in ("noise", "hotflip")]
    for t in todo(root, tasks):
        run(t)
    tasks = []
    if 2 in o.stages:
        tasks += [(f"adv{m}_{a}_{mode}", root, dict(seed=s, init_meta=ckpt(root, f"advlong_{a}", s, m), **MODES[mode],
                                                    **OPTIMS["ours"], self_steps=80, eval_every=EVAL_EVERY))
                  for m in ADV_STRENGTHS for s in o.seeds for a in ("noise", "hotflip") for mode in ("frozen", "online")]
    if 3 in o.stages:
        tasks += long(("truth", "frozen"), "original")
    if 5 in o.stages:
        tasks += long(("truth", "frozen"), "original", 400) + long(("truth",), "original", 100)
        tasks += long(("ema0.99", "ema0.9"), "original")
    for t in todo(root, tasks):
        run(t)


if __name__ == "__main__":
    main()
