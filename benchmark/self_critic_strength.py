"""Issue 12 experiment: steps-to-hack against critic strength, critic mode and phase-2 optimisation,
with the true-label control the detector is calibrated on; adversarial critic training (noise,
hotflip); the oracle and label-free hack guards. Every run is self_critic_lm.py's own train() through
run_experiment (in process, the same code path as the CLI), one torch thread each.

    nice -n 10 python benchmark/self_critic_strength.py --jobs 2          # then:
    python benchmark/self_critic_strength_table.py

Model reduced for the shared 2-core CPU: 139,648 parameters (hidden 64, 2 layers, 4 heads, 2 KV heads),
byte vocabulary + [LOSS], batch 16 x 32 tokens, pydoc_data.topics. Stages:
  1. per seed, one meta phase of 400 steps at lr 1e-3 saving checkpoints at 50, 100, 200, 400 meta steps;
  2. from each checkpoint, phase 2 (--self-steps 80, evaluations at self steps 0, 1, 2, 4, 8, 12, ..., 80)
     with critic online | frozen | ema 0.9 | ema 0.99 | truth (control), and optimisation
     ours (phase 1's AdamW carried over, lr 1e-3) | original (fresh AdamW, lr 1e-4);
  3. adversarial meta phases (noise, hotflip; 50 steps), then frozen and online phase 2 (ours);
  4. hack guard (frozen, 50-step checkpoint, ours): oracle and label-free signal, 50 guard meta steps.
Run order: stage 1, stage 2 without the 400-step strength, 4, 3, then stage 2 at 400 (stage "5").
A rerun skips every run that already finished (summary.json with status ok).
"""

import argparse
import glob
import io
import json
import multiprocessing as mp
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = dict(n_embd=64, n_layer=2, n_head=4, n_kv_head=2, block_size=32, batch_size=16, torch_threads=1,
             cuda=False, sample_prompts=0, eval_windows=32)
STRENGTHS = (50, 100, 200, 400)
MODES = {"online": dict(critic="online"), "frozen": dict(critic="frozen"),
         "ema0.9": dict(critic="ema", ema_decay=0.9), "ema0.99": dict(critic="ema", ema_decay=0.99),
         "truth": dict(critic="truth")}
OPTIMS = {"ours": dict(fresh_optimizer=False, self_learning_rate=1e-3),
          "original": dict(fresh_optimizer=True, self_learning_rate=1e-4)}
SELF_STEPS, EVAL_EVERY = 80, 4


def run(task):
    """One self_critic_lm.py run in this process; returns (name, run_dir)."""
    import self_critic_lm as S

    name, root, kw = task
    args = S.finalize_args(S.Args(exp_name=name, **{**MODEL, **kw}))
    before = set(glob.glob(os.path.join(root, f"{name}__{args.seed}__*")))
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = S.run_experiment("self_critic_lm.py", args, S.train, x_axis="step", root=root)
    (after,) = set(glob.glob(os.path.join(root, f"{name}__{args.seed}__*"))) - before
    with open(os.path.join(after, "stdout.txt"), "w") as f:
        f.write(buf.getvalue())
    print(f"{name} seed {args.seed}: exit {code} -> {after}", flush=True)
    return name, after


def todo(root, tasks):
    """The tasks without a finished run (summary.json with status ok) under root: a rerun resumes."""
    left = []
    for name, r, kw in tasks:
        done = [d for d in glob.glob(os.path.join(root, f"{name}__{kw['seed']}__*"))
                if os.path.exists(os.path.join(d, "summary.json"))
                and json.load(open(os.path.join(d, "summary.json"))).get("status") == "ok"]
        if not done:
            left.append((name, r, kw))
    return left


def ckpt(root, name, seed, m):
    (d,) = glob.glob(os.path.join(root, f"{name}__{seed}__*"))
    return os.path.join(d, f"meta_{m}.pt")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "benchmark/out/self_critic_strength"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    o = ap.parse_args()
    root = os.path.join(o.out, "runs")
    os.makedirs(root, exist_ok=True)
    pool = mp.get_context("spawn").Pool(o.jobs)
    p2 = dict(self_steps=SELF_STEPS, eval_every=EVAL_EVERY)
    if 1 in o.stages:
        pool.map(run, todo(root, [("meta", root, dict(seed=s, meta_steps=max(STRENGTHS), self_steps=0, eval_every=50,
                                           save_meta_at=STRENGTHS)) for s in o.seeds]))
    def phase2(strengths):
        return [(f"m{m}_{mode}_{opt}", root, dict(seed=s, init_meta=ckpt(root, "meta", s, m), **MODES[mode],
                                                  **OPTIMS[opt], **p2))
                for m in strengths for opt in OPTIMS for mode in MODES for s in o.seeds]

    if 2 in o.stages:                                     # the strength axis, without its last point
        pool.map(run, todo(root, phase2(STRENGTHS[:-1])), chunksize=1)
    if 4 in o.stages:
        pool.map(run, todo(root, [(f"guard_{sig}", root, dict(seed=s, init_meta=ckpt(root, "meta", s, 50),
                                                              critic="frozen", hack_guard=True, guard_signal=sig,
                                                              guard_meta_steps=50, **OPTIMS["ours"], **p2))
                                  for s in o.seeds for sig in ("oracle", "label_free")]), chunksize=1)
    if 3 in o.stages:
        pool.map(run, todo(root, [(f"adv_{a}", root, dict(seed=s, meta_steps=50, self_steps=0, eval_every=50,
                                                          adversarial=a, save_meta_at=(50,)))
                                  for s in o.seeds for a in ("noise", "hotflip")]))
        pool.map(run, todo(root, [(f"adv_{a}_{mode}", root, dict(seed=s, init_meta=ckpt(root, f"adv_{a}", s, 50),
                                                                 **MODES[mode], **OPTIMS["ours"], **p2))
                                  for s in o.seeds for a in ("noise", "hotflip") for mode in ("frozen", "online")]),
                 chunksize=1)
    if 5 in o.stages:                                     # the strength axis, its last point
        pool.map(run, todo(root, phase2(STRENGTHS[-1:])), chunksize=1)
    pool.close()
    pool.join()


if __name__ == "__main__":
    main()
