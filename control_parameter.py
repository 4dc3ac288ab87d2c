"""control_parameter.py: does a selective-pressure weight beta(s,t) with a crystallization factor C(t)
control the learning transition?

Question (seed 000, zb523/metalearning, phase 2): after reading gradient magnitude as an order
parameter (a measurement), the seed tried a control parameter: weight each sample's squared TD
error by a "selective pressure" that favours valuable, certain states and grows as performance
improves. It reports that Uncertainty Focus crystallizes faster than Value Focus (C = 0.517 vs
0.508) and concludes that crystallization measures stability, not quality. We test both claims.

Task and agent: the 1-D corridor and DQN of order_parameter.py with the original phase-2
settings: N = 30, H = 32, 300 episodes, Adam lr 1e-3, batch 64, 1 gradient step per env step,
per-network gradient-norm clipping at 1.0 (all configurations, Baseline included).

Selective pressure, per minibatch sample i with state s_i (a detached weight):
    beta(s,t) = beta0 * exp(alpha * V(s) - gamma_u * U(s)) * C(t)
    L = mean_i beta(s_i,t) * (Q(s_i,a_i) - y_i)^2                    (Baseline: beta = 1)
    V(s)   running arithmetic mean of max_a Q_online(s,a), updated once per real env step for the
           state the agent acted in (not during pre-fill); unseen states have V = 0.
    U(s)   EMA of the variance of Q across actions, U <- 0.8 U + 0.2 var_a Q(s,.) (torch.var,
           unbiased: (Q0-Q1)^2/2 with two actions), updated per minibatch sample *after* that
           sample's beta is read, in sample order (duplicates of a state in one minibatch see each
           other's updates, as in the original's per-sample loop); unseen states have U = 1 and
           take the first value directly. --uncertainty constant reproduces the original, whose
           shape check made U = 1 for every state, always.
    C(t)   C0 = 0.5; after every episode e >= 10: m_e = mean return of episodes e-9..e,
           C <- clip(C + kappa * (m_e - m_prev) / |m_prev + 1e-8|, 0.1, 2) (the first update uses 0).
State ids are exact corridor cells (the original rounded p/N to 2 decimals: the same for N <= 100);
gymnasium observations are rounded to 2 decimals and hashed into --table-size slots. V, U and the
visit counts are [M, S] tensors; beta uses the Q values of the training forward pass, so there is
no extra forward per sample.

Configurations (beta0 = 1, C0 = 0.5):   alpha   gamma_u   kappa
    Baseline                              -        -        -      (plain mean, C not used)
    SelectivePressure                    0.1      0.2      0.01
    ValueFocus                           0.3      0.1      0.01
    UncertaintyFocus                     0.1      0.4      0.02
    UncertaintyFocusK01                  0.1      0.4      0.01    (ablation: UF with VF's kappa)
Why the ablation: C(T) - C0 = kappa * sum of relative improvements, and those sums depend on the
returns, not on alpha or gamma_u, so kappa = 0.02 vs 0.01 alone could produce the reported 0.517
vs 0.508; the ablation (UncertaintyFocus with kappa 0.01) tests that directly. The factor
beta0 * exp(-gamma_u U) * C(t) is NOT a harmless constant, even with U = 1: Adam's update is
invariant to a constant gradient scale only without the clip, and the gradient-norm clip at 1.0
acts before Adam on a large share of the steps (logged per episode and per configuration as
clip_fraction), so a smaller loss scale means fewer clipped steps and larger effective updates;
C(t) also drifts over training. The kappa conclusion rests on the ablation, not on invariance.
Intervals: mean [Student-t 95% CI] over seeds; differences to the Baseline with Welch's t CI
(Welch-Satterthwaite df); coverage checked by simulation in the tests at n = 5 and 10.
Finished members stay in the batch until every member is done (masked: zero gradient, no Adam
step, no table updates); only order_parameter.py compacts the batch.

Run:      python control_parameter.py                           # 5 configs x 5 seeds, fixed U
          python control_parameter.py --uncertainty constant    # the original's U = 1
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: episode), summary.json,
          final_theta.pt (every member's final parameters), control_parameter_analysis.png,
          crystallization_evolution.png
Runtime:  the default comparison (25 runs) takes under a minute of CPU time on one thread (README).
Result:   (docs/control_parameter.md; benchmark/control_parameter_clip.sh, 10 seeds) C(T) = 0.516
          for Uncertainty Focus against 0.508 for Value Focus reproduces with U = 1 and with the
          fixed U; the kappa ablation lands at 0.508, so the gap is kappa alone. No configuration
          beats the Baseline on return (Welch CIs span 0); on episodes to the first success one
          of eight CIs just excludes 0 (UF, U = 1) and does not replicate with the fixed U.
          The clip scales 81% of the Baseline's gradient steps and 22-35% of the weighted ones'.
"""

import functools
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import tyro


NUM_SEEDS = 5                         # default --num-seeds (named here: the field sits in a copied block)


@dataclass
class Args:
    # ---- infrastructure ----
