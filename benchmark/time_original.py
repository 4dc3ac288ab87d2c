"""Time the ORIGINAL seed-000 code (zb523/metalearning @ 36a6d57, scripts/*.py) once per
configuration, for the side-by-side speed comparison in benchmark/order_parameter_speed.sh.

The original is not part of this repository (we never copy code from other projects): clone it
and pass the path of its script. This driver imports the file and calls its training function
with the original's own settings, one configuration at a time, exactly as its main does, and
records process CPU time and wall time per configuration. The original also needs tqdm.

    python benchmark/time_original.py --original ORIG/scripts/order_parameter.py --kind order
    python benchmark/time_original.py --original ORIG/scripts/control_parameter.py --kind control
"""

import argparse
import importlib.util
import json
import os
import random
import sys
import time

import numpy as np
import torch

# The original's settings (seed_originals.md, "Seed 000"); only the episode count may be changed.
ORDER_GRID = [(n, h) for n in (5, 15, 30) for h in (8, 32, 64)]
CONTROL_CONFIGS = [  # name, pressure_params, baseline
    ("Baseline", None, True),
    ("SelectivePressure", dict(base_pressure=1.0, value_coef=0.1, uncertainty_coef=0.2,
                               initial_crystallization=0.5, crystallization_rate=0.01), False),
    ("ValueFocus", dict(base_pressure=1.0, value_coef=0.3, uncertainty_coef=0.1,
                        initial_crystallization=0.5, crystallization_rate=0.01), False),
    ("UncertaintyFocus", dict(base_pressure=1.0, value_coef=0.1, uncertainty_coef=0.4,
                              initial_crystallization=0.5, crystallization_rate=0.02), False),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", required=True, help="path of the original order_parameter.py / control_parameter.py")
    p.add_argument("--kind", choices=("order", "control"), required=True)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=42, help="the original seeds python, numpy and torch with 42")
    p.add_argument("--threads", type=int, default=1, help="torch threads (ours run with 1)")
    p.add_argument("--out", required=True, help="JSON file for the timings")
    a = p.parse_args()
    if not os.path.isfile(a.original):
        sys.exit(f"time_original.py: error: no file {a.original}")
    torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(a.original)))
    spec = importlib.util.spec_from_file_location("original", a.original)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    random.seed(a.seed), np.random.seed(a.seed), torch.manual_seed(a.seed)

    rows = []
    if a.kind == "order":
        jobs = [(f"N={n},H={h}", lambda n=n, h=h: mod.train_agent(
            env_size=n, hidden_dim=h, learning_rate=0.01, gamma=0.99, epsilon_start=1.0, epsilon_end=0.01,
            epsilon_decay=0.99, batch_size=128, buffer_size=10000, episodes=a.episodes)[0]) for n, h in ORDER_GRID]
    else:
        jobs = [(name, lambda pp=pp, b=b: mod.train_with_selective_pressure(
            env_size=30, hidden_dim=32, learning_rate=0.001, gamma=0.99, epsilon_start=1.0, epsilon_end=0.01,
            epsilon_decay=0.99, batch_size=64, buffer_size=10000, episodes=a.episodes, pressure_params=pp,
            baseline=b)[0]) for name, pp, b in CONTROL_CONFIGS]
    for name, job in jobs:
        c0, w0 = time.process_time(), time.time()
        rewards = job()
        rows.append({"config": name, "cpu_s": time.process_time() - c0, "wall_s": time.time() - w0,
                     "env_steps": int(sum(11 - r if r > -50 else 50 for r in rewards)),
                     "final_reward": float(np.mean(rewards[-10:]))})
        print(json.dumps(rows[-1]), flush=True)
    total = {k: sum(r[k] for r in rows) for k in ("cpu_s", "wall_s", "env_steps")}
    with open(a.out, "w") as f:
        json.dump({"kind": a.kind, "episodes": a.episodes, "threads": a.threads, "runs": rows, "total": total}, f,
                  indent=2)
    print(json.dumps({"total": total}))


if __name__ == "__main__":
    main()
