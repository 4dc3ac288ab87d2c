"""rd_ppo.py: PPO with a fixed reaction-diffusion (RD) module and "blind" guidance gamma*sign(.).

Question (seed 001, "Guiding Emergence in RL (Part 1): Acceleration via Blind Dynamics?"):
does a fixed, never-trained, RD-inspired dynamical system whose state is pushed along its own
sign (gamma*sign(a), gamma*sign(h)) and blended into the policy logits speed up PPO on
CartPole-v1, and does it help or hurt on stateless CartPole, where its state "acts more like an
RNN hidden state"? The post gives no code and no numbers; every numeric choice below is ours.

The RD module, per environment, as implemented (explicit Euler, host-side numpy float32):
    state         a, h in R^{K x A}, K = obs_dim (rows: observation components),
                  A = n_actions (columns); 4x2 on CartPole, 2x2 on stateless CartPole.
                  Reset to a = 0, h = 1 at the start of every episode (leaky: h = 0); --rd-init fixed-point
                  resets to the homogeneous point (a*, h*) instead.
    emphasis      w = softmax_k(min(|s_t|, 50))                         (K,)  which rows matter now
    drive         I[k,j] = g * w_k * s_t[k] * P[k,j]                      P: fixed random K x A matrix
                  (seeded by --rd-seed, rows centred over actions so it never shifts all logits alike)
    diffusion     D (mean_k(x) - x): each entry relaxes to the mean of its action column
    update (rd)   a <- clip(a + dt*(D_a(mean_k a - a) + rho_a a^2/h - mu_a a + gamma_t sign(a) + I), -c, c)
                  h <- clip(h + dt*(D_h(mean_k h - h) + rho_h a^2   - mu_h h + gamma_t sign(h)), h_min, c)
                  (h >= h_min > 0 keeps a^2/h finite; since h > 0, gamma sign(h) = +gamma)
    update (leaky, --rd-dynamics leaky; the control for anything RD-specific: same shapes, drive, readout)
                  a <- clip(a + dt*(-mu_a a + I), -c, c);   h <- clip(h + dt*(-mu_h h + I), -c, c)
    guidance      blind (default): gamma_t = gamma.  td (--guidance td, the post's "reward-aware" next step):
                  gamma_t = gamma * tanh(delta / sigma) per env, delta = r_{t-1} + discount*V(x_t)*(1-d_{t-1})
                  - V(x_{t-1}) the last TD error known when the module takes s_{t+1} (0 at an episode start),
                  sigma^2 an EMA (0.99) of delta^2 over the member's envs: positive surprise amplifies, negative
                  surprise turns the push into a pull towards 0.
    output        rd_out[j] = sum_k w_k a[k,j]                           (A,)  one value per action
    blending      logits = (1 - lambda) * policy_logits(x_t) + lambda * rd_used,  lambda = --rd-weight
                  rd_used = rd_out (--rd-out module); 0 (zero: the temperature control, the blend without
                  the signal); or rd_out of the same env at a uniformly drawn step among its last num_steps
                  steps (shuffle: the right values at the wrong time)
    policy input  x_t = [s_t, s_{t-1}, ..., s_{t-K+1}] (--frame-stack K, zeros before the episode start: the
                  positive control) and, with --rd-input True, [a, h] after the update with s_t (the RD
                  state as memory, a fixed reservoir): actor and critic both see x_t.
Turing regime (gamma = 0): with the "diffusion" above every non-uniform mode over k sees -D x, so the
homogeneous point a* = rho_a mu_h / (mu_a rho_h), h* = rho_a a* / mu_a turns unstable for a zero-mean
perturbation when det(J - diag(D_a, D_h)) < 0, i.e. D_h > D_h* = g_h - f_h g_a / (f_a - D_a) (f_a > D_a),
with J = [[f_a, f_h], [g_a, g_h]] = [[mu_a, -mu_a^2/rho_a], [2 rho_h a*, -mu_h]]. At the defaults
(rho = 1, mu_a = 1, mu_h = 2, D_a = 0.1): D_h* = -2 + 4/0.9 = 2.44 (turing_threshold() computes it).
The default D_h = 1 is below it; --rd-d-h 4 is a setting above it. But a = 0 is itself a stable
fixed point (f_a = -mu_a there) and the default reset a = 0, h = 1 relaxes to it (h falls to h_min), where
no diffusion-driven instability exists: the threshold only matters with --rd-init fixed-point.

Every step's x_t and rd_used are stored in the rollout and reused unchanged when PPO recomputes
log-probabilities, so the first minibatch of every update has ratio exactly 1 (debug/first_ratio_max_dev).
lambda = 0 with --rd-input False is the plain-PPO baseline and gives exactly the numbers of --rd False.

PPO: CleanRL-style discrete PPO (GAE, clipped surrogate, clipped value loss, advantage normalisation,
LR annealing, per-agent gradient clipping, optional target-KL stop). CartPole-v1 is simulated here as
one numpy batch of envs (the equations of gymnasium's CartPole-v1, tested step for step against it)
with same-step autoreset: the step that ends an episode returns the first observation of the next
one and keeps the true last one aside. Terminations cut the return; truncations (500 steps)
bootstrap with r_t + discount * V(x_final). --num-seeds S trains S independent agents (seed + m,
their own env streams, networks, optimiser states and noise) in lockstep as one batch; member m is
bit for bit the run --seed seed+m --num-seeds 1 on the CPU (with --vary-rd-seed, --rd-seed rd_seed+m).

Run:      python rd_ppo.py --gamma 0.1 --env stateless
          python rd_ppo.py --env stateless --rd-input True --rd-weight 0 --num-seeds 10
Sweep:    wandb sweep benchmark/rd_ppo_sweep.yaml      (bool flags take --flag=True/False)
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: global_step, per agent), summary.json,
          learning_curve.png, rd_ppo.model (--save-model True); with --num-seeds S > 1 also one folder
          runs/{exp_name}__{seed+m}__{time} per agent, and the main summary holds mean and 95% t-interval.
Runtime:  a default run (500k steps, one agent) is a few minutes on one CPU thread; --num-seeds 10 costs
          1.86x the wall time of one agent (benchmark/rd_ppo_speed.py).
Result:   (benchmark/rd_ppo_grid.sh, 10 agents and 10 drive matrices per cell, docs/rd_ppo.md) on stateless
          CartPole the blend does nothing (every blend and its zero/shuffle controls at plain PPO's ~47); fed
          to the networks, the RD state is a memory at gamma = 0 (141 vs 48) that blind guidance erases
          (gamma >= 0.1: 50) and a linear leaky integrator beats (235; frame stack 2: 370). On CartPole the
          gamma effect is small and flips sign with the learning rate (gamma 0.5 minus 0, paired, pooled
          over lambda: +22 AUC at our defaults, -22 at CleanRL's), and a shuffled RD signal does as well.
"""

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import tyro