# >>> copied: dqn-args-infra
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of the experiment; the run folder is runs/{exp_name}__{seed}__{unix time}"""
    seed: int = 1
    """seed of python, numpy and torch; one seed draws every member of the run"""
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
    torch_threads: int = 1
    """torch CPU threads; one is fastest for these tiny networks"""
# <<< copied: dqn-args-infra

    # ---- comparison ----
# >>> copied: dqn-args-run
    env: str = "corridor"
    """corridor (the original 1-D task) or a gymnasium id with discrete actions, e.g. CartPole-v1"""
    num_seeds: int = NUM_SEEDS
    """independent runs (seeds) per configuration"""
    episodes: int = 300
    """training episodes per run"""
    max_steps: int = 50
    """episode time limit in env steps"""
# <<< copied: dqn-args-run
    env_size: int = 30
    """corridor length N (ignored by gymnasium envs)"""
    hidden_dim: int = 32
    """hidden width H of both hidden layers"""
    configs: tuple[str, ...] = ("Baseline", "SelectivePressure", "ValueFocus", "UncertaintyFocus",
                                "UncertaintyFocusK01")
    """configurations to compare (see CONFIGS)"""
    uncertainty: str = "variance"
    """U(s): variance (EMA of var_a Q(s,.), the intended rule) or constant (U = 1, the original's bug)"""
    beta0: float = 1.0
    """base pressure beta0"""
    c0: float = 0.5
    """initial crystallization C0"""
    c_min: float = 0.1
    """lower clip of C"""
    c_max: float = 2.0
    """upper clip of C"""
    u_ema: float = 0.8
    """U <- u_ema * U + (1 - u_ema) * var_a Q"""
    c_window: int = 10
    """C uses the mean return of the last c_window episodes, from episode c_window on"""
    table_size: int = 4096
    """gymnasium envs: slots of the hashed per-state tables V, U"""
    success_return: float = 195.0
    """gymnasium envs: an episode with at least this return counts as a success"""

    # ---- DQN (the original's phase-2 settings) ----
    learning_rate: float = 1e-3
    """Adam learning rate"""
    batch_size: int = 64
    """minibatch size of each gradient step"""
    grad_steps: int = 1
    """gradient steps per env step"""
    max_grad_norm: float = 1.0
    """per-network gradient-norm clip"""
# >>> copied: dqn-args-dqn
    discount: float = 0.99
    """discount factor of the TD target"""
    buffer_size: int = 10_000
    """replay capacity per run (FIFO)"""
    prefill: int = 1000
    """transitions collected before training (corridor: random with p 0.5, else right)"""
    target_every: int = 10
    """copy the online net to the target after each episode e with e % target_every == 0"""
    eps_start: float = 1.0
    """initial epsilon of epsilon-greedy"""
    eps_end: float = 0.01
    """floor of epsilon"""
    eps_decay: float = 0.99
    """multiplicative epsilon decay per episode"""
    bootstrap_truncation: bool = False
    """bootstrap the TD target at the time limit (False: a time-out is terminal, as the original)"""
# <<< copied: dqn-args-dqn

    # ---- derived at runtime ----
    num_members: tyro.conf.Suppress[int] = 0
    """runs trained in lockstep: len(configs) * num_seeds"""


# name: (weighted, alpha, gamma_u, kappa); Baseline keeps C's bookkeeping (kappa 0.01, the
# original's default controller) but never uses it.
CONFIGS = {
    "Baseline": (False, 0.0, 0.0, 0.01),
    "SelectivePressure": (True, 0.1, 0.2, 0.01),
    "ValueFocus": (True, 0.3, 0.1, 0.01),
    "UncertaintyFocus": (True, 0.1, 0.4, 0.02),
    "UncertaintyFocusK01": (True, 0.1, 0.4, 0.01),
}
UNCERTAINTY = ("variance", "constant")


def finalize_args(args: Args) -> Args:
    """Check the arguments and fill the derived fields; a ValueError carries a one-line reason."""
    if not args.configs:
        raise ValueError("--configs needs at least one configuration")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown --configs {unknown}; choose from {', '.join(CONFIGS)}")
    if len(set(args.configs)) != len(args.configs):
        raise ValueError(f"--configs lists a configuration twice: {list(args.configs)}")
    if args.uncertainty not in UNCERTAINTY:
        raise ValueError(f"unknown --uncertainty {args.uncertainty!r}; choose one of {', '.join(UNCERTAINTY)}")
    obs_dim, n_actions = check_dqn_args(args)
    for name in ("hidden_dim", "c_window", "table_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("max_grad_norm", "beta0"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    if not 0 <= args.u_ema < 1:
        raise ValueError(f"--u-ema must lie in [0, 1), got {args.u_ema}")
    if not (0 < args.c_min <= args.c0 <= args.c_max and math.isfinite(args.c_max)):
        raise ValueError(f"need 0 < --c-min <= --c0 <= --c-max (finite), got {args.c_min}, {args.c0}, {args.c_max}")
    if not math.isfinite(args.success_return):
        raise ValueError(f"--success-return must be a finite number, got {args.success_return}")
    # windows and periods must fit in the run
    if args.c_window >= args.episodes:
        raise ValueError(f"--c-window {args.c_window} does not fit in --episodes {args.episodes}: C is first "
                         f"updated at episode c_window, so the window must be shorter than the run")
    if args.target_every > args.episodes:
        raise ValueError(f"--target-every {args.target_every} is longer than the run (--episodes {args.episodes})")
    if args.env == "corridor":
        if args.env_size < 2:
            raise ValueError(f"--env-size must be >= 2 (start != goal), got {args.env_size}")
        if args.max_steps < args.env_size - 1:
            raise ValueError(f"--max-steps {args.max_steps} cannot reach the goal of a corridor of --env-size "
                             f"{args.env_size} (needs at least {args.env_size - 1} steps)")
    n_keys = args.env_size if args.env == "corridor" else args.table_size
    args.num_members = len(args.configs) * args.num_seeds
    check_memory(estimate_bytes(args, obs_dim, n_actions, n_keys),
                 f"{args.num_members} members (replay {args.buffer_size}, width {args.hidden_dim}, "
                 f"{args.episodes} episodes)", pick_device(args.cuda))
    return args


def estimate_bytes(args: Args, obs_dim: int, n_actions: int, n_keys: int) -> int:
    """The large allocations, all [M, ...] on one device: replay buffers, per-episode histories, the
    V/U tables, theta with its target, Adam moments and gradient, and one gradient step's activations."""
    f, long = torch.finfo(torch.get_default_dtype()).bits // 8, 8
    H, A, B = args.hidden_dim, n_actions, args.batch_size
    P = obs_dim * H + H + H * H + H + H * A + A
    rows = n_keys if args.env == "corridor" else B                # forward rows per member and step
    per_member = (args.buffer_size * (2 * obs_dim * f + 2 * f + 3 * long)          # replay
                  + args.episodes * (3 * f + 1) + n_keys * (3 * f + 1)            # histories, V/U tables
                  + 8 * P * f                                                     # theta, target, Adam, grad
                  + 2 * rows * (4 * H + 2 * A) * f + B * 8 * long)                # activations, minibatch
    return args.num_members * per_member


# ==================================================================================================
# Environments: M independent copies stepped in lockstep. step() returns the true next
# observation, the reward, terminated, truncated, and the observation to act on next (the first
# observation of a new episode where one ended).
# ==================================================================================================
# >>> copied: dqn-envs
class Corridor:
    """M 1-D corridors of lengths sizes[m]; positions are integer tensors on the device."""

    n_actions = 2
    obs_dim = 1

    def __init__(self, sizes: torch.Tensor, max_steps: int):
        self.sizes, self.max_steps = sizes, max_steps                  # [M] long
        self.pos = torch.zeros_like(sizes)                             # [M] long, cell index
        self.steps = torch.zeros_like(sizes)                           # [M] long, steps this episode

    def observe(self) -> torch.Tensor:
        return (self.pos.to(torch.get_default_dtype()) / self.sizes).unsqueeze(-1)   # [M, 1] = p/N

    def reset(self) -> torch.Tensor:
        self.pos.zero_(), self.steps.zero_()
        return self.observe()

    def keys(self) -> torch.Tensor:
        """Exact discrete state id per member: the cell the member is in now.  [M] long"""
        return self.pos

    def all_states(self) -> torch.Tensor:
        """Every cell's observation p/N, [M, max N, 1] (rows p >= N are padding, never indexed).
        A minibatch touches at most N distinct states, so Q can be evaluated once per cell."""
        cells = torch.arange(int(self.sizes.max()), device=self.sizes.device, dtype=torch.get_default_dtype())
        return (cells[None, :] / self.sizes[:, None]).unsqueeze(-1)

    def step(self, action: torch.Tensor):
        # left at p = 0 stays put; right never meets the wall because reaching N-1 ends the episode
        self.pos = torch.clamp(self.pos + 2 * action - 1, min=0)
        self.steps = self.steps + 1
        at_goal = self.pos == self.sizes - 1
        reward = torch.where(at_goal, 10.0, -1.0).to(torch.get_default_dtype())
        truncated = ~at_goal & (self.steps >= self.max_steps)            # goal is checked first
        next_obs, self.next_keys = self.observe(), self.pos             # the true next state and its cell
        ended = at_goal | truncated
        self.pos = torch.where(ended, 0, self.pos)
        self.steps = torch.where(ended, 0, self.steps)
        return next_obs, reward, at_goal, truncated, self.observe()


class GymBatch:
    """M copies of a gymnasium env (SAME_STEP autoreset) behind the Corridor interface."""

    def __init__(self, env_id: str, num: int, max_steps: int, seed: int, device: torch.device, table_size: int = 0):
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(env_id, max_episode_steps=max_steps) for _ in range(num)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.n_actions = int(self.envs.single_action_space.n)
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.seed, self.device, self.obs, self.table_size = seed, device, None, table_size
        self.next_keys = torch.zeros(num, dtype=torch.long, device=device)   # no state table: never read

    def _t(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.get_default_dtype(), device=self.device)

    def reset(self) -> torch.Tensor:
        obs, _ = self.envs.reset(seed=self.seed)
        self.obs = self._t(obs).reshape(len(obs), -1)
        return self.obs

    def keys(self) -> torch.Tensor:
        """Hash of the current observation rounded to 2 decimals (the original's key) into table_size
        slots; zeros when table_size is 0 (no per-state table)."""
        if self.table_size == 0:
            return torch.zeros_like(self.next_keys)
        q = torch.round(self.obs * 100).long()
        primes = torch.tensor([1, 1_000_003, 998_244_353, 1_000_000_007, 19_260_817, 2_654_435_761][: q.shape[1]]
                              + [7919] * max(0, q.shape[1] - 6), device=q.device)
        return (q * primes).sum(-1) % self.table_size

    def step(self, action: torch.Tensor):
        obs, reward, term, trunc, info = self.envs.step(action.cpu().numpy())   # host sync: the env is on the CPU
        next_obs = np.array(obs, dtype=np.float64).reshape(len(obs), -1)
        ended = term | trunc
        if ended.any():
            next_obs[ended] = np.stack(info["final_obs"][ended]).reshape(int(ended.sum()), -1)
        self.obs = self._t(obs).reshape(len(obs), -1)
        dev = self.device
        return (self._t(next_obs), self._t(reward), torch.as_tensor(term, device=dev),
                torch.as_tensor(trunc & ~term, device=dev), self.obs)


def check_gym_env(env_id: str) -> None:
    """One-line ValueError unless env_id is a gymnasium env with discrete actions and a Box observation."""
    try:
        env = gym.make(env_id)
    except Exception as e:  # gymnasium raises several error types for unknown ids
        raise ValueError(f"unknown --env {env_id!r}: use corridor or a gymnasium id ({type(e).__name__})") from None
    ok = isinstance(env.action_space, gym.spaces.Discrete) and isinstance(env.observation_space, gym.spaces.Box)
    env.close()
    if not ok:
        raise ValueError(f"--env {env_id} needs discrete actions and a Box observation")
# <<< copied: dqn-envs


# >>> copied: dqn-checks
def check_dqn_args(args) -> tuple[int, int]:
    """The checks both DQN scripts share: seed, positive sizes, learning rate, the [0, 1] ranges, the
    pre-fill relation and the env id. Returns the env's (obs_dim, n_actions)."""
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must lie in [0, 2**32), got {args.seed}")
    for name in ("num_seeds", "episodes", "max_steps", "batch_size", "buffer_size", "prefill", "grad_steps",
                 "target_every", "torch_threads"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    for name in ("discount", "eps_start", "eps_end"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}")
    if not 0.0 < args.eps_decay <= 1.0:
        raise ValueError(f"--eps-decay is a per-episode factor and must lie in (0, 1], got {args.eps_decay}")
    if args.eps_end > args.eps_start:
        raise ValueError(f"--eps-end {args.eps_end} exceeds --eps-start {args.eps_start}")
    if args.prefill <= args.batch_size or args.prefill > args.buffer_size:
        raise ValueError(f"need --batch-size < --prefill <= --buffer-size, got {args.batch_size}, {args.prefill}, "
                         f"{args.buffer_size}")
    if args.env == "corridor":
        return Corridor.obs_dim, Corridor.n_actions
    check_gym_env(args.env)
    env = gym.make(args.env)
    dims = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    env.close()
    return dims
# <<< copied: dqn-checks


# ==================================================================================================
# Batched DQN: the Q-networks of all M members in one flat parameter tensor theta [M, P].
# ==================================================================================================
# >>> copied: dqn-batched
def mlp_layout(obs_dim: int, hidden: int, n_actions: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and per-member shapes of the flat parameter vector: x @ W + b, three layers."""
    return [("W1", (obs_dim, hidden)), ("b1", (hidden,)), ("W2", (hidden, hidden)), ("b2", (hidden,)),
            ("W3", (hidden, n_actions)), ("b3", (n_actions,))]


def unflatten(theta: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    """Views of theta [M, P] as {name: [M, *shape]}; differentiable, no copies."""
    out, i = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = theta[:, i:i + n].view(theta.shape[0], *shape)
        i += n
    return out


def init_theta(hidden: torch.Tensor, obs_dim: int, max_hidden: int, n_actions: int,
               gen: torch.Generator) -> torch.Tensor:
    """PyTorch's nn.Linear init per member (weights and biases U(+-1/sqrt(fan_in))), with the
    units beyond each member's own width hidden[m] set to zero.  hidden: [M] long.  -> [M, P]"""
    M, device = hidden.shape[0], hidden.device
    layout = mlp_layout(obs_dim, max_hidden, n_actions)
    P = sum(math.prod(s) for _, s in layout)
    theta = torch.rand(M, P, generator=gen, device=device) * 2 - 1
    p = unflatten(theta, layout)
    unit = torch.arange(max_hidden, device=device)
    live = (unit[None, :] < hidden[:, None]).to(theta.dtype)                    # [M, Hmax]
    fan1 = torch.full((M,), float(obs_dim), device=device)
    fanh = hidden.to(theta.dtype)
    for name, fan, mask in (("W1", fan1, live[:, None, :]), ("b1", fan1, live),
                            ("W2", fanh, live[:, :, None] * live[:, None, :]), ("b2", fanh, live),
                            ("W3", fanh, live[:, :, None]), ("b3", fanh, None)):
        scale = fan.rsqrt().view(M, *([1] * (p[name].dim() - 1)))
        p[name].mul_(scale * (1 if mask is None else mask))
    return theta


def q_values(theta: torch.Tensor, layout, x: torch.Tensor) -> torch.Tensor:
    """Q of every member on its own inputs.  theta [M, P], x [M, B, obs_dim] -> [M, B, n_actions]"""
    return mlp_forward(unflatten(theta, layout), x)[0]


def mlp_forward(p: dict, x: torch.Tensor):
    """q = relu(relu(x W1 + b1) W2 + b2) W3 + b3 per member; also returns what the backward needs."""
    h1 = torch.relu(torch.baddbmm(p["b1"].unsqueeze(1), x, p["W1"]))                # [M, B, H]
    h2 = torch.relu(torch.baddbmm(p["b2"].unsqueeze(1), h1, p["W2"]))               # [M, B, H]
    return torch.baddbmm(p["b3"].unsqueeze(1), h2, p["W3"]), (x, h1, h2)            # [M, B, A]


def mlp_backward(p: dict, cache, g_q: torch.Tensor) -> torch.Tensor:
    """Hand-written backward of mlp_forward: dLoss/dq [M, B, A] -> dLoss/dtheta [M, P] in the flat
    layout.  ReLU' is taken as 1[h > 0], which is torch's convention (ReLU'(0) = 0), so zero-padded
    units get exactly zero gradient.  Checked against autograd in tests."""
    x, h1, h2 = cache
    # threshold_backward(g, h, 0) = g * 1[h > 0], ReLU's own backward: one op instead of a compare and a multiply
    g2 = torch.ops.aten.threshold_backward(torch.bmm(g_q, p["W3"].transpose(1, 2)), h2, 0)  # dL/dz2 [M, B, H]
    g1 = torch.ops.aten.threshold_backward(torch.bmm(g2, p["W2"].transpose(1, 2)), h1, 0)   # dL/dz1 [M, B, H]
    parts = (torch.bmm(x.transpose(1, 2), g1), g1.sum(1), torch.bmm(h1.transpose(1, 2), g2), g2.sum(1),
             torch.bmm(h2.transpose(1, 2), g_q), g_q.sum(1))
    return torch.cat([t.flatten(1) for t in parts], 1)


class BatchedAdam:
    """torch.optim.Adam's update, per member, on theta [M, P]; inactive members do not move.
    plan(active, steps) computes, once for `steps` successive steps with the same active members,
    every coefficient that does not depend on the gradient (each step's bias corrections);
    step_planned(theta, grad, j) is then step j of them.  step() is plan(active, 1) + step_planned(0)."""

    def __init__(self, theta: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m, self.v = torch.zeros_like(theta), torch.zeros_like(theta)
        self.t = torch.zeros(theta.shape[0], 1, dtype=theta.dtype, device=theta.device)
        self.coef = None

    @torch.no_grad()
    def plan(self, active: torch.Tensor, steps: int) -> None:
        a = active.to(self.t.dtype).unsqueeze(1)                                   # [M, 1]
        j = torch.arange(1, steps + 1, dtype=a.dtype, device=a.device).view(-1, 1, 1)
        t = (self.t + j * a).clamp(min=1)              # [steps, M, 1] step counts (integers: exact in float)
        self.t += steps * a
        # pow step by step on [M, 1]: its vectorised and scalar kernels round differently, and which
        # one an element gets depends on its place in the tensor, so [steps, M, 1] at once would not
        # give torch.optim.Adam's (and step()'s) numbers
        lr = a * self.lr
        self.coef = ((1 - self.b1) * a, 1 - (1 - self.b2) * a,                     # m and v weights
                     [1 - self.b2 ** t[i] for i in range(steps)],                  # bias correction of v
                     [lr / (1 - self.b1 ** t[i]) for i in range(steps)])           # step size

    @torch.no_grad()
    def step_planned(self, theta: torch.Tensor, grad: torch.Tensor, j: int) -> None:
        w_m, w_v, bc2, size = self.coef
        self.m.lerp_(grad, w_m)                                                    # m <- b1 m + (1-b1) g
        self.v.mul_(w_v).addcmul_(grad, grad, value=1 - self.b2)                   # inactive: grad is 0
        # sqrt(v_hat) + eps, with sqrt taken of 1 where v is 0 (the zero-padded units: most of theta)
        # and the 1 taken off again: the same numbers, and torch's CPU sqrt is several times slower on 0
        v_hat = self.v / bc2[j]
        zero = (v_hat == 0).to(v_hat.dtype)
        theta.addcdiv_(self.m * size[j], v_hat.add_(zero).sqrt_().sub_(zero).add_(self.eps), value=-1)

    def step(self, theta: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        self.plan(active, 1)
        self.step_planned(theta, grad, 0)


class ReplayBuffers:
    """One FIFO replay buffer per member, [M, capacity, ...]; every member adds one row per tick.
    key/next_key are discrete state ids (corridor cells), or 0 where the env has none."""

    FIELDS = ("obs", "action", "reward", "next_obs", "done", "key", "next_key")

    def __init__(self, M: int, capacity: int, obs_dim: int, device: torch.device):
        f, long = torch.get_default_dtype(), torch.long
        self.obs = torch.zeros(M, capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(M, capacity, obs_dim, device=device)
        self.action, self.key, self.next_key = (torch.zeros(M, capacity, dtype=long, device=device) for _ in range(3))
        self.reward = torch.zeros(M, capacity, dtype=f, device=device)
        self.done = torch.zeros(M, capacity, dtype=f, device=device)
        self.capacity, self.ptr, self.size = capacity, 0, 0

    def add(self, obs, action, reward, next_obs, done, key=0, next_key=0) -> None:
        i = self.ptr
        self.obs[:, i], self.action[:, i], self.reward[:, i] = obs, action, reward
        self.next_obs[:, i], self.done[:, i] = next_obs, done.to(self.done.dtype)
        self.key[:, i], self.next_key[:, i] = key, next_key
        self.ptr, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, batch: int, gen: torch.Generator, with_obs: bool = True, steps: int = 1) -> dict:
        """Uniform, with replacement, independently per member: {field: [M, steps * batch, ...]}.
        steps > 1 draws `steps` minibatches at once, the same numbers as `steps` successive calls
        (minibatch j is columns j*batch:(j+1)*batch); with_obs=False skips the observations (a state
        table is used instead)."""
        M, cap, device = self.obs.shape[0], self.obs.shape[1], self.obs.device
        idx = torch.randint(0, self.size, (steps, M, batch), generator=gen, device=device)
        # rows of the [M * capacity, ...] view: index_select copies the same values as a gather along
        # dim 1, several times faster on the CPU
        rows = (idx.transpose(0, 1) + torch.arange(0, M * cap, cap, device=device).view(M, 1, 1)).reshape(-1)
        out = {}
        for name in self.FIELDS:
            if not with_obs and name in ("obs", "next_obs"):
                continue
            x = getattr(self, name)
            out[name] = x.view(M * cap, *x.shape[2:]).index_select(0, rows).view(M, steps * batch, *x.shape[2:])
        return out


def epsilon_greedy(q: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """q [M, A], eps [M] -> actions [M]: uniform with probability eps, else argmax (first on ties)."""
    explore = torch.rand(q.shape[0], generator=gen, device=q.device) < eps
    random_a = torch.randint(0, q.shape[1], (q.shape[0],), generator=gen, device=q.device)
    return torch.where(explore, random_a, q.argmax(-1))


def target_values(target: torch.Tensor, layout, x: torch.Tensor) -> torch.Tensor:
    """max_a Q_target(x, a) of every member on its own inputs, no gradient.  x [M, S, d] -> [M, S]"""
    with torch.no_grad():
        return q_values(target, layout, x).amax(-1)


def td_prepare(batch: dict, discount: float, v_next_table: torch.Tensor, n_actions: int, active: torch.Tensor,
               steps: int = 1) -> list:
    """The part of td_loss_and_grad's table path that does not depend on theta, for `steps`
    minibatches side by side (ReplayBuffers.sample(steps=...), fields [M, steps * B]): one batch
    dict per minibatch, each with y = r + discount * v_next_table[next_key] * (1 - done),
    flat = key * A + action [M, B] and g_scale = (2 / B) * active [M, 1] (for the unweighted loss:
    err * g_scale rounds as (2 / B) * err * active does). flat is made contiguous: scatter_add_
    sums in the order its index is laid out, so a strided index would change the gradient's rounding."""
    M, B = batch["action"].shape[0], batch["action"].shape[1] // steps
    y = batch["reward"] + discount * v_next_table.gather(1, batch["next_key"]) * (1 - batch["done"])
    flat = (batch["key"] * n_actions + batch["action"]).view(M, steps, B).transpose(0, 1).contiguous()
    both, g_scale = {**batch, "y": y}, (2.0 / B) * active.unsqueeze(1).to(y.dtype)
    return [{**{k: v[:, j * B:(j + 1) * B] for k, v in both.items()}, "flat": flat[j], "g_scale": g_scale}
            for j in range(steps)]


def td_loss_and_grad(theta, target, layout, batch: dict, discount: float, active: torch.Tensor,
                     weight_fn=None, table: Optional[torch.Tensor] = None,
                     v_next_table: Optional[torch.Tensor] = None, params: Optional[dict] = None):
    """Per-member (weighted) mean squared TD error and its gradient w.r.t. theta.

    batch: ReplayBuffers.sample(); weight_fn(q_rows [M,B,A]) -> per-sample weights w [M,B], or None
    (plain mean). The weights are detached: they scale each sample's squared error, nothing more.
        L_m = mean_b w_b (Q(s_b, a_b) - y_b)^2,   y = r + discount * max_a' Q_target(s', a') * (1 - done)
    Returns grad [M,P] (zero for inactive members); weight_fn sees q_rows = Q(s_b, .) before the step.
    table [M,S,d]: every distinct state (corridor cells). Q is then evaluated once per state and
    gathered by key: the same loss and gradient, with S instead of B rows per member.
    v_next_table [M,S]: target_values(target, layout, table), passed in by a caller that keeps it
    between target copies (it depends on the target only); computed here when None.  With a table,
    batch may already hold y and flat (td_prepare).  params: unflatten(theta, layout), passed in by
    a caller that keeps the views (theta is updated in place).
    """
    M, B = batch["action"].shape
    A = layout[-1][1][0]
    if table is None:                                   # every sample is its own row
        x, x_next = batch["obs"], batch["next_obs"]
        key = next_key = torch.arange(B, device=theta.device).expand(M, B)
    else:
        x = x_next = table
        key, next_key = batch["key"], batch["next_key"]
    with torch.no_grad():
        if "y" in batch:
            y, flat = batch["y"], batch["flat"]
        else:
            v_next = target_values(target, layout, x_next) if v_next_table is None else v_next_table  # [M, S]
            y = batch["reward"] + discount * v_next.gather(1, next_key) * (1 - batch["done"])
            flat = key * A + batch["action"]                                            # [M, B] into S*A
        p = unflatten(theta, layout) if params is None else params
        q_tab, cache = mlp_forward(p, x)                                                # [M, S, A]
        err = q_tab.flatten(1).gather(1, flat) - y
        if weight_fn is None and "g_scale" in batch:
            g_sa = err * batch["g_scale"]                                               # dL_m/dQ(s_b, a_b)
        else:
            coef = 2.0 / B if weight_fn is None else (2.0 / B) * weight_fn(
                q_tab.gather(1, key.unsqueeze(-1).expand(-1, -1, A)))                   # of Q(s_b, .) [M, B, A]
            g_sa = coef * err * active.unsqueeze(1).to(err.dtype)                      # dL_m/dQ(s_b, a_b)
        g_q = q_tab.new_zeros(M, q_tab.shape[1] * A).scatter_add_(1, flat, g_sa).view_as(q_tab)
        return mlp_backward(p, cache, g_q)
# <<< copied: dqn-batched


# >>> copied: dqn-loop
def act(theta: torch.Tensor, layout, obs: torch.Tensor, eps: torch.Tensor, gen: torch.Generator,
        params: Optional[dict] = None):
    """Q of every member at its current observation, [M, A] (no gradient), and its epsilon-greedy
    action [M]; params: unflatten(theta, layout) where the caller keeps it."""
    with torch.no_grad():
        p = unflatten(theta, layout) if params is None else params
        q = mlp_forward(p, obs.unsqueeze(1))[0].squeeze(1)
    return q, epsilon_greedy(q, eps, gen)


def step_and_store(env, buf: ReplayBuffers, obs, action, key, bootstrap_truncation: bool):
    """One env step of every member and its transition into the member's buffer (key: the state id
    of obs; a time-out is terminal unless bootstrap_truncation, as the original).
    Returns (reward, term, trunc, the observation to act on next)."""
    next_obs, reward, term, trunc, after = env.step(action)
    buf.add(obs, action, reward, next_obs, term if bootstrap_truncation else term | trunc, key, env.next_keys)
    return reward, term, trunc, after


def prefill_replay(env, buf: ReplayBuffers, n: int, bootstrap_truncation: bool, gen: torch.Generator) -> None:
    """n transitions into every member's buffer (corridor: random with p 0.5, else right, as the
    original; gymnasium: uniform)."""
    M, device = buf.obs.shape[0], buf.obs.device
    obs = env.reset()
    for _ in range(n):
        if isinstance(env, Corridor):
            coin = torch.rand(M, generator=gen, device=device) < 0.5
            action = torch.where(coin, torch.randint(0, 2, (M,), generator=gen, device=device), 1)
        else:
            action = torch.randint(0, env.n_actions, (M,), generator=gen, device=device)
        _, _, _, obs = step_and_store(env, buf, obs, action, env.keys(), bootstrap_truncation)


def progress_line(tick: int, done_lo: int, done_hi: int, episodes: int, member_steps: int, seconds: float) -> str:
    """The progress line both scripts print every few seconds."""
    return (f"tick {tick}  episodes done {done_lo}-{done_hi}/{episodes}  {tick / seconds:.0f} ticks/s  "
            f"{member_steps / seconds:.0f} member-steps/s")
# <<< copied: dqn-loop


def clip_per_member(grad: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.utils.clip_grad_norm_ applied to each member's gradient separately.  grad [M, P] ->
    (clipped grad, clipped [M] bool: the member's norm was above max_norm, so its gradient was scaled)."""
    norm = grad.norm(dim=1, keepdim=True)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return grad * scale, scale.squeeze(1) < 1.0


# ==================================================================================================
# Selective pressure: per-state tables [M, S] and the crystallization factor [M]
# ==================================================================================================
class PressureTables:
    """V(s) (running mean of max_a Q), U(s) (EMA of var_a Q) and whether U was ever set, per member."""

    def __init__(self, M: int, S: int, device: torch.device):
        f = torch.get_default_dtype()
        self.v_sum = torch.zeros(M, S, dtype=f, device=device)
        self.v_cnt = torch.zeros(M, S, dtype=f, device=device)
        self.u = torch.ones(M, S, dtype=f, device=device)          # unseen states read U = 1
        self.u_seen = torch.zeros(M, S, dtype=torch.bool, device=device)

    def value(self, key: torch.Tensor) -> torch.Tensor:
        """V at keys [M, B] (0 where never visited)."""
        s, c = self.v_sum.gather(1, key), self.v_cnt.gather(1, key)
        return torch.where(c > 0, s / c.clamp(min=1), 0.0)

    def update_value(self, key: torch.Tensor, max_q: torch.Tensor, active: torch.Tensor) -> None:
        """One env step: V(s_t) <- running mean including max_a Q(s_t, a).  key, max_q, active: [M]."""
        a = active.to(max_q.dtype)
        self.v_sum.scatter_add_(1, key.unsqueeze(1), (max_q * a).unsqueeze(1))
        self.v_cnt.scatter_add_(1, key.unsqueeze(1), a.unsqueeze(1))


def uncertainty_read_and_update(tables: PressureTables, key: torch.Tensor, u_new: torch.Tensor,
                                ema: float, active: torch.Tensor) -> torch.Tensor:
    """The original's per-sample loop, vectorised: sample i reads U(s_i), then sets
    U(s_i) <- u_new_i if s_i was never seen, else ema*U(s_i) + (1-ema)*u_new_i, in sample order.

    key [M, B], u_new [M, B] (equal for equal keys: one network, one state). Returns U as read [M, B].
    For the j-th occurrence (j = 0, 1, ...) of a state in the minibatch, with U0 and u its values:
        seen before:   U_j = ema^j U0 + (1 - ema^j) u          after the batch: j = count
        unseen:        U_0 = 1 (the default), U_j = u for j >= 1 after the first update
    """
    M, B = key.shape
    # rank of each sample among the earlier samples of the same state: sort stably by key, then
    # count positions since the start of each run of equal keys; [M, B], no [M, B, S] one-hot
    sorted_key, perm = key.sort(dim=1, stable=True)
    pos = torch.arange(B, device=key.device).expand(M, B)
    starts = torch.ones_like(sorted_key, dtype=torch.bool)
    starts[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    run_start = torch.where(starts, pos, torch.zeros_like(pos)).cummax(1).values
    rank = torch.empty_like(pos).scatter_(1, perm, pos - run_start).to(u_new.dtype)
    count = torch.zeros_like(tables.u).scatter_add_(1, key, torch.ones_like(u_new))  # [M, S]
    u0, seen = tables.u.gather(1, key), tables.u_seen.gather(1, key)
    decay = ema ** rank
    read = torch.where(seen, decay * u0 + (1 - decay) * u_new, torch.where(rank > 0, u_new, torch.ones_like(u0)))
    # end-of-batch state per touched slot: u of that state (any sample of it) and its count
    u_state = torch.zeros_like(tables.u).scatter_(1, key, u_new)                    # [M, S]
    touched = (count > 0) & active.unsqueeze(1)
    decay_all = ema ** count
    after = torch.where(tables.u_seen, decay_all * tables.u + (1 - decay_all) * u_state, u_state)
    tables.u = torch.where(touched, after, tables.u)
    tables.u_seen |= touched
    return read


def selective_pressure(beta0: float, alpha: torch.Tensor, gamma_u: torch.Tensor, c: torch.Tensor,
                       v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """beta = beta0 * exp(alpha V - gamma_u U) * C.  alpha, gamma_u, c: [M]; v, u: [M, B] -> [M, B]"""
    return beta0 * torch.exp(alpha.unsqueeze(1) * v - gamma_u.unsqueeze(1) * u) * c.unsqueeze(1)


def crystallization_update(c: torch.Tensor, prev_mean: torch.Tensor, has_prev: torch.Tensor, mean: torch.Tensor,
                           kappa: torch.Tensor, c_min: float, c_max: float):
    """C <- clip(C + kappa * (m - m_prev) / |m_prev + 1e-8|, c_min, c_max); improvement 0 the first time.
    All [M]. Returns the new C."""
    improvement = torch.where(has_prev, (mean - prev_mean) / (prev_mean + 1e-8).abs(), torch.zeros_like(mean))
    return (c + kappa * improvement).clamp(c_min, c_max)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for aa in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                   -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def t_cdf(t: float, df: float) -> float:
    """Student-t CDF, from the regularized incomplete beta I_x(df/2, 1/2) with x = df / (df + t^2)."""
    x, a, b = df / (df + t * t), df / 2.0, 0.5
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    ibeta = front * _betacf(a, b, x) / a if x < (a + 1) / (a + b + 2) else 1.0 - front * _betacf(b, a, 1 - x) / b
    return 1.0 - 0.5 * ibeta if t > 0 else 0.5 * ibeta


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with df (> 0, not necessarily integer) degrees of freedom, p in (0.5, 1);
    bisection on t_cdf to double precision."""
    lo, hi = 0.0, 1e4
    for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t CI, mean -+ t_{(1+level)/2, n-1} s / sqrt(n) (NaN bounds for n < 2)."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return float(x.mean()), float("nan"), float("nan")
    h = t_quantile((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - h), float(x.mean() + h)


def diff_ci(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """mean(x) - mean(y) with Welch's t CI (unequal variances, Welch-Satterthwaite df); NaN bounds
    when either group has fewer than 2 runs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    d = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return d, float("nan"), float("nan")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return d, d, d
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    h = t_quantile((1 + level) / 2, df) * se
    return d, d - h, d + h


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


# ==================================================================================================
# Plots
# ==================================================================================================
# >>> copied: plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path: str, dpi: int = 110) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
# <<< copied: plots


def moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing k-episode mean along the last axis (shorter windows at the start)."""
    c = np.cumsum(np.concatenate([np.zeros(x.shape[:-1] + (1,)), x], -1), -1)
    n = np.arange(1, x.shape[-1] + 1)
    lo = np.maximum(n - k, 0)
    return (c[..., n] - c[..., lo]) / (n - lo)


def plot_analysis(names, returns, beta_mean, member_cfg, path) -> None:
    """Top: 10-episode moving-average return per configuration (mean over seeds, band = min..max).
    Bottom: mean selective pressure beta per episode (the original plotted every per-sample beta)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for c, name in enumerate(names):
        ma = moving_average(returns[member_cfg == c], 10)
        line, = a1.plot(ma.mean(0), lw=1.5, label=name)
        a1.fill_between(np.arange(ma.shape[1]), ma.min(0), ma.max(0), color=line.get_color(), alpha=0.12)
        if name != "Baseline":
            with warnings.catch_warnings():                 # episodes a stopped run never reached are all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean_beta = np.nanmean(beta_mean[member_cfg == c], 0)
            a2.plot(mean_beta, lw=1, color=line.get_color(), label=name)
    a1.set(ylabel="return (10-episode MA)", title="performance under selective pressure (mean over seeds)")
    a1.legend(fontsize=8)
    a2.set(xlabel="episode", ylabel="mean beta(s,t) of the episode's samples", title="selective pressure")
    save_fig(fig, path)


def plot_crystallization(names, c_hist, member_cfg, path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for c, name in enumerate(names):
        if name == "Baseline":
            continue
        h = c_hist[member_cfg == c]
        line, = ax.plot(h.mean(0), lw=1.5, label=name)
        ax.fill_between(np.arange(h.shape[1]), h.min(0), h.max(0), color=line.get_color(), alpha=0.15)
    ax.set(xlabel="episode", ylabel="crystallization C(t)",
           title="crystallization evolution (mean, min..max over seeds)")
    ax.legend(fontsize=8)
    save_fig(fig, path)


# ==================================================================================================
# Training: every (configuration, seed) member in lockstep, one tick = one env step of every member
# ==================================================================================================
@dataclass
class Members:
    """Member m trains configuration names[cfg[m]] with seed index m % num_seeds."""

    names: list[str]
    cfg: np.ndarray                  # [M] configuration index
    labels: list[str]                # "{configuration}_s{seed index}"
    weighted: torch.Tensor           # [M] bool: beta weights the loss (False: Baseline)
    alpha: torch.Tensor              # [M]
    gamma_u: torch.Tensor            # [M]
    kappa: torch.Tensor              # [M]


def make_members(args: Args, device: torch.device) -> Members:
    names = list(args.configs)
    member_cfg = np.repeat(np.arange(len(names)), args.num_seeds)
    labels = [f"{names[c]}_s{i % args.num_seeds}" for i, c in enumerate(member_cfg)]
    coef = torch.tensor([CONFIGS[names[c]] for c in member_cfg], device=device, dtype=torch.get_default_dtype())
    return Members(names, member_cfg, labels, coef[:, 0] > 0, coef[:, 1], coef[:, 2], coef[:, 3])


def make_env(args: Args, M: int, device: torch.device):
    if args.env == "corridor":
        return Corridor(torch.full((M,), args.env_size, device=device), args.max_steps)
    return GymBatch(args.env, M, args.max_steps, args.seed, device, table_size=args.table_size)


class PressureWeights:
    """The weight_fn of td_loss_and_grad for one minibatch: beta per sample from the same forward
    pass as the loss (Q before this step). Calling it reads and updates U(s) of the minibatch's
    states and leaves the betas in .beta (the Baseline logs its beta but is weighted by 1)."""

    def __init__(self, args: Args, members: Members, tables: PressureTables, key: torch.Tensor,
                 crystal: torch.Tensor, active: torch.Tensor):
        self.args, self.members, self.tables, self.key = args, members, tables, key
        self.crystal, self.active = crystal, active
        self.v = tables.value(key)                                          # V(s_i) [M, B]
        self.beta = None

    def __call__(self, q_rows: torch.Tensor) -> torch.Tensor:
        a, m = self.args, self.members
        u_new = q_rows.var(-1) if a.uncertainty == "variance" else torch.ones_like(self.v)
        u = uncertainty_read_and_update(self.tables, self.key, u_new, a.u_ema, self.active)
        self.beta = selective_pressure(a.beta0, m.alpha, m.gamma_u, self.crystal, self.v, u)
        return torch.where(m.weighted.unsqueeze(1), self.beta, 1.0)


class EpisodeBook:
    """Per-member episode bookkeeping: epsilon, C(t) and the running mean it compares against, the
    current episode's return, success and beta sums, and the histories [M, E] (NaN until an episode ends)."""

    def __init__(self, args: Args, M: int, device: torch.device):
        E = args.episodes
        self.eps = torch.full((M,), args.eps_start, device=device)
        self.crystal = torch.full((M,), args.c0, device=device)
        self.prev_mean, self.has_prev = torch.zeros(M, device=device), torch.zeros(M, dtype=torch.bool, device=device)
        self.ep_count = torch.zeros(M, dtype=torch.long, device=device)
        self.ep_ret, self.ep_success = torch.zeros(M, device=device), torch.zeros(M, dtype=torch.bool, device=device)
        self.b_sum, self.b_cnt = torch.zeros(M, device=device), torch.zeros(M, device=device)
        self.clip_sum = torch.zeros(M, device=device)                           # clipped steps this episode
        self.clip_total, self.step_total = torch.zeros(M, device=device), torch.zeros(M, device=device)
        self.recent = torch.zeros(M, args.c_window, device=device)              # ring of the last returns
        self.returns = torch.full((M, E), float("nan"), device=device)
        self.c_hist, self.beta_hist, self.clip_hist = self.returns.clone(), self.returns.clone(), self.returns.clone()
        self.success = torch.zeros(M, E, dtype=torch.bool, device=device)
        self.ids = torch.arange(M, device=device)

    def add_beta(self, beta: torch.Tensor, active: torch.Tensor) -> None:
        """One minibatch's betas into the episode's mean beta (inactive members add nothing)."""
        self.b_sum.add_(beta.mean(1) * active)
        self.b_cnt.add_(active)

    def add_clip(self, clipped: torch.Tensor, active: torch.Tensor) -> None:
        """One gradient step: whether the norm clip scaled each active member's gradient."""
        c = (clipped & active).to(self.clip_sum.dtype)
        self.clip_sum.add_(c)
        self.clip_total.add_(c)
        self.step_total.add_(active)

    def end_step(self, reward, term, trunc, fin, kappa: torch.Tensor, args: Args, corridor: bool) -> None:
        """After one env step: accumulate, and for the members whose episode ended (fin) record it,
        decay epsilon and update C (the original's order: eps decay, then C)."""
        E, W = args.episodes, args.c_window
        ended = term | trunc
        self.ep_ret += reward
        self.ep_success |= (term if corridor else torch.zeros_like(term))
        e = self.ep_count.clamp(max=E - 1)
        slot = self.ids * E + e
        for hist, value in ((self.returns, self.ep_ret), (self.beta_hist, self.b_sum / self.b_cnt.clamp(min=1)),
                            (self.clip_hist, self.clip_sum / self.b_cnt.clamp(min=1))):
            flat = hist.view(-1)
            flat[slot] = torch.where(fin, value, flat[slot])
        if not corridor:
            self.ep_success = self.ep_ret >= args.success_return
        self.success.view(-1)[slot] = torch.where(fin, self.ep_success, self.success.view(-1)[slot])
        self.eps = torch.where(fin, (self.eps * args.eps_decay).clamp(min=args.eps_end), self.eps)
        # C: from episode c_window on, the mean of the last c_window returns (episodes e-9..e)
        ring = self.recent.view(-1)
        ring[self.ids * W + e % W] = torch.where(fin, self.ep_ret, ring[self.ids * W + e % W])
        upd = fin & (self.ep_count >= W)
        new_c = crystallization_update(self.crystal, self.prev_mean, self.has_prev, self.recent.mean(1), kappa,
                                          args.c_min, args.c_max)
        self.crystal = torch.where(upd, new_c, self.crystal)
        self.prev_mean = torch.where(upd, self.recent.mean(1), self.prev_mean)
        self.has_prev |= upd
        flat = self.c_hist.view(-1)
        flat[slot] = torch.where(fin, self.crystal, flat[slot])
        self.ep_count += fin.long()
        for acc in (self.ep_ret, self.b_sum, self.b_cnt, self.clip_sum):
            acc.masked_fill_(ended, 0.0)
        self.ep_success &= ~ended


def log_episodes(log: RunLog, members: Members, book: EpisodeBook, start: int, stop: int) -> int:
    """metrics.jsonl rows for episodes start..stop-1, which every member has finished; returns stop."""
    r, c, b, k_ = (x[:, start:stop].cpu().numpy() for x in (book.returns, book.c_hist, book.beta_hist, book.clip_hist))
    for k, e in enumerate(range(start, stop)):
        row = {}
        for ci, name in enumerate(members.names):
            sel = members.cfg == ci
            row[f"return_mean/{name}"] = float(r[sel, k].mean())
            row[f"crystallization_mean/{name}"] = float(c[sel, k].mean())
        for m, nm in enumerate(members.labels):
            row[f"return/{nm}"], row[f"crystallization/{nm}"] = float(r[m, k]), float(c[m, k])
            row[f"beta_mean/{nm}"], row[f"clip_fraction/{nm}"] = float(b[m, k]), float(k_[m, k])
        log.log(e, row)
    return stop


def train(args: Args, log: RunLog) -> dict:
    """Train every member in lockstep, log each episode every member has finished, then analyse and
    plot into log.run_dir; returns the summary ("status" "ok" or the non-finite tick)."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    # ---- members, envs, networks, replay, pressure tables ----
    members = make_members(args, device)
    M, E = args.num_members, args.episodes
    env = make_env(args, M, device)
    corridor = isinstance(env, Corridor)
    layout = mlp_layout(env.obs_dim, args.hidden_dim, env.n_actions)
    theta = init_theta(torch.full((M,), args.hidden_dim, device=device), env.obs_dim, args.hidden_dim,
                       env.n_actions, gen)
    target = theta.clone()
    adam = BatchedAdam(theta, args.learning_rate)
    buf = ReplayBuffers(M, args.buffer_size, env.obs_dim, device)
    tables = PressureTables(M, args.env_size if corridor else args.table_size, device)
    table = env.all_states() if corridor else None            # corridor: Q once per cell, gathered by key
    prefill_replay(env, buf, args.prefill, args.bootstrap_truncation, gen)

    # ---- training ----
    obs = env.reset()
    book = EpisodeBook(args, M, device)
    status, tick, logged = "ok", 0, 0
    start = last_print = time.time()
    while True:
        active = book.ep_count < E
        q, action = act(theta, layout, obs, book.eps, gen)                          # q: [M, A], before training
        key = env.keys()
        tables.update_value(key, q.amax(-1), active)                  # V(s_t): running mean of max_a Q(s_t, a)
        reward, term, trunc, obs = step_and_store(env, buf, obs, action, key, args.bootstrap_truncation)
        if buf.size > args.batch_size:
            for _ in range(args.grad_steps):
                batch = buf.sample(args.batch_size, gen, with_obs=table is None)
                pressure = PressureWeights(args, members, tables, batch["key"], book.crystal, active)
                grad = td_loss_and_grad(theta, target, layout, batch, args.discount, active,
                                              weight_fn=pressure, table=table)
                book.add_beta(pressure.beta, active)
                grad, clipped = clip_per_member(grad, args.max_grad_norm)
                book.add_clip(clipped, active)
                adam.step(theta, grad, active)

        # ---- episode bookkeeping (the original's order: target copy, eps decay, then C) ----
        fin = (term | trunc) & active
        target = torch.where((fin & (book.ep_count % args.target_every == 0)).unsqueeze(1), theta, target)
        book.end_step(reward, term, trunc, fin, members.kappa, args, corridor)
        tick += 1

        if tick % 500 == 0 or tick % args.max_steps == 0:
            any_active = bool((book.ep_count < E).any())
            if tick % 500 == 0 or not any_active:
                logged = log_episodes(log, members, book, logged, int(book.ep_count.min()))   # before any stop
                if not torch.isfinite(theta).all():
                    status = f"non-finite Q-network parameters at tick {tick} ({logged} episodes logged)"
                    break
                now = time.time()
                if now - last_print > 5 or not any_active:
                    print(progress_line(tick, int(book.ep_count.min()), int(book.ep_count.max()), E, M * tick,
                                        now - start), flush=True)
                    last_print = now
            if not any_active:
                break
    wall = time.time() - start
    torch.save({"names": members.labels, "theta": theta.cpu()}, os.path.join(log.run_dir, "final_theta.pt"))

    # ---- analysis, table, plots ----
    returns_np, c_np, beta_np, success_np = (x.cpu().numpy() for x in (book.returns, book.c_hist, book.beta_hist,
                                                                       book.success))
    clip_fraction = (book.clip_total / book.step_total.clamp(min=1)).cpu().numpy()
    per_config = analyze(args, members, returns_np, c_np, success_np, clip_fraction)
    summary = {"status": status, "env": args.env, "uncertainty": args.uncertainty, "num_runs": M, "episodes": E,
               "configs": per_config, "wall_time_s": wall, "ticks": tick, "member_steps_per_s": M * tick / wall}
    if corridor:
        summary["optimal_return"] = 12 - args.env_size
    print_table(args, per_config)
    if status == "ok" or logged > 0:
        plot_analysis(members.names, returns_np, beta_np, members.cfg,
                      os.path.join(log.run_dir, "control_parameter_analysis.png"))
        plot_crystallization(members.names, c_np, members.cfg,
                             os.path.join(log.run_dir, "crystallization_evolution.png"))
    print(f"wrote {log.run_dir}  ({wall:.1f} s, {M * tick / wall:.0f} member-steps/s)")
    return summary


# ==================================================================================================
# Analysis: C(T), final return, episodes to first success, per configuration
# ==================================================================================================
def analyze(args: Args, members: Members, returns: np.ndarray, c_hist: np.ndarray, success: np.ndarray,
            clip_fraction: np.ndarray) -> dict:
    """Per configuration: mean [Student-t 95% CI] over seeds of C(T), of the final 10-episode MA
    return, of the episodes to the first success and of the fraction of gradient steps whose norm was
    clipped; the differences to the Baseline of final return and of episodes to first success [Welch
    95% CI]; the raw runs.  clip_fraction [M]: clipped steps / gradient steps of each run."""
    names, member_cfg = members.names, members.cfg
    final_ret = moving_average(returns, 10)[:, -1]                    # 10-episode MA at the last episode
    c_final = c_hist[:, -1]
    first_success = np.array([np.argmax(s) if s.any() else np.nan for s in success])
    base = names.index("Baseline") if "Baseline" in names else None
    fs_base = first_success[member_cfg == base] if base is not None else None
    per_config = {}
    for ci, name in enumerate(names):
        sel = member_cfg == ci
        fs = first_success[sel]
        per_config[name] = {
            "alpha_gamma_u_kappa": CONFIGS[name][1:], "weighted": CONFIGS[name][0],
            "C_final": mean_ci(c_final[sel]) if CONFIGS[name][0] else None,
            "C_final_runs": c_final[sel].tolist(),
            "final_return_ma10": mean_ci(final_ret[sel]),
            "final_return_runs": final_ret[sel].tolist(),
            "episodes_to_first_success": mean_ci(fs[np.isfinite(fs)]) if np.isfinite(fs).any() else None,
            "runs_with_success": int(np.isfinite(fs).sum()),
            "clip_fraction": mean_ci(clip_fraction[sel]),
            "clip_fraction_runs": clip_fraction[sel].tolist(),
            "return_minus_baseline": (diff_ci(final_ret[sel], final_ret[member_cfg == base])
                                      if base is not None and ci != base else None),
            "first_success_minus_baseline": (diff_ci(fs[np.isfinite(fs)], fs_base[np.isfinite(fs_base)])
                                             if base is not None and ci != base and np.isfinite(fs).any()
                                             and np.isfinite(fs_base).any() else None),
        }
    return per_config


def format_ci(t, digits: int) -> str:
    return "      -" if t is None else f"{t[0]:7.{digits}f} [{t[1]:.{digits}f}, {t[2]:.{digits}f}]"


def print_table(args: Args, per_config: dict) -> None:
    print(f"\n===== selective pressure, U = {args.uncertainty}, {args.num_seeds} seeds, mean [95% CI] =====")
    print("(Student-t CIs of the mean over seeds; differences to the Baseline: Welch t)")
    print(f"{'config':22s} {'C(T)':>26s} {'final return (MA10)':>24s} {'vs Baseline':>24s} {'eps to 1st success':>24s} "
          f"{'vs Baseline':>24s} {'clip fraction':>24s}")
    for name, r in per_config.items():
        print(f"{name:22s} {format_ci(r['C_final'], 3):>26s} {format_ci(r['final_return_ma10'], 1):>24s} "
              f"{format_ci(r['return_minus_baseline'], 1):>24s} {format_ci(r['episodes_to_first_success'], 1):>24s} "
              f"{format_ci(r['first_success_minus_baseline'], 1):>24s} {format_ci(r['clip_fraction'], 3):>24s}")


if __name__ == "__main__":
    args = parse_args("control_parameter.py", Args, finalize_args)
    sys.exit(run_experiment("control_parameter.py", args, train, x_axis="episode"))
