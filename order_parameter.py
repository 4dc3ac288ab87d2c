"""order_parameter.py: does an "order parameter" track learning across an architecture sweep?

Question (seed 000, zb523/metalearning, phase 1): the seed reports that gradient magnitude
correlates with final performance at r = -0.95 across a sweep of corridor sizes N and network
widths H, and reads it as an order parameter of learning. We rerun that sweep faithfully, with
several seeds, confidence intervals, and the analysis that separates "tracks learning" from
"tracks N".

Task: the 1-D corridor of the original. Cells p in {0..N-1}, start p=0, goal p=N-1; actions
0 = left (p-1 if p>0), 1 = right; reward -1 per step and +10 on the step that reaches the goal,
which ends the episode; otherwise the episode ends after --max-steps (50) steps, stored as a
terminal transition like the original (--bootstrap-truncation True bootstraps it instead).
Observation s = p/N (divided by N, so the goal sits at (N-1)/N). Optimal return = 12 - N; never
reaching the goal = -50. `--env CartPole-v1` (any gymnasium id with discrete actions and a flat
Box observation) runs the same analysis on a standard task.

Agent: the original DQN. Q: Linear(d,H)-ReLU-Linear(H,H)-ReLU-Linear(H,2), Adam lr 0.01, MSE TD
loss with y = r + 0.99 max_a Q_target(s',a) (1-done), uniform replay of 10,000, 1000 pre-fill
transitions (action random with p 0.5, else "right"), 4 minibatches of 128 per env step, target
copy after every episode e with e % 10 == 0, eps = max(0.01, 0.99^e).

Order parameters, on G = 1000 probe states (corridor: s = linspace(0, 1, G); gymnasium: the
first G pre-fill observations), online net, every --order-every episodes:
    value_range        = max_{s,a} Q(s,a) - min_{s,a} Q(s,a)
    action_certainty   = mean_s [ top-1 Q(s,.) - top-2 Q(s,.) ]            (= |Q0 - Q1| here)
    entropy            = mean_s H(softmax_a Q(s,.))                          (nats)
    gradient_magnitude = || d/ds sum_{s,a} Q(s,a) ||_2 over the G probe states  (INPUT gradient;
                         this is what the original computed)
and, logged every gradient step and averaged per episode, the quantity the seed's text talks
about: td_grad_norm = || grad_theta L_TD ||_2, the weight gradient of the minibatch TD loss.

Analysis, final episode (the seed's design): final_reward = mean return of the last 10
episodes; each order parameter's value at the last checkpoint (td_grad_norm: mean over the last 10
episodes). Pearson r across all runs, r across the seed-averaged configurations (the original's
n = 9 design; not reported with fewer than 3 configurations, where it can only be +-1), r within
each N, the partial r given N (both variables centred within each N) and the within-(N, H) r over
seeds (both centred within each configuration). Why: the optimum falls linearly in N while dQ/ds
grows like N (Q changes ~1 per cell, a cell is 1/N wide in s), so an across-N r can be strongly
negative with no link to learning inside a task.
Analysis, every checkpoint c (the design where learning still varies within (N, H)): by the last
episode every run sits at the optimum, so within-N reward differences are exploration noise. At
each checkpoint the same within-(N, H) and given-N correlations are computed between the order
parameter at c and three progress measures at c: the trailing 10-episode training return, and
the greedy policy's progress (no exploration noise; policy_progress):
    policy_correct = fraction of cells p < N-1 whose greedy action is right (optimal: 1)
    greedy_return  = return of the greedy policy from p = 0 within --max-steps
Intervals: every r has a Fisher-z 95% CI, tanh(atanh r -+ 1.96 / sqrt(n - k - 3)), with k the
number of group means partialled out (groups - 1); its coverage is checked by simulation in the
tests at n = 9, 27 and 90. Over training, each run's order parameter series is correlated with its
trailing 10-episode return at the checkpoints.

Speed: every (N, H, seed) member of the sweep trains in lockstep as one batched network: the
parameters of all members sit in one flat tensor [M, P] with hidden sizes zero-padded to
max(H). Padded units stay exactly zero (ReLU(0) = 0 and ReLU'(0) = 0 give them zero gradient,
so Adam never moves them). Corridors step as tensors; the forward and a hand-written backward are
batched matmuls; one Adam call updates all members. The corridor has only N states, so Q is
evaluated once per cell and gathered by state id (same loss and gradient, N rows instead of 128).
Members that have finished their episodes are masked out, and on the corridor dropped from the
batch. GPU: the same code runs on CUDA with one host sync per tick (not measured here).

Run:      python order_parameter.py                                   # 3 x 3 grid, 3 seeds
          python order_parameter.py --env CartPole-v1 --env-sizes 0 --hidden-dims 16 64 --max-steps 200
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: episode), summary.json,
          final_theta.pt (every member's final parameters), learning_curves.png, phase_diagram.png,
          transition_analysis.png, order_over_training.png
Runtime:  the default sweep (27 runs, 300 episodes) takes about 2 minutes of CPU time on one
          thread (116 s measured; benchmark/seed000_speed.sh and README).
Result:   (docs/order_parameter.md; benchmark/order_parameter_within.sh, 10 seeds, 90 runs) the
          seed's r = -0.95 reproduces: r(gradient_magnitude, final reward) = -0.97 [-0.98, -0.95].
          It is carried by N: the partial r given N is -0.05 [-0.26, +0.16], and at episodes
          10-70, where 41-61% of the greedy policies are optimal, the within-(N, H) r with the
          greedy policy's progress is -0.19 to +0.13 (Fisher-z CIs about +-0.22, all spanning 0).
"""

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import tyro