@dataclass
class Args:
    # ---- infrastructure ----
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of the experiment; the run folder is runs/{exp_name}__{seed}__{unix time}"""
    seed: int = 1
    """seed of python, numpy, torch and the environments (agent m of --num-seeds uses seed + m)"""
    torch_deterministic: bool = True
    """set torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA if it is available (permission, not demand)"""
    track: bool = False
    """mirror every metric to Weights & Biases (works with WANDB_MODE=offline)"""
    wandb_project_name: str = "metalearning"
    """W&B project name"""
    wandb_entity: Optional[str] = None
    """W&B entity (team); None uses the default"""

    # ---- algorithm ----
    env: str = "cartpole"
    """environment: cartpole (CartPole-v1) or stateless (CartPole-v1 observing only x and theta)"""
    total_timesteps: int = 500_000
    """environment steps of training per agent, summed over its parallel envs"""
    num_seeds: int = 1
    """independent agents trained in lockstep in one process (seeds seed, seed+1, ...)"""
    learning_rate: float = 2.5e-3
    """Adam learning rate at the start (annealed linearly to 0 with --anneal-lr True)"""
    num_envs: int = 16
    """parallel environments per agent"""
    num_steps: int = 32
    """steps per environment per rollout (batch = num_envs * num_steps)"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over training"""
    discount: float = 0.99
    """discount factor of returns (named so because --gamma is the guidance strength)"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    num_minibatches: int = 4
    """minibatches per epoch; must divide num_envs * num_steps"""
    update_epochs: int = 4
    """passes over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """PPO ratio clip epsilon"""
    clip_vloss: bool = True
    """clip the value loss around the rollout's values"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient-norm clip, per agent"""
    target_kl: Optional[float] = None
    """stop the epochs of an update once approx_kl exceeds this (None: never; only with --num-seeds 1)"""
    max_episode_steps: int = 500
    """time limit of an episode (CartPole-v1: 500); truncated episodes bootstrap from V"""
    frame_stack: int = 1
    """policy input holds the last K observations (1: s_t only); the short-memory positive control"""
    torch_threads: int = 1
    """torch CPU threads; one is fastest for these tiny networks"""
    save_model: bool = False
    """write runs/{run_name}/rd_ppo.model and evaluate it greedily (--num-seeds 1)"""
    eval_episodes: int = 10
    """greedy evaluation episodes after training (with --save-model True)"""

    # ---- reaction-diffusion module (fixed, never trained) ----
    rd: bool = True
    """compute the RD module at all; --rd False is plain PPO with no module"""
    rd_weight: float = 0.3
    """lambda in logits = (1-lambda)*policy + lambda*rd_used; 0 is no blend"""
    rd_out: str = "module"
    """what the blend uses: module (rd_out), zero (rd_out = 0, the temperature control) or shuffle"""
    rd_input: bool = False
    """feed the module state [a, h] of each env to actor and critic beside s_t (the state as memory)"""
    rd_dynamics: str = "rd"
    """rd (reactions, diffusion, guidance) or leaky (linear leaky integration of the same drive)"""
    guidance: str = "blind"
    """blind: gamma fixed; td: gamma scaled per env by tanh(last TD error / its running RMS)"""
    gamma: float = 0.1
    """guidance strength: +gamma*sign(a) and +gamma*sign(h) in the RD update"""
    rd_dt: float = 0.1
    """Euler step of the module update"""
    rd_d_a: float = 0.1
    """activator diffusion (coupling to the column mean), D_a"""
    rd_d_h: float = 1.0
    """inhibitor diffusion, D_h; non-uniform patterns need D_h above turing_threshold() (2.44 here)"""
    rd_rho_a: float = 1.0
    """activator production rho_a in rho_a*a^2/h"""
    rd_rho_h: float = 1.0
    """inhibitor production rho_h in rho_h*a^2"""
    rd_mu_a: float = 1.0
    """activator decay mu_a (leaky: the leak rate of a)"""
    rd_mu_h: float = 2.0
    """inhibitor decay mu_h (leaky: the leak rate of h)"""
    rd_input_gain: float = 1.0
    """gain g of the observation drive I = g*w*s*P"""
    rd_clamp: float = 5.0
    """a is clipped to [-c, c] and h to [h_min, c] (leaky: [-c, c])"""
    rd_h_min: float = 0.1
    """floor of the inhibitor, keeps a^2/h finite"""
    rd_init: str = "zero"
    """episode-start state: zero (a = 0, h = 1; relaxes to the trivial state a = 0, h = h_min) or
    fixed-point (a = a*, h = h*, where a Turing instability can act)"""
    rd_seed: int = 0
    """seed of the fixed drive matrix P (separate from --seed)"""
    vary_rd_seed: bool = False
    """agent m of --num-seeds uses drive matrix --rd-seed + m (one call covers several matrices)"""

    # ---- derived at runtime ----
    batch_size: tyro.conf.Suppress[int] = 0
    """num_envs * num_steps"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """batch_size // num_minibatches"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """total_timesteps // batch_size"""
    blend_weight: tyro.conf.Suppress[float] = 0.0
    """lambda actually used: rd_weight with the module on, 0 with --rd False"""
    use_input: tyro.conf.Suppress[bool] = False
    """the module state reaches the networks: rd and rd_input"""


ENVS = ("cartpole", "stateless")
RD_OUTS = ("module", "zero", "shuffle")
RD_INITS = ("zero", "fixed-point")
DYNAMICS = ("rd", "leaky")
GUIDANCE = ("blind", "td")


def finalize_args(args: Args) -> Args:
    """Check the arguments and fill the derived fields; a ValueError carries a one-line reason."""
    for name, value, choices in (("env", args.env, ENVS), ("rd-out", args.rd_out, RD_OUTS),
                                 ("rd-dynamics", args.rd_dynamics, DYNAMICS), ("guidance", args.guidance, GUIDANCE),
                                 ("rd-init", args.rd_init, RD_INITS)):
        if value not in choices:
            raise ValueError(f"unknown --{name} {value!r}; choose one of {', '.join(choices)}")
    if not 0 <= args.seed < 2**32 or not 0 <= args.rd_seed < 2**32:
        raise ValueError(f"--seed and --rd-seed must lie in [0, 2**32), got {args.seed} and {args.rd_seed}")
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes",
                 "torch_threads", "num_seeds", "max_episode_steps", "frame_stack"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    positive = ("learning_rate", "clip_coef", "max_grad_norm", "rd_dt")
    non_negative = ("ent_coef", "vf_coef", "gamma", "rd_d_a", "rd_d_h", "rd_rho_a", "rd_rho_h", "rd_mu_a", "rd_mu_h",
                    "rd_input_gain")
    for name in positive + non_negative:
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
            kind = "a finite number > 0" if name in positive else "a finite number >= 0"
            raise ValueError(f"--{name.replace('_', '-')} must be {kind}, got {value}")
    for name in ("discount", "gae_lambda", "rd_weight"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}")
    if args.target_kl is not None and not args.target_kl > 0:
        raise ValueError(f"--target-kl must be > 0 (or None), got {args.target_kl}")
    if args.target_kl is not None and args.num_seeds > 1:
        raise ValueError("--target-kl stops one agent's epochs; it needs --num-seeds 1")
    if args.save_model and args.num_seeds > 1:
        raise ValueError("--save-model needs --num-seeds 1")
    if args.seed + args.num_seeds - 1 >= 2**32:
        raise ValueError("--seed + --num-seeds - 1 must stay below 2**32")
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        raise ValueError(
            f"--num-minibatches {args.num_minibatches} does not divide num_envs*num_steps = {args.batch_size}"
        )
    if args.total_timesteps < args.batch_size:
        raise ValueError(f"--total-timesteps {args.total_timesteps} is smaller than one batch ({args.batch_size})")
    if not (0 < args.rd_h_min < args.rd_clamp) or not math.isfinite(args.rd_clamp):
        raise ValueError("need 0 < --rd-h-min < --rd-clamp (finite)")
    # rollout buffers per agent and step: policy input x (up to 4*K + 16 floats), rd_used, Gumbel noise,
    # rewards, dones, values, log-probs, actions, advantages, returns (float32), on the host and the device,
    # about x3 for the update's temporaries; the shuffle history adds T*N*A
    obs_dim = 4 if args.env == "cartpole" else 2
    per_step = 4 * (obs_dim * args.frame_stack + 2 * obs_dim * 2 + 2 * 4 + 8) * 3
    check_memory(args.num_seeds * args.batch_size * per_step,
                 f"a rollout of {args.num_seeds} x {args.num_envs} envs x {args.num_steps} steps",
                 pick_device(args.cuda))
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    args.blend_weight = args.rd_weight if args.rd else 0.0
    args.use_input = args.rd and args.rd_input
    return args


