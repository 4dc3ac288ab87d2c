"""Linear probe: how much of the hidden velocities (x_dot, theta_dot) of stateless CartPole can a ridge
regression read from each candidate memory? Held-out R^2 (split by episode, 70/30) under a random
policy and under a trained one (plain PPO trained on full CartPole-v1, acting greedily on the full
state while every memory sees only (x, theta)). Each memory is rd_ppo.py's own policy input x_t:
s_t alone, frame stacks, and s_t with the state [a, h] of the RD module (at several gamma, and above
the Turing threshold) or of the leaky control, built by the script's Observer.

    python benchmark/rd_ppo_probe.py            # ~2 min on one CPU core; prints the markdown table

Targets are the velocities at t and at t-1: under a good policy the velocity at t is mostly the last
action's impulse (+-tau*F/m per step), which no memory of observations holds, while the velocity at
t-1 is what a memory of (x, theta) can recover.
"""

import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import rd_ppo as R  # noqa: E402

VARIANTS = {
    "s_t alone": dict(rd=False),
    "frame stack 2": dict(rd=False, frame_stack=2),
    "frame stack 4": dict(rd=False, frame_stack=4),
    "s_t + leaky state": dict(rd_input=True, rd_dynamics="leaky"),
    "s_t + RD state, gamma 0": dict(rd_input=True, gamma=0.0),
    "s_t + RD state, gamma 0.01": dict(rd_input=True, gamma=0.01),
    "s_t + RD state, gamma 0.1": dict(rd_input=True, gamma=0.1),
    "s_t + RD state, gamma 0.5": dict(rd_input=True, gamma=0.5),
    "s_t + RD state, gamma 0, D_h 4 (above the Turing threshold)": dict(rd_input=True, gamma=0.0, rd_d_h=4.0),
    "s_t + RD state, gamma 0, fixed-point init, D_h 1": dict(rd_input=True, gamma=0.0, rd_init="fixed-point"),
    "s_t + RD state, gamma 0, fixed-point init, D_h 4": dict(rd_input=True, gamma=0.0, rd_init="fixed-point",
                                                            rd_d_h=4.0),
}


def trained_agent():
    """Plain PPO on full CartPole-v1 at our defaults, 60k steps, in a temporary folder."""
    args = R.finalize_args(R.Args(total_timesteps=60_000, rd=False, cuda=False))
    with tempfile.TemporaryDirectory() as d:
        log = R.RunLog(args, "probe", d, "global_step")
        R.seed_everything(args.seed, True)
        agents_out = {}
        real_make = R.make_learners

        def keep(a, device):
            out = real_make(a, device)
            agents_out["agents"] = out[2]
            return out

        R.make_learners = keep
        try:
            summary = R.train(args, log)
        finally:
            R.make_learners = real_make
            log.close()
    print(f"trained agent: final return(20) {summary['final_return_mean20']}", file=sys.stderr)
    return agents_out["agents"]


def collect(policy, episodes: int, seed: int, num_envs: int = 16):
    """-> {variant: (features (M, D), episode id (M,))}, targets (M, 2): all variants see the same run."""
    envs = R.CartPoleBatch([seed], num_envs, stateless=False)
    full = envs.reset()
    observers = {name: R.Observer(R.finalize_args(R.Args(env="stateless", num_envs=num_envs, cuda=False, **kw)),
                                  1, 2, 2) for name, kw in VARIANTS.items()}
    gens = [np.random.default_rng(seed)]
    rng = np.random.default_rng(seed + 1)
    feats = {name: [] for name in VARIANTS}
    targets, ep_ids, prev = [], [], np.full((num_envs, 2), np.nan)
    ep_of_env = np.arange(num_envs)
    next_ep, done_eps = num_envs, 0
    while done_eps < episodes:
        state = envs.state.copy()
        for name, obs in observers.items():
            feats[name].append(obs.observe(full[:, [0, 2]].copy(), gens)[0])
        targets.append(np.c_[state[:, [1, 3]], prev])               # velocities at t and at t-1
        prev = state[:, [1, 3]].copy()
        ep_ids.append(ep_of_env.copy())
        if policy is None:
            act = rng.integers(0, 2, num_envs)
        else:
            with torch.no_grad():
                logits, _ = policy(torch.from_numpy(full)[None], torch.zeros(1, num_envs, 2), 0.0)
            act = logits[0].argmax(-1).numpy()
        full, _, term, trunc, _, _ = envs.step(act)
        done = term | trunc
        if done.any():
            for obs in observers.values():
                obs.reset(done)
            for i in np.nonzero(done)[0]:
                ep_of_env[i], next_ep, done_eps = next_ep, next_ep + 1, done_eps + 1
            prev[done] = np.nan
    ids = np.concatenate(ep_ids)
    return {n: np.concatenate(f) for n, f in feats.items()}, np.concatenate(targets), ids


def probe(feats, targets, ids):
    """R^2 of (x_dot_t, theta_dot_t, x_dot_{t-1}, theta_dot_{t-1}) on the steps that have a previous one."""
    keep = ~np.isnan(targets).any(1)
    train, test = keep & (ids % 10 < 7), keep & (ids % 10 >= 7)
    return {n: R.ridge_r2(f[train], targets[train], f[test], targets[test]) for n, f in feats.items()}


def main():
    random_r2 = probe(*collect(None, episodes=800, seed=1))
    trained_r2 = probe(*collect(trained_agent(), episodes=60, seed=2))
    print("| memory (policy input x_t) | random policy: R² ẋ_t / θ̇_t | ẋ_{t-1} / θ̇_{t-1} "
          "| trained policy: R² ẋ_t / θ̇_t | ẋ_{t-1} / θ̇_{t-1} |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        a, b = random_r2[name], trained_r2[name]
        print(f"| {name} | {a[0]:.2f} / {a[1]:.2f} | {a[2]:.2f} / {a[3]:.2f} | {b[0]:.2f} / {b[1]:.2f} "
              f"| {b[2]:.2f} / {b[3]:.2f} |")


if __name__ == "__main__":
    main()