NUM_SEEDS = 3                         # default --num-seeds (named here: the field sits in a copied block)


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

    # ---- sweep ----
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
    env_sizes: tuple[int, ...] = (5, 15, 30)
    """corridor lengths N to sweep (ignored by gymnasium envs: pass a single value, e.g. 0)"""
    hidden_dims: tuple[int, ...] = (8, 32, 64)
    """hidden widths H of both hidden layers to sweep"""

    # ---- DQN (the original's settings) ----
    learning_rate: float = 0.01
    """Adam learning rate"""
    batch_size: int = 128
    """minibatch size of each gradient step"""
    grad_steps: int = 4
    """gradient steps per env step"""
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
    exact_state_table: bool = True
    """corridor: evaluate Q once per cell and gather (the same loss and gradient, fewer FLOPs)"""

    # ---- order parameters and analysis ----
    order_every: int = 20
    """compute the order parameters after every episode e with e % order_every == 0"""
    num_probe_states: int = 1000
    """probe states G for the order parameters"""
    final_window: int = 10
    """final_reward = mean return of the last final_window episodes"""

    # ---- derived at runtime ----
    num_members: tyro.conf.Suppress[int] = 0
    """runs trained in lockstep: len(env_sizes) * len(hidden_dims) * num_seeds"""
    max_hidden: tyro.conf.Suppress[int] = 0
    """padded hidden width of the batched network, max(hidden_dims)"""


ORDER_PARAMS = ("value_range", "action_certainty", "entropy", "gradient_magnitude")
ALL_PARAMS = ORDER_PARAMS + ("td_grad_norm",)
PROGRESS = ("policy_correct", "greedy_return")         # corridor only: see policy_progress