# ==================================================================================================
# Environment: CartPole-v1 as one numpy batch (several agents' envs side by side)
# ==================================================================================================
class CartPoleBatch:
    """E = S * N CartPole-v1 environments stepped as one numpy batch: the equations, constants and
    termination of gymnasium's CartPole-v1 (explicit Euler, tau = 0.02 s, float64 state, float32
    observations; tested step for step against gymnasium), with same-step autoreset. Agent m owns
    envs [m*N, (m+1)*N) and its own random stream (seeded by its seed), so its envs do not depend on
    the other agents. `state` (E, 4) = (x, x_dot, theta, theta_dot) exposes the hidden velocities."""

    GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    X_THRESHOLD, THETA_THRESHOLD = 2.4, 12 * 2 * math.pi / 360

    def __init__(self, seeds: list[int], envs_per_agent: int, stateless: bool, max_episode_steps: int = 500):
        self.n, self.stateless, self.max_steps = envs_per_agent, stateless, max_episode_steps
        self.rngs = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
        self.num_envs = len(seeds) * envs_per_agent
        self.obs_dim = 2 if stateless else 4
        self.state = np.zeros((self.num_envs, 4))
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.returns = np.zeros(self.num_envs)

    def observe(self, state: np.ndarray) -> np.ndarray:
        obs = state.astype(np.float32)
        return obs[:, [0, 2]] if self.stateless else obs

    def _reset_envs(self, mask: np.ndarray) -> None:
        """New episodes for the envs in mask; each agent draws its envs' starts in env order."""
        for m, rng in enumerate(self.rngs):
            sub = mask[m * self.n:(m + 1) * self.n]
            if sub.any():
                idx = m * self.n + np.nonzero(sub)[0]
                self.state[idx] = rng.uniform(-0.05, 0.05, size=(len(idx), 4))
        self.steps[mask], self.returns[mask] = 0, 0.0

    def reset(self) -> np.ndarray:
        self._reset_envs(np.ones(self.num_envs, dtype=bool))
        return self.observe(self.state)

    def step(self, actions: np.ndarray):
        """-> obs (E, obs_dim) float32 (a new episode's first obs where done), reward (E,) float32,
        terminated, truncated (E,) bool, final_obs (E, obs_dim) (the true last obs; valid where done),
        episode_returns (E,) (valid where done)."""
        x, x_dot, theta, theta_dot = self.state.T
        force = np.where(actions == 1, self.FORCE_MAG, -self.FORCE_MAG)
        cos, sin = np.cos(theta), np.sin(theta)
        total_mass, pm_len = self.MASSPOLE + self.MASSCART, self.MASSPOLE * self.LENGTH
        temp = (force + pm_len * theta_dot ** 2 * sin) / total_mass
        theta_acc = (self.GRAVITY * sin - cos * temp) / (self.LENGTH * (4.0 / 3.0 - self.MASSPOLE * cos ** 2 / total_mass))
        x_acc = temp - pm_len * theta_acc * cos / total_mass
        self.state = np.stack([x + self.TAU * x_dot, x_dot + self.TAU * x_acc,
                               theta + self.TAU * theta_dot, theta_dot + self.TAU * theta_acc], axis=1)
        x, theta = self.state[:, 0], self.state[:, 2]
        terminated = (x < -self.X_THRESHOLD) | (x > self.X_THRESHOLD) | (theta < -self.THETA_THRESHOLD) \
            | (theta > self.THETA_THRESHOLD)
        self.steps += 1
        self.returns += 1.0
        truncated = (self.steps >= self.max_steps) & ~terminated
        done = terminated | truncated
        final_obs = self.observe(self.state)
        episode_returns = self.returns.copy()
        if done.any():
            self._reset_envs(done)
        return self.observe(self.state), np.ones(self.num_envs, dtype=np.float32), terminated, truncated, \
            final_obs, episode_returns


# ==================================================================================================
# The fixed module (RD or leaky) and the policy input (pure functions and small state holders)
# ==================================================================================================
@dataclass(frozen=True)
class RDParams:
    dt: float
    d_a: float
    d_h: float
    rho_a: float
    rho_h: float
    mu_a: float
    mu_h: float
    gamma: float
    input_gain: float
    clamp: float
    h_min: float
    init: str = "zero"

    @classmethod
    def from_args(cls, args: Args) -> "RDParams":
        return cls(args.rd_dt, args.rd_d_a, args.rd_d_h, args.rd_rho_a, args.rd_rho_h, args.rd_mu_a,
                   args.rd_mu_h, args.gamma, args.rd_input_gain, args.rd_clamp, args.rd_h_min, args.rd_init)


def homogeneous_point(p: RDParams) -> tuple[float, float]:
    """(a*, h*) of the Gierer-Meinhardt reactions without drive or guidance: rho_a a/h = mu_a, rho_h a^2 = mu_h h."""
    a_star = p.rho_a * p.mu_h / (p.mu_a * p.rho_h)
    return a_star, p.rho_a * a_star / p.mu_a


def turing_threshold(p: RDParams) -> float:
    """D_h above which a zero-mean (non-uniform over k) perturbation of the homogeneous Gierer-Meinhardt
    point grows, at gamma = 0 (see the module docstring); inf when no D_h destabilises it."""
    a_star = homogeneous_point(p)[0]
    f_a, f_h, g_a, g_h = p.mu_a, -p.mu_a ** 2 / p.rho_a, 2 * p.rho_h * a_star, -p.mu_h
    if f_a - p.d_a <= 0:
        return math.inf
    return max(0.0, g_h - f_h * g_a / (f_a - p.d_a))


def rd_drive_matrix(obs_dim: int, n_actions: int, rd_seed: int) -> np.ndarray:
    """Fixed (K, A) drive matrix P: standard normal, each row centred over the actions."""
    p = np.random.default_rng(rd_seed).standard_normal((obs_dim, n_actions)).astype(np.float32)
    return p - p.mean(axis=1, keepdims=True)


def rd_constants(p: RDParams, drive: np.ndarray, dynamics: str = "rd") -> dict[str, np.ndarray]:
    """Per-column coefficient rows for the stacked state s = [a | h] of shape (E, K, 2A); drive is
    (K, A) or per env (E, K, A)."""
    n_act = drive.shape[-1]
    k = drive.shape[-2]
    both = lambda for_a, for_h: np.concatenate([np.full(n_act, for_a), np.full(n_act, for_h)]).astype(np.float32)
    if dynamics == "leaky":                               # both species integrate the drive, no coupling
        return {"diffusion": both(0.0, 0.0), "decay": both(p.mu_a, p.mu_h), "low": both(-p.clamp, -p.clamp),
                "high": both(p.clamp, p.clamp), "reset": both(0.0, 0.0),
                "drive": (p.input_gain * np.concatenate([drive, drive], axis=-1)).astype(np.float32)}
    return {
        "diffusion": both(p.d_a / k, p.d_h / k),             # D * mean_k(x) = (D / K) * sum_k(x)
        "decay": both(p.d_a + p.mu_a, p.d_h + p.mu_h),       # the -D*x of diffusion merged with -mu*x
        "low": both(-p.clamp, p.h_min),
        "high": both(p.clamp, p.clamp),
        "reset": both(0.0, 1.0) if p.init == "zero" else both(*homogeneous_point(p)),
        "drive": np.concatenate([p.input_gain * drive, np.zeros_like(drive)], axis=-1).astype(np.float32),
    }


def rd_step(s: np.ndarray, obs: np.ndarray, c: dict[str, np.ndarray], p: RDParams,
            gamma: Optional[np.ndarray] = None, dynamics: str = "rd") -> np.ndarray:
    """One module update, in place, for a batch of envs; returns rd_out (E, A).

    s: (E, K, 2A) stacked state, a = s[..., :A], h = s[..., A:]; obs: (E, K); gamma: per-env guidance
    (E,) or None for p.gamma. The equations are the module docstring's. a and h share one array so
    that each numpy call (about a microsecond on arrays this small, which dominates the cost) updates
    both species at once.
    """
    n_act = s.shape[-1] // 2
    a, h = s[..., :n_act], s[..., n_act:]
    w = np.exp(np.minimum(np.abs(obs), 50.0))                # softmax_k(min(|s_t|, 50)): no overflow
    w /= w.sum(axis=1, keepdims=True)                        # (E, K) emphasis
    ds = c["diffusion"] * s.sum(axis=1, keepdims=True) - c["decay"] * s + (w * obs)[:, :, None] * c["drive"]
    if dynamics == "rd":
        g = p.gamma if gamma is None else gamma[:, None, None]
        ds += g * np.sign(s)                                 # blind (or TD-scaled) guidance
        a2 = a * a
        ds[..., :n_act] += p.rho_a * a2 / h                  # h >= h_min > 0 keeps this finite
        ds[..., n_act:] += p.rho_h * a2
    s += p.dt * ds
    np.maximum(s, c["low"], out=s)
    np.minimum(s, c["high"], out=s)
    return (w[:, :, None] * a).sum(axis=1)


class RDModule:
    """Per-env module state s = [a | h], (E, K, 2A), kept on the host in numpy float32. It is never
    trained and needs no gradient, and a step is ~25 tiny array ops: ~1 us each in numpy against
    ~4 us for a CPU torch op or a kernel launch on CUDA. drive: (K, A) shared, or (E, K, A)."""

    def __init__(self, num_envs: int, obs_dim: int, n_actions: int, params: RDParams, rd_seed: int = 0,
                 dynamics: str = "rd", drive: Optional[np.ndarray] = None):
        self.p, self.n_actions, self.dynamics = params, n_actions, dynamics
        drive = rd_drive_matrix(obs_dim, n_actions, rd_seed) if drive is None else drive
        self.c = rd_constants(params, drive, dynamics)
        self.s = np.zeros((num_envs, obs_dim, 2 * n_actions), dtype=np.float32)
        self.reset(np.ones(num_envs, dtype=bool))

    @property
    def a(self) -> np.ndarray:
        return self.s[..., : self.n_actions]

    @property
    def h(self) -> np.ndarray:
        return self.s[..., self.n_actions:]

    def reset(self, mask: np.ndarray) -> None:
        """a = 0, h = 1 (leaky: h = 0) for the envs in mask (their episode just ended)."""
        self.s[mask] = self.c["reset"]

    def step(self, obs: np.ndarray, gamma: Optional[np.ndarray] = None) -> np.ndarray:
        return rd_step(self.s, obs, self.c, self.p, gamma, self.dynamics)

    def peek(self, obs: np.ndarray, idx: np.ndarray, gamma: Optional[np.ndarray] = None) -> np.ndarray:
        """State (len(idx), K, 2A) the envs idx would have after taking obs (len(idx), K); no change to s."""
        c = self.c if self.c["drive"].ndim == 2 else {**self.c, "drive": self.c["drive"][idx]}
        s = self.s[idx].copy()
        rd_step(s, obs, c, self.p, None if gamma is None else gamma[idx], self.dynamics)
        return s

    def diagnostics(self, num_agents: int = 1) -> np.ndarray:
        """(num_agents, 3): per agent (its envs are consecutive), mean |a|, mean |h| and the fraction of
        entries of a and h sitting at a clip bound."""
        s = self.s.reshape(num_agents, -1, self.s.shape[-1])
        at_clip = ((s <= self.c["low"]) | (s >= self.c["high"])).reshape(num_agents, -1).mean(1)
        mean_a = np.abs(s[..., : self.n_actions]).reshape(num_agents, -1).mean(1)
        mean_h = np.abs(s[..., self.n_actions:]).reshape(num_agents, -1).mean(1)
        return np.stack([mean_a, mean_h, at_clip], axis=1)


def policy_input(obs: np.ndarray, stack: Optional[np.ndarray], rd_state: Optional[np.ndarray]) -> np.ndarray:
    """x_t (E, D) = [s_t | s_{t-1} .. s_{t-K+1} (stack, (E, K-1, obs_dim)) | a, h (rd_state, (E, K, 2A))]."""
    parts = [obs]
    if stack is not None:
        parts.append(stack.reshape(len(obs), -1))
    if rd_state is not None:
        parts.append(rd_state.reshape(len(obs), -1))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else obs