def finalize_args(args: Args) -> Args:
    """Check the arguments and fill the derived fields; a ValueError carries a one-line reason."""
    if not args.env_sizes or not args.hidden_dims:
        raise ValueError("--env-sizes and --hidden-dims need at least one value each")
    for name in ("env_sizes", "hidden_dims"):
        values = list(getattr(args, name))
        if len(set(values)) < len(values):      # two members would share a name and a metrics key
            raise ValueError(f"--{name.replace('_', '-')} has a repeated value: {values}")
    obs_dim, n_actions = check_dqn_args(args)
    for name in ("order_every", "num_probe_states", "final_window"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if min(args.hidden_dims) <= 0:
        raise ValueError(f"--hidden-dims must be positive, got {list(args.hidden_dims)}")
    if args.env == "corridor":
        if min(args.env_sizes) < 2:
            raise ValueError(f"corridor sizes must be >= 2 (start != goal), got {list(args.env_sizes)}")
        if max(args.env_sizes) - 1 > args.max_steps:
            raise ValueError(f"corridor size {max(args.env_sizes)} needs {max(args.env_sizes) - 1} steps to reach "
                             f"the goal, more than --max-steps {args.max_steps}")
    elif len(args.env_sizes) != 1:
        raise ValueError(f"--env {args.env} has no size axis; pass a single --env-sizes value (e.g. 0)")
    if args.env != "corridor" and args.num_probe_states > args.prefill:
        raise ValueError(f"--num-probe-states {args.num_probe_states} exceeds --prefill {args.prefill} "
                         "(gymnasium probe states are pre-fill observations)")
    if args.final_window > args.episodes:
        raise ValueError(f"--final-window {args.final_window} exceeds --episodes {args.episodes}")
    if args.order_every >= args.episodes:
        raise ValueError(f"--order-every {args.order_every} leaves one checkpoint (episode 0) in --episodes "
                         f"{args.episodes}; the analysis needs at least two")
    args.num_members = len(args.env_sizes) * len(args.hidden_dims) * args.num_seeds
    args.max_hidden = max(args.hidden_dims)
    check_memory(memory_estimate(args, obs_dim, n_actions),
                 f"a sweep of {args.num_members} members (hidden {args.max_hidden}, replay {args.buffer_size} each)",
                 pick_device(args.cuda))
    return args


def memory_estimate(args: Args, obs_dim: int, n_actions: int) -> float:
    """Bytes of the large allocations, all on one device: the replay buffers (two observations and
    reward, done in the default float dtype; action, key, next_key int64), the parameters (theta,
    target, Adam's m and v, the gradient, about three temporaries), the per-episode stores, and the
    activations of a gradient step and of the order parameters (forward and backward, about six
    [M, rows, H] tensors each)."""
    M, H, f = args.num_members, args.max_hidden, torch.get_default_dtype().itemsize
    P = obs_dim * H + H + H * H + H + H * n_actions + n_actions
    rows = max(args.batch_size, max(args.env_sizes) if args.env == "corridor" else 0)
    replay = M * args.buffer_size * ((2 * obs_dim + 2) * f + 3 * 8)
    params = 10 * M * P * f
    stores = M * args.episodes * 2 * f + M * (args.episodes // args.order_every + 1) * len(ORDER_PARAMS) * f
    step = M * rows * (6 * H + 4 * n_actions + 2 * obs_dim) * f + M * args.batch_size * 7 * 8
    probes = M * args.num_probe_states * (6 * H + 2 * n_actions + 2 * obs_dim) * f
    return float(replay + params + stores + step + probes)


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


def keep_rows(obj, rows: torch.Tensor) -> None:
    """Keep only the given members (first-dim rows) of every per-member tensor attribute of obj."""
    n = None
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            n = value.shape[0] if n is None else n
            if value.shape[0] == n:
                setattr(obj, name, value[rows])


# ==================================================================================================
# Order parameters and statistics
# ==================================================================================================
def order_parameters(theta: torch.Tensor, layout, probes: torch.Tensor) -> torch.Tensor:
    """The original's four order parameters for every member.  probes [M, G, d] -> [M, 4] in the
    order of ORDER_PARAMS.  gradient_magnitude is || d(sum_{s,a} Q) / ds ||_2 over the G probes,
    the INPUT gradient (members are independent, so one backward of the total gives them all)."""
    x = probes.detach().requires_grad_(True)
    q = q_values(theta.detach(), layout, x)                                        # [M, G, A]
    (dx,) = torch.autograd.grad(q.sum(), x)
    q = q.detach()
    value_range = q.amax((1, 2)) - q.amin((1, 2))
    top2 = q.topk(min(2, q.shape[-1]), dim=-1).values
    certainty = (top2[..., 0] - top2[..., -1]).mean(1) if q.shape[-1] > 1 else torch.zeros_like(value_range)
    pi = torch.softmax(q, -1)
    entropy = -(pi * torch.log(pi + 1e-10)).sum(-1).mean(1)
    grad_mag = dx.flatten(1).norm(dim=1)
    return torch.stack([value_range, certainty, entropy, grad_mag], 1)


def policy_progress(theta: torch.Tensor, layout, cells: torch.Tensor, sizes: torch.Tensor,
                    max_steps: int) -> torch.Tensor:
    """Learning progress of each member's greedy policy on its corridor, without exploration noise.
    cells [M, S, 1] (Corridor.all_states), sizes [M] -> [M, 2]:
        policy_correct = fraction of the cells p < N-1 whose greedy action is right (optimal: 1)
        greedy_return  = return of the greedy policy from p = 0 within max_steps (optimal: 12 - N;
                         -max_steps when it never reaches the goal)"""
    with torch.no_grad():
        right = q_values(theta, layout, cells).argmax(-1) == 1                        # [M, S], first on ties
    S = right.shape[1]
    live = torch.arange(S, device=sizes.device)[None, :] < (sizes - 1)[:, None]
    correct = (right & live).sum(1).to(torch.get_default_dtype()) / (sizes - 1)
    pos, ret = torch.zeros_like(sizes), torch.zeros(sizes.shape[0], device=sizes.device)
    done = torch.zeros_like(sizes, dtype=torch.bool)
    for _ in range(max_steps):
        a = right.gather(1, pos.clamp(max=S - 1).unsqueeze(1)).squeeze(1).long()
        pos = torch.where(done, pos, (pos + 2 * a - 1).clamp(min=0))
        goal = ~done & (pos == sizes - 1)
        ret += torch.where(done, 0.0, torch.where(goal, 10.0, -1.0))
        done |= goal
    return torch.stack([correct, ret], 1)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; NaN when either variable is constant (r is undefined there)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    scale = max(1.0, float(np.abs(x).max() * np.abs(y).max()))
    return float((x * y).sum() / den) if den > 1e-12 * scale else float("nan")


def center_within(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """x minus its group mean; Pearson of two such residuals is the partial r controlling for the
    group (the same as regressing both variables on group indicators)."""
    x = np.asarray(x, float).copy()
    for g in np.unique(groups):
        x[groups == g] -= x[groups == g].mean()
    return x


def fisher_ci(r: float, n: int, k: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Fisher-z CI of a Pearson r from n pairs, or of a partial r with k covariates partialled out
    (centring within g groups removes k = g - 1): tanh(atanh r -+ z_{(1+level)/2} / sqrt(n - k - 3)).
    Exact for bivariate-normal data up to the z approximation; tests check its coverage by simulation
    at this script's sample sizes. NaN when r is undefined or n - k <= 3."""
    if not math.isfinite(r) or n - k <= 3:
        return float("nan"), float("nan")
    z, h = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12)), NormalDist().inv_cdf((1 + level) / 2) / math.sqrt(n - k - 3)
    return math.tanh(z - h), math.tanh(z + h)


def partial_r(values: np.ndarray, perf: np.ndarray, groups: np.ndarray) -> dict:
    """r of values and perf after centring both within each group, with its Fisher-z CI (k = groups - 1)."""
    g = len(np.unique(groups))
    r = pearson(center_within(values, groups), center_within(perf, groups))
    return {"r": r, "ci": fisher_ci(r, len(perf), g - 1), "n": len(perf), "groups": g}


def correlation_report(values: np.ndarray, perf: np.ndarray, size: np.ndarray, config: np.ndarray) -> dict:
    """All the correlations of one order parameter (values [R]) with performance (perf [R]), each with
    a Fisher-z 95% CI.

    size [R]: the task group (corridor N); config [R]: configuration id (runs of one config are seeds).
    r_config_means is r over the seed-averaged configurations (the original's design); it is NaN with
    fewer than 3 configurations, where it can only be +-1 or undefined.
    within_config is the within-(N, H) r over seeds: both variables centred within each configuration.
    """
    r = pearson(values, perf)
    cfgs = np.unique(config)
    cm_v = np.array([values[config == c].mean() for c in cfgs])
    cm_p = np.array([perf[config == c].mean() for c in cfgs])
    r_cm = pearson(cm_v, cm_p) if len(cfgs) >= 3 else float("nan")
    within = {}
    for n in np.unique(size):
        sel = size == n
        rn = pearson(values[sel], perf[sel])
        within[int(n)] = {"r": rn, "n": int(sel.sum()), "ci": fisher_ci(rn, int(sel.sum()))}
    given_n = partial_r(values, perf, size)
    in_cfg = partial_r(values, perf, config) if len(cfgs) < len(perf) else \
        {"r": float("nan"), "ci": (float("nan"),) * 2, "n": len(perf), "groups": len(cfgs)}
    return {"r": r, "ci": fisher_ci(r, len(perf)), "n": len(perf),
            "r_config_means": r_cm, "r_config_means_ci": fisher_ci(r_cm, len(cfgs)), "n_configs": len(cfgs),
            "partial_r_given_size": given_n["r"], "partial_ci": given_n["ci"], "within_size": within,
            "within_config": in_cfg}


def over_training_r(series: np.ndarray, returns: np.ndarray, ckpts: np.ndarray, window: int) -> np.ndarray:
    """Per run, Pearson r between an order parameter at the checkpoints (series [R, C]) and the
    trailing `window`-episode mean return at those checkpoints (returns [R, E]).  -> [R]"""
    csum = np.concatenate([np.zeros((returns.shape[0], 1)), np.cumsum(returns, 1)], 1)
    lo = np.maximum(ckpts + 1 - window, 0)
    trailing = (csum[:, ckpts + 1] - csum[:, lo]) / (ckpts + 1 - lo)
    return np.array([pearson(s, t) for s, t in zip(series, trailing)])


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
# Plots (the original's three figures, plus order parameters over training)
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


def plot_learning_curves(returns, sizes, hidden, size_vals, hid_vals, label, path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(size_vals), len(hid_vals), figsize=(4 * len(hid_vals), 3 * len(size_vals)),
                             squeeze=False, sharex=True)
    for i, n in enumerate(size_vals):
        for j, h in enumerate(hid_vals):
            ax = axes[i, j]
            sel = (sizes == n) & (hidden == h)
            for r in returns[sel]:
                ax.plot(r, lw=0.6, alpha=0.5)
            ax.plot(returns[sel].mean(0), color="k", lw=1.5, label=f"mean of {int(sel.sum())}")
            ax.set_title(f"{label}={n}, H={h}", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
            if i == len(size_vals) - 1:
                ax.set_xlabel("episode")
            if j == 0:
                ax.set_ylabel("return")
    save_fig(fig, path)


def plot_phase_diagram(grid_param, grid_perf, best, size_vals, hid_vals, label, path) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, grid, name, cmap in ((a1, grid_param, best, "viridis"), (a2, grid_perf, "final reward", "plasma")):
        im = ax.imshow(grid, cmap=cmap, origin="lower", aspect="auto")
        fig.colorbar(im, ax=ax, label=name)
        ax.set(xticks=range(len(hid_vals)), xticklabels=hid_vals, yticks=range(len(size_vals)), yticklabels=size_vals,
               xlabel="hidden width H", ylabel=label, title=f"{name} (mean over seeds)")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
    if min(grid_perf.shape) >= 2:
        a1.contour(grid_perf, levels=5, colors="white", linewidths=0.8)
    save_fig(fig, path)


def plot_transition(ratio, perf, params: dict, path) -> None:
    """x = N/H sorted; min-max normalised performance and the top-3 |r| order parameters; grey
    dashed lines where |delta normalised performance| exceeds its 90th percentile (the original's)."""
    plt = _plt()
    norm = lambda v: (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
    order = np.argsort(ratio, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 4))
    p = norm(perf[order])
    ax.plot(ratio[order], p, "k-o", lw=2, label="final reward")
    for (name, v), c in zip(params.items(), ("tab:red", "tab:green", "tab:blue")):
        ax.plot(ratio[order], norm(v[order]), "-s", color=c, alpha=0.8, label=name)
    if len(p) > 2:
        jumps = np.abs(np.diff(p))
        for k in np.flatnonzero(jumps > np.quantile(jumps, 0.9)):
            ax.axvline((ratio[order][k] + ratio[order][k + 1]) / 2, color="gray", ls="--", lw=1)
    ax.set(xlabel="complexity ratio N/H", ylabel="min-max normalised", title="transition analysis (config means)")
    ax.legend(fontsize=8)
    save_fig(fig, path)


def plot_over_training(ckpts, series, returns, config_labels, config, path) -> None:
    plt = _plt()
    names = list(series)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.6 * (len(names) + 1), 3.4))
    cfgs = np.unique(config)
    for c in cfgs:
        sel = config == c
        axes[0].plot(returns[sel].mean(0), lw=1, label=config_labels[c])
        for ax, name in zip(axes[1:], names):
            ax.plot(ckpts, series[name][sel].mean(0), lw=1)
    axes[0].set(xlabel="episode", title="return (mean over seeds)")
    for ax, name in zip(axes[1:], names):
        ax.set(xlabel="episode", title=name)
    axes[0].legend(fontsize=6)
    save_fig(fig, path, dpi=100)


# ==================================================================================================
# Stages: the sweep's members, pre-fill, lockstep training, analysis, printed tables, plots
# ==================================================================================================
@dataclass(frozen=True)
class Sweep:
    """Every (N, H, seed) member of the sweep, in that order."""

    sizes: np.ndarray           # [M] corridor length N (gymnasium: the one, ignored, --env-sizes value)
    hidden: np.ndarray          # [M] hidden width H
    config: np.ndarray          # [M] configuration id; the members of one configuration differ in seed only
    names: list                 # [M] "N{n}_H{h}_s{seed}" ("env..." for gymnasium), the metrics keys
    label: str                  # "N" or "env"
    config_labels: list         # per configuration id


def make_sweep(args: Args) -> Sweep:
    grid = [(n, h, s) for n in args.env_sizes for h in args.hidden_dims for s in range(args.num_seeds)]
    label = "N" if args.env == "corridor" else "env"
    return Sweep(sizes=np.array([g[0] for g in grid]), hidden=np.array([g[1] for g in grid]),
                 config=np.array([i // args.num_seeds for i in range(len(grid))]),
                 names=[f"{label}{n}_H{h}_s{s}" for n, h, s in grid], label=label,
                 config_labels=[f"{label}={n}, H={h}" for n in args.env_sizes for h in args.hidden_dims])


def probe_states(env, buf: ReplayBuffers, G: int) -> torch.Tensor:
    """The G probe states of the order parameters, [M, G, d]: corridor s = linspace(0, 1, G);
    gymnasium: each member's first G pre-fill observations."""
    M, device = buf.obs.shape[0], buf.obs.device
    if isinstance(env, Corridor):
        return torch.linspace(0, 1, G, device=device).view(1, G, 1).expand(M, G, 1)
    return buf.obs[:, :G].clone()


def log_episode_rows(log: RunLog, names: list, returns: torch.Tensor, td_norm: torch.Tensor,
                     op_hist: torch.Tensor, first: int, stop: int, order_every: int) -> int:
    """metrics.jsonl rows (x-axis: episode) for episodes first..stop-1, which every member has
    finished; returns stop, the number of episodes logged so far."""
    r_np, td_np = returns[:, first:stop].cpu().numpy(), td_norm[:, first:stop].cpu().numpy()
    op_np = op_hist.cpu().numpy()
    for k, e in enumerate(range(first, stop)):
        row = {"return/mean": float(r_np[:, k].mean())}
        row.update({f"return/{nm}": float(r_np[m, k]) for m, nm in enumerate(names)})
        row.update({f"td_grad_norm/{nm}": float(td_np[m, k]) for m, nm in enumerate(names)})
        if e % order_every == 0:
            for j, op in enumerate(ORDER_PARAMS):
                row.update({f"{op}/{nm}": float(op_np[m, e // order_every, j]) for m, nm in enumerate(names)})
        log.log(e, row)
    return stop


def train_lockstep(args: Args, env, theta: torch.Tensor, layout, buf: ReplayBuffers, probes: torch.Tensor,
                   table: Optional[torch.Tensor], gen: torch.Generator, log: RunLog, names: list) -> dict:
    """DQN for every member in lockstep, one tick = one env step of every member, until every member
    has finished args.episodes episodes. An episode's row is logged on the tick its last member
    finishes it. The parameters are checked every tick (in the tick's one host sync): non-finite ones
    stop the run, with the rows of every episode finished before that tick already written.
    Returns {"status", "returns" [M, E], "td_norm" [M, E], "op_hist" [M, C, 4], "ckpts", "ticks",
    "member_steps", "wall"}."""
    corridor = isinstance(env, Corridor)
    M, E, device = theta.shape[0], args.episodes, theta.device
    target = theta.clone()
    adam = BatchedAdam(theta, args.learning_rate)
    obs = env.reset()                                            # the original resets every episode
    eps = torch.full((M,), args.eps_start, device=device)
    ep_count = torch.zeros(M, dtype=torch.long, device=device)   # finished episodes per member
    ep_ret = torch.zeros(M, device=device)
    g_sum, g_cnt = torch.zeros(M, device=device), torch.zeros(M, device=device)
    returns = torch.full((M, E), float("nan"), device=device)
    td_norm = returns.clone()
    ckpts = np.arange(0, E, args.order_every)
    op_hist = torch.full((M, len(ckpts), len(ORDER_PARAMS)), float("nan"), device=device)
    prog_hist = torch.full((M, len(ckpts), len(PROGRESS)), float("nan"), device=device)
    cells = env.all_states() if corridor else None            # every cell, for policy_progress
    final_theta = torch.full_like(theta, float("nan"))        # each member's parameters when it leaves the batch
    ids = torch.arange(M, device=device)                      # row -> member id (rows shrink, ids do not)
    status, tick, logged, member_steps, n_active, done_by_all = "ok", 0, 0, 0, M, 0
    # corridor: max_a Q_target(cell, a) [M, S], recomputed only on the tick after some target copy
    v_tab, target_moved = None, True
    start = last_print = time.time()

    while True:
        active = ep_count < E
        p = unflatten(theta, layout)                                  # views: Adam updates theta in place
        _, action = act(theta, layout, obs, eps, gen, params=p)
        reward, term, trunc, obs = step_and_store(env, buf, obs, action, env.keys(), args.bootstrap_truncation)
        if buf.size > args.batch_size:
            # the tick's grad_steps minibatches are drawn at once (the same numbers as one by one), and
            # everything in their TD targets and in Adam's coefficients that does not depend on theta
            # is computed once per tick; the updates themselves stay sequential
            B, S = args.batch_size, args.grad_steps
            act_f = active.to(theta.dtype)
            adam.plan(active, S)
            if table is not None:
                if target_moved:
                    v_tab, target_moved = target_values(target, layout, table), False
                batches = td_prepare(buf.sample(B, gen, with_obs=False, steps=S), args.discount, v_tab, env.n_actions,
                                     active, S)
            else:
                batches = (buf.sample(B, gen) for _ in range(S))      # drawn one by one, in the same order
            for j, batch in enumerate(batches):
                grad = td_loss_and_grad(theta, target, layout, batch, args.discount, active, table=table,
                                        v_next_table=v_tab, params=p)
                g_sum += torch.linalg.vector_norm(grad, dim=1) * act_f  # ||grad_theta L_TD||, per member
                adam.step_planned(theta, grad, j)
            g_cnt += S * act_f

        # ---- episode bookkeeping as tensor ops (the original's order: target copy, eps decay, order params) ----
        ended = term | trunc
        fin = ended & active                                          # members finishing episode ep_count
        ep_ret += reward
        tick += 1
        member_steps += theta.shape[0]
        # the tick's host sync: has an active member finished an episode, and are the parameters finite
        # (min and max propagate NaN)? The rest of the bookkeeping, and a second sync, run only on ticks
        # where some member finished: on the others nothing in it changes (a member that is already done
        # keeps accumulating its unused ep_ret)
        any_fin, finite = torch.stack([fin.any().long(),
                                       torch.stack(torch.aminmax(theta)).isfinite().all().long()]).tolist()
        if not finite:
            status = f"non-finite Q-network parameters at tick {tick}, after {logged} episodes of every member"
            break
        if any_fin:
            slot = ids * E + ep_count.clamp(max=E - 1)
            for store, value in ((returns, ep_ret), (td_norm, g_sum / g_cnt.clamp(min=1))):
                flat = store.view(-1)
                flat[slot] = torch.where(fin, value, flat[slot])
            copy = fin & (ep_count % args.target_every == 0)
            target = torch.where(copy.unsqueeze(1), theta, target)
            eps = torch.where(fin, (eps * args.eps_decay).clamp(min=args.eps_end), eps)
            due = fin & (ep_count % args.order_every == 0)
            ep_count += fin.long()
            for acc in (ep_ret, g_sum, g_cnt):
                acc.masked_fill_(ended, 0.0)
            any_due, n_active, done_by_all, copied = torch.stack(
                [due.any().long(), (ep_count < E).sum(), ep_count.min(), copy.any().long()]).tolist()
            target_moved = target_moved or bool(copied)
            if any_due:
                rows = due.nonzero().squeeze(1)
                ckpt = (ep_count[rows] - 1) // args.order_every
                op_hist[ids[rows], ckpt] = order_parameters(theta[rows], layout, probes[rows])
                if corridor:
                    prog_hist[ids[rows], ckpt] = policy_progress(theta[rows], layout, cells[rows], env.sizes[rows],
                                                                 args.max_steps)
            if done_by_all > logged:
                logged = log_episode_rows(log, names, returns, td_norm, op_hist, logged, done_by_all, args.order_every)
            if corridor and 0 < n_active <= 0.75 * theta.shape[0]:
                # ---- compaction: drop the members that are done, so they cost nothing from here on ----
                rows = (ep_count < E).nonzero().squeeze(1)
                final_theta[ids] = theta
                theta, target, eps, ep_count, ep_ret, g_sum, g_cnt, obs, ids, probes, table, cells, v_tab = (
                    None if x is None else x[rows]
                    for x in (theta, target, eps, ep_count, ep_ret, g_sum, g_cnt, obs, ids, probes, table, cells, v_tab))
                for obj in (env, adam, buf):
                    keep_rows(obj, rows)
        any_active = n_active > 0

        if tick % 500 == 0 or not any_active:
            now = time.time()
            if now - last_print > 5 or not any_active:
                print(progress_line(tick, done_by_all, int(ep_count.max()), E, member_steps, now - start), flush=True)
                last_print = now
        if not any_active:
            break
    final_theta[ids] = theta
    return {"status": status, "returns": returns.cpu().numpy(), "td_norm": td_norm.cpu().numpy(),
            "op_hist": op_hist.cpu().numpy(), "prog_hist": prog_hist.cpu().numpy(), "ckpts": ckpts,
            "final_theta": final_theta.cpu(), "ticks": tick, "member_steps": member_steps,
            "wall": time.time() - start}


def analyse(args: Args, sweep: Sweep, result: dict) -> dict:
    """Final reward and each order parameter's final value per run, their correlation reports and
    over-training r; and, at every checkpoint, the same correlations with the learning progress of
    that moment (the design where progress still varies between the seeds of one (N, H)).
    Returns {"perf" [M], "final" {param: [M]}, "series" {param: [M, C]}, "corr", "best", "by_checkpoint"}."""
    returns_np, td_np, op_np, ckpts = result["returns"], result["td_norm"], result["op_hist"], result["ckpts"]
    W = args.final_window
    perf = returns_np[:, -W:].mean(1)
    final = {op: op_np[:, -1, j] for j, op in enumerate(ORDER_PARAMS)}
    final["td_grad_norm"] = td_np[:, -W:].mean(1)
    series = {op: op_np[:, :, j] for j, op in enumerate(ORDER_PARAMS)}
    series["td_grad_norm"] = td_np[:, ckpts]
    corr = {op: correlation_report(final[op], perf, sweep.sizes, sweep.config) for op in ALL_PARAMS}
    for op in ALL_PARAMS:
        corr[op]["over_training_mean_r"] = float(np.nanmean(over_training_r(series[op], returns_np, ckpts, W)))
    best = max(ORDER_PARAMS, key=lambda op: abs(np.nan_to_num(corr[op]["r"])))
    return {"perf": perf, "final": final, "series": series, "corr": corr, "best": best,
            "by_checkpoint": checkpoint_analysis(args, sweep, result, series)}


def checkpoint_analysis(args: Args, sweep: Sweep, result: dict, series: dict) -> dict:
    """At each checkpoint episode c: the spread of learning progress within (N, H) and, for every
    parameter at c, its within-(N, H) r over seeds with three progress measures at c: the trailing
    final_window-episode training return (the seed's 'reward', at c), and on the corridor the greedy
    policy's policy_correct and greedy_return (policy_progress, no exploration noise); also the
    partial r given N. Every r with its Fisher-z CI."""
    returns_np, ckpts, W = result["returns"], result["ckpts"], args.final_window
    csum = np.concatenate([np.zeros((returns_np.shape[0], 1)), np.cumsum(returns_np, 1)], 1)
    lo = np.maximum(ckpts + 1 - W, 0)
    trailing = (csum[:, ckpts + 1] - csum[:, lo]) / (ckpts + 1 - lo)                      # [M, C]
    measures = {"trailing_return": trailing}
    if args.env == "corridor":
        measures.update({name: result["prog_hist"][:, :, j] for j, name in enumerate(PROGRESS)})
    out = {}
    for k, c in enumerate(ckpts):
        row = {"within_config_sd": {name: float(np.mean([m[sweep.config == g, k].std(ddof=1) if
                                                         (sweep.config == g).sum() > 1 else np.nan
                                                         for g in np.unique(sweep.config)]))
                                    for name, m in measures.items()}}
        if args.env == "corridor":
            row["fraction_greedy_optimal"] = float(np.mean(result["prog_hist"][:, k, 1] == 12 - sweep.sizes))
        for op in ALL_PARAMS:
            row[op] = {}
            for name, m in measures.items():
                wc = partial_r(series[op][:, k], m[:, k], sweep.config)
                gn = partial_r(series[op][:, k], m[:, k], sweep.sizes)
                row[op][name] = {"within_config_r": wc["r"], "within_config_ci": wc["ci"],
                                 "partial_r_given_size": gn["r"], "partial_ci": gn["ci"],
                                 "r": pearson(series[op][:, k], m[:, k])}
        out[int(c)] = row
    return out


def analysis_summary(args: Args, sweep: Sweep, a: dict) -> dict:
    """summary.json entries of the analysis."""
    perf, config, corr, best = a["perf"], sweep.config, a["corr"], a["best"]
    out = {
        "best_order_parameter": best, "best_r": corr[best]["r"], "correlations": corr,
        "by_checkpoint": a["by_checkpoint"],
        "final_reward": {sweep.config_labels[c]: {"mean": float(perf[config == c].mean()),
                                                  "std": float(perf[config == c].std()),
                                                  "runs": perf[config == c].tolist()} for c in np.unique(config)},
    }
    if args.env == "corridor":
        out["optimal_return"] = {int(n): 12 - int(n) for n in args.env_sizes}
        out["fraction_at_optimum"] = float(np.mean(perf >= 12 - sweep.sizes - 0.5))
    return out


def config_grid(values: np.ndarray, sweep: Sweep, size_vals, hid_vals) -> np.ndarray:
    """[len(size_vals), len(hid_vals)] mean over seeds of a per-run quantity."""
    return np.array([[values[(sweep.sizes == n) & (sweep.hidden == h)].mean() for h in hid_vals] for n in size_vals])


def config_means(values: np.ndarray, config: np.ndarray) -> np.ndarray:
    return np.array([values[config == c].mean() for c in np.unique(config)])


def _fmt(x: float) -> str:
    return "  nan" if not np.isfinite(x) else f"{x:+.2f}"


def _ci(c: tuple) -> str:
    return f"[{_fmt(c[0])}, {_fmt(c[1])}]"


def print_tables(args: Args, sweep: Sweep, a: dict) -> None:
    """The correlation table (Fisher-z 95% CIs), the within-(N, H) table over checkpoints, the phase
    diagram of the best parameter and the performance diagram."""
    corr, best, label, M = a["corr"], a["best"], sweep.label, len(sweep.names)
    sv, hv = list(args.env_sizes), list(args.hidden_dims)
    print(f"\n===== order parameters vs final reward ({M} runs, {len(np.unique(sweep.config))} configs; "
          f"Fisher-z 95% CIs) =====")
    print(f"{'parameter':20s} {'r [95% CI]':>22s} {'r(config means)':>16s} {'partial r|' + label + ' [CI]':>24s} "
          f"{'within (' + label + ',H) [CI]':>24s} " + " ".join(f"{'within ' + label + '=' + str(n):>12s}" for n in sv)
          + f" {'over training':>14s}")
    for op in ALL_PARAMS:
        c = corr[op]
        print(f"{op:20s} {_fmt(c['r']):>7s} {_ci(c['ci'])} {_fmt(c['r_config_means']):>16s} "
              f"{_fmt(c['partial_r_given_size']):>7s} {_ci(c['partial_ci'])}   "
              f"{_fmt(c['within_config']['r']):>7s} {_ci(c['within_config']['ci'])}   "
              + " ".join(f"{_fmt(c['within_size'][int(n)]['r']):>12s}" for n in sv)
              + f" {_fmt(c['over_training_mean_r']):>14s}")
    if corr[best]["n_configs"] < 3:
        print("r(config means) is not reported with fewer than 3 configurations (it can only be +-1)")
    print(f"\nbest order parameter (largest |r| across runs): {best}")
    measure = "policy_correct" if args.env == "corridor" else "trailing_return"
    print(f"\n===== within-({label}, H) r over seeds at each checkpoint, vs {measure} and trailing return "
          f"(Fisher-z 95% CI) =====")
    print(f"{'episode':>8s} {'sd within':>10s} {'greedy opt':>10s} " + " ".join(
        f"{op + ' ~ ' + m[:8]:>32s}" for op in ("gradient_magnitude", "td_grad_norm") for m in (measure, "trailing")))
    for c, row in a["by_checkpoint"].items():
        cells = []
        for op in ("gradient_magnitude", "td_grad_norm"):
            for m in (measure, "trailing_return"):
                x = row[op][m]
                cells.append(f"{_fmt(x['within_config_r']):>7s} {_ci(x['within_config_ci'])}")
        print(f"{c:8d} {row['within_config_sd'][measure]:10.3f} {row.get('fraction_greedy_optimal', float('nan')):10.2f} "
              + " ".join(f"{x:>32s}" for x in cells))
    for title, g in ((f"phase diagram: {best}", config_grid(a["final"][best], sweep, sv, hv)),
                     ("performance", config_grid(a["perf"], sweep, sv, hv))):
        print(f"\n{title} (rows {label}, columns H, mean over {args.num_seeds} seeds)")
        print(" " * 8 + "".join(f"{'H=' + str(h):>10s}" for h in hv))
        for n, rowv in zip(sv, g):
            print(f"{label + '=' + str(n):8s}" + "".join(f"{v:10.3f}" for v in rowv))


def write_plots(args: Args, sweep: Sweep, result: dict, a: dict, run_dir: str) -> None:
    """learning_curves.png, phase_diagram.png, transition_analysis.png, order_over_training.png."""
    sv, hv, best, final, perf = list(args.env_sizes), list(args.hidden_dims), a["best"], a["final"], a["perf"]
    plot_learning_curves(result["returns"], sweep.sizes, sweep.hidden, sv, hv, sweep.label,
                         os.path.join(run_dir, "learning_curves.png"))
    plot_phase_diagram(config_grid(final[best], sweep, sv, hv), config_grid(perf, sweep, sv, hv), best, sv, hv,
                       sweep.label, os.path.join(run_dir, "phase_diagram.png"))
    top3 = sorted(ORDER_PARAMS, key=lambda op: -abs(np.nan_to_num(a["corr"][op]["r"])))[:3]
    plot_transition(config_means(sweep.sizes / sweep.hidden, sweep.config), config_means(perf, sweep.config),
                    {op: config_means(final[op], sweep.config) for op in top3},
                    os.path.join(run_dir, "transition_analysis.png"))
    plot_over_training(result["ckpts"], a["series"], result["returns"], sweep.config_labels, sweep.config,
                       os.path.join(run_dir, "order_over_training.png"))


def train(args: Args, log: RunLog) -> dict:
    """The whole sweep: members, pre-fill, lockstep training (rows into log), then, if the run stayed
    finite, the analysis, printed tables and plots in log.run_dir. Returns the summary."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    # ---- members: every (N, H, seed), in that order ----
    sweep = make_sweep(args)
    M = len(sweep.names)
    if args.env == "corridor":
        env = Corridor(torch.tensor(sweep.sizes, device=device), args.max_steps)
    else:
        env = GymBatch(args.env, M, args.max_steps, args.seed, device)
    layout = mlp_layout(env.obs_dim, args.max_hidden, env.n_actions)
    theta = init_theta(torch.tensor(sweep.hidden, device=device), env.obs_dim, args.max_hidden, env.n_actions, gen)
    buf = ReplayBuffers(M, args.buffer_size, env.obs_dim, device)

    prefill_replay(env, buf, args.prefill, args.bootstrap_truncation, gen)
    table = env.all_states() if args.env == "corridor" and args.exact_state_table else None
    probes = probe_states(env, buf, args.num_probe_states)
    result = train_lockstep(args, env, theta, layout, buf, probes, table, gen, log, sweep.names)
    torch.save({"names": sweep.names, "theta": result["final_theta"]}, os.path.join(log.run_dir, "final_theta.pt"))

    wall = result["wall"]
    summary = {"status": result["status"], "env": args.env, "num_runs": M, "episodes": args.episodes,
               "wall_time_s": wall, "ticks": result["ticks"], "member_steps": result["member_steps"],
               "member_steps_per_s": result["member_steps"] / wall}
    if result["status"] == "ok":
        a = analyse(args, sweep, result)
        summary.update(analysis_summary(args, sweep, a))
        print_tables(args, sweep, a)
        write_plots(args, sweep, result, a, log.run_dir)
    print(f"wrote {log.run_dir}  ({wall:.1f} s, {result['member_steps'] / wall:.0f} member-steps/s)")
    return summary


if __name__ == "__main__":
    args = parse_args("order_parameter.py", Args, finalize_args)
    sys.exit(run_experiment("order_parameter.py", args, train, x_axis="episode"))