class Observer:
    """Everything the agents see besides s_t, for all E envs: the last K-1 observations (frame stack),
    the fixed module (whose output rd_out goes to the blend and whose state, with --rd-input, goes to
    the networks), the shuffle control's history of rd_out, and the TD-guidance scale. It advances once
    per env step with the new observation, so x_t includes s_t; `final_input` gives x for the true
    last observation of an episode that was cut by the time limit (its bootstrap value)."""

    def __init__(self, args: Args, num_agents: int, obs_dim: int, n_actions: int):
        e, n = num_agents * args.num_envs, args.num_envs
        self.args, self.n, self.num_agents, self.n_actions = args, n, num_agents, n_actions
        self.stack = np.zeros((e, args.frame_stack - 1, obs_dim), dtype=np.float32) if args.frame_stack > 1 else None
        self.module = None
        if args.rd:
            seeds = [args.rd_seed + (m if args.vary_rd_seed else 0) for m in range(num_agents)]
            drive = np.repeat(np.stack([rd_drive_matrix(obs_dim, n_actions, s) for s in seeds]), n, axis=0)
            self.module = RDModule(e, obs_dim, n_actions, RDParams.from_args(args), dynamics=args.rd_dynamics,
                                   drive=drive)
        self.td = args.rd and args.guidance == "td"
        self.delta = np.zeros(e, dtype=np.float32)                 # last known TD error per env
        self.td_var = np.ones(num_agents, dtype=np.float32)        # EMA of delta^2 per agent
        self.history = np.zeros((args.num_steps, e, n_actions), dtype=np.float32)   # shuffle control
        self.filled, self.cursor = 0, 0

    def gamma(self) -> Optional[np.ndarray]:
        """Per-env guidance strength (E,) for --guidance td, else None (the fixed --gamma)."""
        if not self.td:
            return None
        sigma = np.repeat(np.sqrt(self.td_var), self.n)
        return (self.args.gamma * np.tanh(self.delta / np.maximum(sigma, 1e-3))).astype(np.float32)

    def record_td(self, reward, value, prev_value, prev_done, prev_valid) -> None:
        """delta_{t-1} = r_{t-1} + discount V(x_t)(1 - d_{t-1}) - V(x_{t-1}) for envs whose previous step
        is known (prev_valid); 0 for an env whose episode just started."""
        delta = reward + self.args.discount * value * (1.0 - prev_done) - prev_value
        self.delta = np.where(prev_valid, delta, 0.0).astype(np.float32)
        sq = (self.delta ** 2).reshape(self.num_agents, self.n).mean(axis=1)
        self.td_var = (0.99 * self.td_var + 0.01 * sq).astype(np.float32)

    def reset(self, done: np.ndarray) -> None:
        """New episodes in the envs of `done`: empty frame stack, module reset, no TD error yet."""
        if self.stack is not None:
            self.stack[done] = 0.0
        if self.module is not None:
            self.module.reset(done)
        self.delta[done] = 0.0

    def observe(self, obs: np.ndarray, rng: list) -> tuple[np.ndarray, np.ndarray]:
        """Advance with s_t (E, obs_dim): -> (x_t (E, D), rd_used_t (E, A))."""
        rd_state, rd_used = None, np.zeros((len(obs), self.n_actions), dtype=np.float32)
        if self.module is not None:
            rd_out = self.module.step(obs, self.gamma())
            rd_state = self.module.s if self.args.use_input else None
            rd_used = self.blend_signal(rd_out, rng)
        x = policy_input(obs, self.stack, rd_state)
        if self.stack is not None:                                 # s_t joins the stack for step t+1
            self.stack[:, 1:] = self.stack[:, :-1].copy()
            self.stack[:, 0] = obs
        return x, rd_used

    def blend_signal(self, rd_out: np.ndarray, rng: list) -> np.ndarray:
        """rd_used for the blend: rd_out (module), zeros (zero), or rd_out of the same env at a step drawn
        uniformly among its last num_steps steps, this one included (shuffle)."""
        kind = self.args.rd_out
        if kind == "zero":
            return np.zeros_like(rd_out)
        if kind == "module":
            return rd_out
        self.history[self.cursor] = rd_out
        self.cursor = (self.cursor + 1) % len(self.history)
        self.filled = min(self.filled + 1, len(self.history))
        lags = np.concatenate([g.integers(0, self.filled, self.n) for g in rng])          # (E,) per agent
        rows = (self.cursor - 1 - lags) % len(self.history)
        return self.history[rows, np.arange(len(rd_out))]

    def final_input(self, final_obs: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """x (len(idx), D) for the true last observations of envs idx, before their reset."""
        stack = None if self.stack is None else self.stack[idx]
        rd_state = None
        if self.module is not None and self.args.use_input:
            gamma = self.gamma()
            rd_state = self.module.peek(final_obs, idx, gamma)
        return policy_input(final_obs, stack, rd_state)


# ==================================================================================================
# Model: S independent agents as one batch
# ==================================================================================================
class Agents(nn.Module):
    """S independent copies of CleanRL's CartPole agent (separate 64-64 tanh actor and critic with
    orthogonal init), stored with a leading agent axis and run as batched matmuls: hidden layers as
    (2S, ., 64) stacks (slice 2m actor, 2m+1 critic of agent m), heads as (S, 64, out). Agent m's
    initial weights come from its own generator, so it does not depend on S; each batched matmul
    computes each slice as its own matrix product, so agent m's numbers do not either."""

    def __init__(self, num_agents: int, in_dim: int, n_actions: int, seeds: list[int]):
        super().__init__()
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        orth = lambda fan_in, fan_out, std, g: nn.init.orthogonal_(torch.empty(fan_out, fan_in), std, generator=g).T
        w1, w2, wa, wc = [], [], [], []
        for g in gens:
            w1 += [orth(in_dim, 64, math.sqrt(2), g), orth(in_dim, 64, math.sqrt(2), g)]
            w2 += [orth(64, 64, math.sqrt(2), g), orth(64, 64, math.sqrt(2), g)]
            wa.append(orth(64, n_actions, 0.01, g))
            wc.append(orth(64, 1, 1.0, g).T)
        self.S = num_agents
        self.w1 = nn.Parameter(torch.stack(w1).contiguous())             # (2S, in, 64)
        self.b1 = nn.Parameter(torch.zeros(2 * num_agents, 1, 64))
        self.w2 = nn.Parameter(torch.stack(w2).contiguous())             # (2S, 64, 64)
        self.b2 = nn.Parameter(torch.zeros(2 * num_agents, 1, 64))
        self.wa = nn.Parameter(torch.stack(wa).contiguous())             # (S, 64, A)
        self.ba = nn.Parameter(torch.zeros(num_agents, 1, n_actions))
        self.wc = nn.Parameter(torch.stack(wc).contiguous())             # (S, 1, 64): V = z . w_c + b_c
        self.bc = nn.Parameter(torch.zeros(num_agents, 1))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(S, 2, B, 64): actor and critic features of x (S, B, in)."""
        S, B, D = x.shape
        x2 = x.unsqueeze(1).expand(S, 2, B, D).reshape(2 * S, B, D)
        z = torch.tanh(torch.baddbmm(self.b1, x2, self.w1))
        return torch.tanh(torch.baddbmm(self.b2, z, self.w2)).view(S, 2, B, 64)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V (S, B) of x (S, B, in)."""
        return self.critic_head(self.hidden(x)[:, 1])

    def critic_head(self, z: torch.Tensor) -> torch.Tensor:
        """V (S, B) from critic features z (S, B, 64), as a row-wise dot product: a batched matmul with
        one output column takes a different kernel for S = 1 than for S > 1 and breaks bit-equality."""
        return (z * self.wc).sum(-1) + self.bc

    def forward(self, x: torch.Tensor, rd_used: torch.Tensor, rd_weight: float):
        """(blended logits (S, B, A), value (S, B)) for x (S, B, in) and the stored rd_used (S, B, A)."""
        z = self.hidden(x)
        logits = torch.baddbmm(self.ba, z[:, 0].contiguous(), self.wa)      # contiguous slices: agent m's
        return blend_logits(logits, rd_used, rd_weight), self.critic_head(z[:, 1])


# ==================================================================================================
# Algorithm (pure functions; tests import them)
# ==================================================================================================
def blend_logits(policy_logits: torch.Tensor, rd_out: torch.Tensor, rd_weight: float) -> torch.Tensor:
    """(1 - lambda) * policy + lambda * rd_out, as one lerp; lambda = 0 returns the policy logits
    themselves, so the baseline is bit-identical to a run without the module."""
    if rd_weight == 0.0:
        return policy_logits
    return torch.lerp(policy_logits, rd_out, rd_weight)


def gumbel_noise(shape: tuple, gens: list, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise -log(E), E ~ Exp(1), shape (S, ...), slice m from agent m's generator."""
    out = torch.empty(shape)
    for m, g in enumerate(gens):
        out[m].exponential_(generator=g)
    return out.log_().neg_().to(device)


def sample_actions(logits: torch.Tensor, gumbel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max sample of Categorical(logits): argmax(log p + g). Returns (action, log p(action))."""
    logp = torch.log_softmax(logits, dim=-1)
    action = (logp + gumbel).argmax(dim=-1)
    return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
        discount: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a (T, ...) rollout.

    dones[t] = 1 when the episode ended at transition t (its reward already holds any truncation
    bootstrap); next_value = V(obs after the last step). Returns (advantages, returns).
    """
    not_done = 1.0 - dones
    next_values = torch.cat([values[1:], next_value.unsqueeze(0)], dim=0)
    deltas = rewards + discount * next_values * not_done - values
    coef = discount * gae_lambda * not_done
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = torch.addcmul(deltas[t], coef[t], last)
        adv[t] = last
    return adv, adv + values


def ppo_loss(logits, values, actions, old_logprobs, old_values, advantages, returns, clip_coef: float,
             clip_vloss: bool, ent_coef: float, vf_coef: float, norm_adv: bool):
    """Clipped PPO loss on one minibatch per agent: inputs (S, M[, A]); every mean is over M, per agent.
    Returns (loss, pg_loss, v_loss, entropy, approx_kl, clipfrac) each (S,), and ratio (S, M)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean(-1)
    log_ratio = logp - old_logprobs
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean(-1)  # k3 estimator (Schulman 2020)
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean(-1)
    if norm_adv:
        advantages = (advantages - advantages.mean(-1, keepdim=True)) / (advantages.std(-1, keepdim=True) + 1e-8)
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean(-1)
    if clip_vloss:
        v_clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean(-1)
    else:
        v_loss = 0.5 * ((values - returns) ** 2).mean(-1)
    loss = pg_loss - ent_coef * entropy + vf_coef * v_loss
    return loss, pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio


def clip_grad_norm_per_agent(params: list[torch.Tensor], num_agents: int, max_norm: float) -> torch.Tensor:
    """Scale each agent's gradient so that its global norm is at most max_norm (as clip_grad_norm_ does
    for one network); every parameter has the agent axis first (S or 2S rows). Returns the norms (S,)."""
    sq = sum(p.grad.reshape(num_agents, -1).pow(2).sum(1) for p in params)
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.view(num_agents, -1).mul_(coef.unsqueeze(1))
    return norms


def learning_curve_summary(ep_steps: np.ndarray, ep_returns: np.ndarray, total_steps: int,
                           window: int = 20, threshold: float = 475.0) -> dict:
    """Headline numbers from the episode log: final `window`-episode mean, first global step at
    which that running mean reaches `threshold`, and the AUC = time average over [0, total_steps]
    of the running mean (units of return; 0 before the first episode ends)."""
    if len(ep_returns) == 0:
        return {"final_return": None, "steps_to_threshold": None, "threshold_episode": None, "auc": 0.0}
    csum = np.cumsum(np.insert(ep_returns.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(ep_returns) + 1)
    lo = np.maximum(idx - window, 0)
    running = (csum[idx] - csum[lo]) / (idx - lo)
    hit = np.nonzero(running >= threshold)[0]
    widths = np.diff(np.append(ep_steps, total_steps)).clip(min=0)
    return {
        "final_return": float(running[-1]),
        "steps_to_threshold": int(ep_steps[hit[0]]) if len(hit) else None,
        "threshold_episode": int(hit[0]) if len(hit) else None,
        "auc": float((running * widths).sum() / total_steps),
    }


# two-sided 95% quantiles of Student's t for df = 1..30; beyond, a Cornish-Fisher expansion (error < 1e-4)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval(values) -> dict:
    """Mean and 95% t-interval of the non-None values: {n, mean, ci_low, ci_high} (CI None for n < 2)."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None}
    if len(x) < 2:
        return {"n": 1, "mean": float(x[0]), "ci_low": None, "ci_high": None}
    df = len(x) - 1
    z = 1.959964
    t = T975[df - 1] if df <= 30 else z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    half = t * x.std(ddof=1) / math.sqrt(len(x))
    return {"n": len(x), "mean": float(x.mean()), "ci_low": float(x.mean() - half), "ci_high": float(x.mean() + half)}


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             alpha: float = 1e-3) -> np.ndarray:
    """Held-out R^2 (one per target column) of a ridge regression y ~ [x, 1], features standardised on
    the training set: the linear probe of what a state holds about the hidden velocities."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    b = np.c_[(x_test - mu) / sd, np.ones(len(x_test))]
    reg = alpha * len(a) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0                                                  # no penalty on the intercept
    w = np.linalg.solve(a.T @ a + reg, a.T @ y_train)
    resid = ((y_test - b @ w) ** 2).sum(0)
    return 1.0 - resid / ((y_test - y_test.mean(0)) ** 2).sum(0)


# ==================================================================================================
# Run machinery. Blocks between "# >>> copied:" and "# <<< copied:" are byte-identical in every
# script that has them; tests/test_copied_blocks.py fails when two copies drift.
# ==================================================================================================
# >>> copied: seeding
def seed_everything(seed: int, torch_deterministic: bool) -> None:
    """Seed python, numpy and torch; make cuDNN deterministic if asked."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic
# <<< copied: seeding


# >>> copied: device
def pick_device(cuda: bool) -> torch.device:
    """CUDA is permission, not demand: use it only when asked for and present."""
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")
# <<< copied: device


# >>> copied: run-name
def check_exp_name(exp_name: str) -> None:
    """A run folder is always directly under runs/: no path separator, no '..', a length that fits."""
    if not exp_name or exp_name in (".", "..") or "/" in exp_name or (os.altsep and os.altsep in exp_name) \
            or os.sep in exp_name or "\0" in exp_name:
        raise ValueError(f"--exp-name {exp_name!r} must be a plain name (no path separator, not '.' or '..')")
    if len(exp_name.encode()) > 200:
        raise ValueError(f"--exp-name is {len(exp_name.encode())} bytes long; at most 200 fit in a folder name")


def make_run_dir(exp_name: str, seed: int, root: str = "runs") -> tuple[str, str]:
    """Create runs/{exp_name}__{seed}__{unix time}[-k] atomically; returns (run_name, run_dir).
    A folder that cannot be created is a ValueError with the reason, raised before any work."""
    check_exp_name(exp_name)
    base = f"{exp_name}__{seed}__{int(time.time())}"
    try:
        os.makedirs(root, exist_ok=True)
        for k in range(10_000):
            run_name = base if k == 0 else f"{base}-{k}"
            run_dir = os.path.join(root, run_name)
            try:
                os.mkdir(run_dir)
                return run_name, run_dir
            except FileExistsError:
                continue
    except OSError as e:
        raise ValueError(f"cannot create a run folder under {os.path.abspath(root)!r}: {e.strerror or e}") from None
    raise ValueError(f"could not create a fresh run folder for {base}")
# <<< copied: run-name


# >>> copied: wandb-init
def check_wandb(track: bool) -> None:
    """--track needs W&B credentials (WANDB_API_KEY or `wandb login`) or WANDB_MODE=offline/disabled."""
    if not track or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return
    if os.environ.get("WANDB_API_KEY"):
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ValueError("--track=True needs W&B credentials: run `wandb login`, set WANDB_API_KEY, "
                     "or set WANDB_MODE=offline")


def init_wandb(args, run_name: str, run_dir: str, x_axis: str):
    """Start a W&B run that plots every metric against x_axis; honours WANDB_MODE=offline."""
    import wandb

    run = wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args),
                     name=run_name, dir=run_dir, save_code=True)
    run.define_metric(x_axis)
    run.define_metric("*", step_metric=x_axis)
    return run
# <<< copied: wandb-init


# >>> copied: outputs
def to_json_safe(value):
    """Builtins for json: numpy/torch scalars and arrays become numbers and lists, NaN/Inf become None
    (metrics.jsonl and summary.json stay valid JSON); anything else unknown becomes its str."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: str, obj) -> None:
    """Write obj as strict JSON (no NaN) via a temporary file, so a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(to_json_safe(obj), f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)


class RunLog:
    """runs/{run_name}/: config.json (vars(args) + argv), metrics.jsonl (one row per log call, the
    x-axis first, flushed line by line), summary.json; with --track every row and the summary also go
    to W&B. `last_x` and `rows` say how far the run got (for an interrupted run's summary)."""

    def __init__(self, args, run_name: str, run_dir: str, x_axis: str):
        self.run_name, self.run_dir, self.x_axis = run_name, run_dir, x_axis
        self.last_x, self.rows, self.held = None, 0, []
        write_json(os.path.join(run_dir, "config.json"), {"args": vars(args), "argv": sys.argv, "x_axis": x_axis})
        self.metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        self.wandb = init_wandb(args, run_name, run_dir, x_axis) if args.track else None

    def log(self, x: int, row: dict) -> None:
        row = to_json_safe({self.x_axis: x, **row})
        line = json.dumps(row, allow_nan=False) + "\n"
        # a row and its count go together: SIGINT/SIGTERM are held back until both are done, so an
        # interrupted run's summary counts exactly the rows in metrics.jsonl. Masking the signals is
        # not enough: another thread (torch's) may take a process-directed signal, and Python runs
        # the handler in the main thread at once; so the handlers only record it meanwhile, and a
        # recorded signal is raised again once the real handlers are back
        self.held = []
        saved = {s: signal.signal(s, self._hold) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.metrics.write(line)
            self.last_x, self.rows = x, self.rows + 1
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
        if self.held:
            signal.raise_signal(self.held[0])
        if self.wandb is not None:
            self.wandb.log(row)

    def _hold(self, signum, frame) -> None:
        self.held.append(signum)

    def summary(self, summary: dict) -> None:
        write_json(os.path.join(self.run_dir, "summary.json"), summary)
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in to_json_safe(summary).items()
                                       if not isinstance(v, (list, dict))})

    def close(self, exit_code: int = 0) -> None:
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None
# <<< copied: outputs


# >>> copied: entry
class Interrupted(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` swallows it); the run ends with status 'interrupted'."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def fail(script: str, message: str, code: int = 2):
    """One line on stderr, no traceback, a non-zero exit."""
    print(f"{script}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def check_memory(nbytes: float, what: str, device: torch.device) -> None:
    """Refuse, before any work, buffers that cannot fit: nbytes is the script's estimate of its large
    allocations on `device` (host RAM from /proc/meminfo, or the GPU's free memory)."""
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            available = info.get("MemAvailable", info["MemTotal"])
        except (OSError, KeyError, ValueError, IndexError):
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > 0.8 * available:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.3g} GiB, more than 80% of the "
                         f"{available / 2**30:.3g} GiB available on {device.type}")


def parse_args(script: str, args_cls, finalize):
    """tyro arguments (bool flags as --flag=True/False), then the script's checks finalize(args) and the
    run-folder and W&B checks; bad input (a ValueError) ends here with one line and exit status 2,
    before any folder exists."""
    args = tyro.cli(args_cls, config=(tyro.conf.FlagConversionOff,))
    try:
        finalize(args)
        check_exp_name(args.exp_name)
        check_wandb(args.track)
    except ValueError as e:
        fail(script, str(e))
    return args


def run_experiment(script: str, args, train, x_axis: str, root: str = "runs") -> int:
    """Run train(args, log) -> summary dict inside runs/{run_name}/ and return the exit status: 0 for
    status 'ok'; 1 for any other status train returns (a non-finite loss, say) and for an exception
    (status 'failed', the traceback in traceback.txt); 130/143 for SIGINT/SIGTERM (status
    'interrupted', no traceback). Every row logged stays in metrics.jsonl; summary.json is always
    written, with the last x-axis value reached; a W&B run is finished with the exit status."""
    import traceback

    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    log, run_dir, message = None, None, None
    try:
        try:
            run_name, run_dir = make_run_dir(args.exp_name, args.seed, root)
        except ValueError as e:
            for s, h in handlers.items():
                signal.signal(s, h)
            fail(script, str(e))
        log = RunLog(args, run_name, run_dir, x_axis)
        seed_everything(args.seed, args.torch_deterministic)
        summary = train(args, log)
        code = 0 if summary.get("status") == "ok" else 1
        if code:
            message = f"stopped: {summary.get('status')}"
    except Interrupted as e:
        code, message = 128 + e.signum, f"interrupted by {e}"
        summary = {"status": "interrupted", "signal": str(e)}
    except Exception as e:  # a failed run still gets its summary and status
        if run_dir is None:
            raise
        code, message = 1, f"failed: {type(e).__name__}: {e}"
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        with open(os.path.join(run_dir, "traceback.txt"), "w") as f:
            f.write(traceback.format_exc())
    for s in handlers:                                   # a second signal cannot break the clean-up
        signal.signal(s, signal.SIG_IGN)
    try:
        if run_dir is not None:
            summary = {**summary, f"last_{x_axis}": None if log is None else log.last_x,
                       "rows_logged": 0 if log is None else log.rows}
            if log is None:
                write_json(os.path.join(run_dir, "summary.json"), summary)
            else:
                log.summary(summary)
                log.close(exit_code=code)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if message is not None:
        where = f"; rows so far are in {run_dir}/metrics.jsonl" if run_dir is not None else ""
        tb = " (traceback in traceback.txt)" if summary.get("status") == "failed" else ""
        print(f"{script}: {message}{where}{tb}", file=sys.stderr, flush=True)
    return code
# <<< copied: entry


def plot_learning_curve(ep_steps: np.ndarray, ep_returns: np.ndarray, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep_steps, ep_returns, ".", ms=2, alpha=0.3, label="episode")
    if len(ep_returns):
        k = np.ones(min(20, len(ep_returns))) / min(20, len(ep_returns))
        ax.plot(ep_steps[len(k) - 1:], np.convolve(ep_returns, k, mode="valid"), lw=2, label="20-episode mean")
    ax.axhline(475, color="gray", ls="--", lw=1)
    ax.set(xlabel="global_step", ylabel="episodic return", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ==================================================================================================
# Stages
# ==================================================================================================
def anneal(iteration: int, args: Args) -> float:
    """Learning rate of update `iteration` (1-based): linear from learning_rate to 0 with --anneal-lr."""
    if not args.anneal_lr:
        return args.learning_rate
    return args.learning_rate * (1.0 - (iteration - 1.0) / args.num_iterations)


def agent_seeds(args: Args) -> list[int]:
    return [args.seed + m for m in range(args.num_seeds)]


def collect_rollout(envs: CartPoleBatch, observer: Observer, agents: Agents, state: dict, args: Args,
                    device: torch.device) -> dict:
    """num_steps steps of all agents' envs. state carries, between rollouts, the current policy input
    x (E, D), rd_used (E, A), the TD bookkeeping and the per-agent noise generators; returns the batch
    (tensors (S, T*N, ...)) and the episodes that finished (global env index, return, step)."""
    S, N, T = args.num_seeds, args.num_envs, args.num_steps
    E, A = S * N, observer.n_actions
    x_buf = np.zeros((T, E, state["x"].shape[1]), dtype=np.float32)
    rd_buf = np.zeros((T, E, A), dtype=np.float32)               # rd_used of each step, reused in the update
    rew_buf = np.zeros((T, E), dtype=np.float32)
    done_buf = np.zeros((T, E), dtype=np.float32)
    actions, logps, values, episodes = [], [], [], []
    gumbel = gumbel_noise((S, T, N, A), state["torch_gens"], device)
    for step in range(T):
        state["global_step"] += N
        x_buf[step], rd_buf[step] = state["x"], state["rd_used"]
        x_t = torch.from_numpy(x_buf[step]).to(device).view(S, N, -1)
        rd_t = torch.from_numpy(rd_buf[step]).to(device).view(S, N, A)
        with torch.no_grad():
            logits, value = agents(x_t, rd_t, args.blend_weight)
            action, logp = sample_actions(logits, gumbel[:, step])
        actions.append(action), logps.append(logp), values.append(value)
        if observer.td:                                           # one host sync per step either way
            both = torch.cat([action.reshape(-1).to(value.dtype), value.reshape(-1)]).cpu().numpy()
            act_np, value_np = both[:E].astype(np.int64), both[E:]
            if state["prev_value"] is not None:
                observer.record_td(state["prev_reward"], value_np, state["prev_value"], state["prev_done"],
                                   state["prev_valid"])
            state["prev_value"] = value_np
        else:
            act_np = action.reshape(-1).cpu().numpy()
        next_obs, reward, terminated, truncated, final_obs, ep_ret = envs.step(act_np)
        done = terminated | truncated
        rew_buf[step], done_buf[step] = reward, done
        if truncated.any():                                       # time limit: bootstrap from V(x_final)
            idx = np.nonzero(truncated)[0]
            x_final = np.zeros((E, x_buf.shape[2]), dtype=np.float32)
            x_final[idx] = observer.final_input(final_obs[idx], idx)
            with torch.no_grad():
                v_final = agents.value(torch.from_numpy(x_final).to(device).view(S, N, -1)).reshape(-1).cpu().numpy()
            rew_buf[step, idx] += args.discount * v_final[idx]
        if done.any():
            for i in np.nonzero(done)[0]:
                episodes.append((int(i), float(ep_ret[i]), state["global_step"]))
            observer.reset(done)                                  # the module state lives for one episode
        state["prev_reward"], state["prev_done"], state["prev_valid"] = reward, done.astype(np.float32), ~done
        state["x"], state["rd_used"] = observer.observe(next_obs, state["np_gens"])
    val_buf = torch.stack(values)                                 # (T, S, N)
    with torch.no_grad():
        next_value = agents.value(torch.from_numpy(state["x"]).to(device).view(S, N, -1))
        rewards = torch.from_numpy(rew_buf).to(device).view(T, S, N)
        dones = torch.from_numpy(done_buf).to(device).view(T, S, N)
        advantages, returns = gae(rewards, val_buf, dones, next_value, args.discount, args.gae_lambda)
    per_agent = lambda t: t.transpose(0, 1).reshape(S, T * N, *t.shape[3:])     # (T, S, N, ...) -> (S, T*N, ...)
    batch = {"x": per_agent(torch.from_numpy(x_buf).to(device).view(T, S, N, -1)),
             "rd": per_agent(torch.from_numpy(rd_buf).to(device).view(T, S, N, A)),
             "actions": per_agent(torch.stack(actions)), "logprobs": per_agent(torch.stack(logps)),
             "values": per_agent(val_buf), "advantages": per_agent(advantages), "returns": per_agent(returns)}
    return {"batch": batch, "episodes": episodes, "rd_used": rd_buf, "rewards": rew_buf, "dones": done_buf,
            "x": x_buf}


def ppo_update(agents: Agents, optimizer: torch.optim.Optimizer, batch: dict, args: Args, gens: list,
               device: torch.device):
    """update_epochs passes of minibatch PPO over one rollout, every agent on its own minibatches (its
    own permutation); with --target-kl (one agent) the epochs stop once the last minibatch's approx_kl
    exceeds it. Returns (stats (n_minibatches, S, 6) of loss, policy loss, value loss, entropy,
    approx_kl, clipfrac; the first minibatch's max |ratio - 1| per agent (S,))."""
    S = args.num_seeds
    rows = torch.arange(S, device=device).unsqueeze(1)
    params = list(agents.parameters())
    stats, first_ratio_dev = [], None
    for epoch in range(args.update_epochs):
        perm = torch.stack([torch.randperm(args.batch_size, generator=g) for g in gens]).to(device)
        for start in range(0, args.batch_size, args.minibatch_size):
            mb = perm[:, start:start + args.minibatch_size]
            pick = lambda key: batch[key][rows, mb]
            logits, new_value = agents(pick("x"), pick("rd"), args.blend_weight)
            loss, pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio = ppo_loss(
                logits, new_value, pick("actions"), pick("logprobs"), pick("values"), pick("advantages"),
                pick("returns"), args.clip_coef, args.clip_vloss, args.ent_coef, args.vf_coef, args.norm_adv)
            if first_ratio_dev is None:                        # before any gradient step: must be 0
                first_ratio_dev = (ratio.detach() - 1.0).abs().amax(-1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()                               # agents share no parameter: sum = each its own
            clip_grad_norm_per_agent(params, S, args.max_grad_norm)
            optimizer.step()
            stats.append(torch.stack([loss.detach(), pg_loss.detach(), v_loss.detach(), entropy.detach(),
                                      approx_kl, clipfrac], dim=1))
        if args.target_kl is not None and approx_kl[0].item() > args.target_kl:
            break
    return torch.stack(stats), first_ratio_dev


def open_agent_logs(args: Args, log: RunLog) -> list:
    """With --num-seeds S > 1, one run folder per agent beside the main one (runs/{exp_name}__{seed+m}__
    {time}), holding that agent's config, metrics and summary as if it had run alone; [log] for S = 1."""
    if args.num_seeds == 1:
        return [log]
    logs, root = [], os.path.dirname(log.run_dir)
    for m, seed in enumerate(agent_seeds(args)):
        member = replace(args, seed=seed, num_seeds=1, track=False,
                         rd_seed=args.rd_seed + (m if args.vary_rd_seed else 0), vary_rd_seed=False)
        run_name, run_dir = make_run_dir(args.exp_name, seed, root)
        logs.append(RunLog(member, run_name, run_dir, log.x_axis))
    return logs


def make_learners(args: Args, device: torch.device):
    """(envs, observer, agents, rollout state) for args.num_seeds agents, each from its own seed."""
    seeds = agent_seeds(args)
    envs = CartPoleBatch(seeds, args.num_envs, args.env == "stateless", args.max_episode_steps)
    observer = Observer(args, args.num_seeds, envs.obs_dim, 2)
    state = {"global_step": 0, "torch_gens": [torch.Generator().manual_seed(s) for s in seeds],
             "np_gens": [np.random.Generator(np.random.PCG64([s, 1])) for s in seeds],
             "prev_value": None, "prev_reward": None, "prev_done": None, "prev_valid": None}
    state["x"], state["rd_used"] = observer.observe(envs.reset(), state["np_gens"])
    agents = Agents(args.num_seeds, state["x"].shape[1], 2, seeds).to(device)
    return envs, observer, agents, state


def train(args: Args, log: RunLog) -> dict:
    """PPO for args.num_seeds agents in lockstep on args.env for args.total_timesteps steps each; logs
    every episode and every update, writes the learning curves (and the model with --save-model);
    returns the summary (with --num-seeds > 1: mean and 95% t-interval over the agents)."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)
    S, N = args.num_seeds, args.num_envs
    seeds = agent_seeds(args)
    envs, observer, agents, state = make_learners(args, device)
    optimizer = torch.optim.Adam(agents.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    logs = open_agent_logs(args, log)
    curves = [([], [], []) for _ in range(S)]                # per agent: episode steps, returns, times
    status, start_time = "ok", time.time()
    print_every = max(1, args.num_iterations // 20)
    try:
        for iteration in range(1, args.num_iterations + 1):
            optimizer.param_groups[0]["lr"] = anneal(iteration, args)
            roll = collect_rollout(envs, observer, agents, state, args, device)
            for i, ret, step in roll["episodes"]:
                steps_m, rets_m, times_m = curves[i // N]
                steps_m.append(step), rets_m.append(ret), times_m.append(time.time() - start_time)
                logs[i // N].log(step, {"charts/episodic_return": ret, "charts/episodic_length": int(ret)})
            stats, first_ratio_dev = ppo_update(agents, optimizer, roll["batch"], args, state["torch_gens"], device)

            # ---- per-iteration logging (one host sync) ----
            b_ret, b_val = roll["batch"]["returns"], roll["batch"]["values"]
            var_y = b_ret.var(-1)
            explained_var = torch.where(var_y == 0, torch.nan, 1 - (b_ret - b_val).var(-1) / var_y)
            per_agent_mean = stats.permute(1, 2, 0).contiguous().mean(-1)   # (S, 6); a last-axis mean is S-free
            table = torch.cat([per_agent_mean, stats[-1, :, 4:5], explained_var[:, None], first_ratio_dev[:, None]],
                              dim=1).tolist()                  # (S, 9)
            global_step = state["global_step"]
            sps = int(global_step * S / (time.time() - start_time))
            diag = observer.module.diagnostics(S) if observer.module is not None else None
            rd_norm = np.linalg.norm(roll["rd_used"], axis=-1).reshape(args.num_steps, S, N).transpose(1, 0, 2)
            rd_norm = rd_norm.reshape(S, -1).mean(axis=1)
            for m, row_vals in enumerate(table):
                loss_m, pg_m, v_m, ent_m, _, clipfrac_m, kl_m, ev, ratio_dev = row_vals
                row = {"charts/learning_rate": optimizer.param_groups[0]["lr"], "charts/SPS": sps,
                       "losses/loss": loss_m, "losses/policy_loss": pg_m, "losses/value_loss": v_m,
                       "losses/entropy": ent_m, "losses/approx_kl": kl_m, "losses/clipfrac": clipfrac_m,
                       "losses/explained_variance": ev, "debug/first_ratio_max_dev": ratio_dev,
                       "debug/update_minibatches": int(stats.shape[0])}
                if diag is not None:
                    row.update({"rd/mean_abs_a": diag[m, 0], "rd/mean_abs_h": diag[m, 1], "rd/clip_fraction": diag[m, 2],
                                "rd/used_norm": float(rd_norm[m])})
                logs[m].log(global_step, row)
            if S > 1:
                recent = [float(np.mean(c[1][-20:])) for c in curves if c[1]]
                log.log(global_step, {"charts/return20_mean": float(np.mean(recent)) if recent else None,
                                      "charts/SPS": sps, "charts/agents_reporting": len(recent)})
            bad = [m for m, r in enumerate(table) if not all(np.isfinite([r[0], r[1], r[2], r[3], r[6]]))]
            if bad:
                status = f"non-finite loss at global_step {global_step} (agent seeds {[seeds[m] for m in bad]})"
                break
            if iteration % print_every == 0 or iteration == args.num_iterations:
                recent = np.mean([np.mean(c[1][-20:]) for c in curves if c[1]]) if any(c[1] for c in curves) else math.nan
                print(f"global_step {global_step:>8d}/{args.total_timesteps}  return(20) {recent:7.1f}  "
                      f"SPS {sps} ({S} agent{'s' if S > 1 else ''})", flush=True)
    except BaseException as e:                                   # the agent folders get their status too
        if S > 1:
            for member_log in logs:
                member_log.summary({"status": "interrupted" if isinstance(e, Interrupted) else "failed",
                                    f"last_{log.x_axis}": member_log.last_x, "rows_logged": member_log.rows})
                member_log.close(exit_code=1)
        raise

    # ---- summaries, plots, model ----
    wall_time = time.time() - start_time
    summaries = []
    for m in range(S):
        steps_m, rets_m, times_m = curves[m]
        steps_a, rets_a = np.array(steps_m, dtype=np.int64), np.array(rets_m)
        curve = learning_curve_summary(steps_a, rets_a, state["global_step"])
        summaries.append({
            "status": status, "env": args.env, "gamma": args.gamma, "rd_weight": args.rd_weight, "rd": args.rd,
            "rd_out": args.rd_out, "rd_input": args.rd_input, "rd_dynamics": args.rd_dynamics,
            "guidance": args.guidance, "frame_stack": args.frame_stack,
            "rd_seed": args.rd_seed + (m if args.vary_rd_seed else 0), "seed": seeds[m],
            "global_step": state["global_step"], "episodes": len(rets_m),
            "final_return_mean20": curve["final_return"], "steps_to_475": curve["steps_to_threshold"],
            "auc": curve["auc"], "wall_time_s": wall_time, "SPS": state["global_step"] * S / wall_time,
            "time_to_475_s": None if curve["threshold_episode"] is None else times_m[curve["threshold_episode"]],
        })
        title = (f"{logs[m].run_name} ({args.env}, gamma={args.gamma}, lambda={args.blend_weight}, "
                 f"rd_out={args.rd_out}, rd_input={args.rd_input})")
        plot_learning_curve(steps_a, rets_a, title, os.path.join(logs[m].run_dir, "learning_curve.png"))
    if S == 1:
        summary = summaries[0]
        if args.save_model and status == "ok":
            summary.update(save_and_evaluate(agents, args, device, log.run_dir, state["x"].shape[1]))
    else:
        for m, member_log in enumerate(logs):
            member_log.summary({**summaries[m], f"last_{log.x_axis}": member_log.last_x,
                                "rows_logged": member_log.rows})
            member_log.close()
        summary = {k: v for k, v in summaries[0].items() if k not in ("seed", "rd_seed", "episodes",
                                                                       "final_return_mean20", "steps_to_475", "auc",
                                                                       "time_to_475_s")}
        summary.update({
            "num_seeds": S, "seeds": seeds, "rd_seeds": [s["rd_seed"] for s in summaries],
            "agent_runs": [member_log.run_name for member_log in logs],
            "final_return_mean20": t_interval([s["final_return_mean20"] for s in summaries]),
            "auc": t_interval([s["auc"] for s in summaries]),
            "steps_to_475": t_interval([s["steps_to_475"] for s in summaries]),
            "solved": sum(s["steps_to_475"] is not None for s in summaries),
            "per_agent": {str(s["seed"]): {k: s[k] for k in ("final_return_mean20", "steps_to_475", "auc")}
                          for s in summaries},
        })
    final = summary["final_return_mean20"]
    print(f"{log.run_name}: final return(20) {final if S == 1 else final['mean']}, "
          f"{summary['SPS']:.0f} SPS, {wall_time:.1f} s -> {log.run_dir}")
    return summary


def evaluate(agents: Agents, args: Args, device: torch.device, episodes: int, seed: int) -> list[float]:
    """Greedy (argmax of the blended logits) returns of `episodes` episodes of agent 0, run side by side
    as one batch of envs, with the same module, frame stack and blend as in training."""
    eval_args = replace(args, num_envs=episodes, num_seeds=1)
    envs = CartPoleBatch([seed], episodes, args.env == "stateless", args.max_episode_steps)
    observer = Observer(eval_args, 1, envs.obs_dim, 2)
    gens = [np.random.Generator(np.random.PCG64([seed, 1]))]
    x, rd_used = observer.observe(envs.reset(), gens)
    returns, running = [None] * episodes, np.ones(episodes, dtype=bool)
    while running.any():
        with torch.no_grad():
            logits, _ = agents(torch.from_numpy(x).to(device)[None], torch.from_numpy(rd_used).to(device)[None],
                               args.blend_weight)
        obs, _, terminated, truncated, _, ep_ret = envs.step(logits[0].argmax(-1).cpu().numpy())
        for i in np.nonzero((terminated | truncated) & running)[0]:
            returns[i], running[i] = float(ep_ret[i]), False
        observer.reset(terminated | truncated)
        x, rd_used = observer.observe(obs, gens)
    return returns


def save_and_evaluate(agents: Agents, args: Args, device: torch.device, run_dir: str, in_dim: int) -> dict:
    """Save the agent to run_dir/{exp_name}.model, reload it and evaluate it greedily."""
    model_path = os.path.join(run_dir, f"{args.exp_name}.model")
    torch.save({"agent": agents.state_dict(), "args": vars(args)}, model_path)
    eval_agents = Agents(1, in_dim, 2, [args.seed]).to(device)
    eval_agents.load_state_dict(torch.load(model_path, map_location=device)["agent"])
    eval_returns = evaluate(eval_agents, args, device, args.eval_episodes, seed=args.seed + 10_000)
    print(f"saved {model_path}; greedy return over {args.eval_episodes} episodes: {np.mean(eval_returns):.1f}")
    return {"eval_greedy_return_mean": float(np.mean(eval_returns)), "eval_greedy_returns": eval_returns}


if __name__ == "__main__":
    args = parse_args("rd_ppo.py", Args, finalize_args)
    sys.exit(run_experiment("rd_ppo.py", args, train, x_axis="global_step"))
