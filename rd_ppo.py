"""rd_ppo.py: PPO with a fixed reaction-diffusion (RD) module and "blind" guidance gamma*sign(.).

Question (seed 001, "Guiding Emergence in RL (Part 1): Acceleration via Blind Dynamics?"):
does a fixed, never-trained, RD-inspired dynamical system whose state is pushed along its own
sign (gamma*sign(a), gamma*sign(h)) and blended into the policy logits speed up PPO on
CartPole-v1, and does it help or hurt on stateless CartPole, where its state is the only memory?
The post gives no code and no numbers; every numeric choice below is ours (see the README).

The RD module, per environment, as implemented (explicit Euler, host-side numpy float32):
    state         a, h in R^{K x A}, K = obs_dim (rows: observation components),
                  A = n_actions (columns); 4x2 on CartPole, 2x2 on stateless CartPole.
                  Reset to a = 0, h = 1 at the start of every episode.
    emphasis      w = softmax_k(min(|s_t|, 50))                         (K,)  which rows matter now
    drive         I[k,j] = g * w_k * s_t[k] * P[k,j]                      P: fixed random K x A matrix
                  (seeded by --rd-seed, rows centred over actions so it never shifts all logits alike)
    diffusion     D (mean_k(x) - x): each entry relaxes to the mean of its action column, D_h > D_a
    update        a <- clip(a + dt*(D_a(mean_k a - a) + rho_a a^2/h - mu_a a + gamma sign(a) + I), -c, c)
                  h <- clip(h + dt*(D_h(mean_k h - h) + rho_h a^2   - mu_h h + gamma sign(h)), h_min, c)
                  (h >= h_min > 0 keeps a^2/h finite; since h > 0, gamma sign(h) = +gamma)
    output        rd_out[j] = sum_k w_k a[k,j]                           (A,)  one value per action
    blending      logits = (1 - lambda) * policy_logits(s_t) + lambda * rd_out,  lambda = --rd-weight
With the default rates (rho_a = rho_h = mu_a = 1, mu_h = 2) the homogeneous Gierer-Meinhardt fixed
point is a* = h* = 2 and is stable; the drive I writes observation-dependent, action-asymmetric
structure into a, and gamma*sign(a) amplifies whatever sign is there. The RD output of every
step is stored in the rollout and reused unchanged when PPO recomputes log-probabilities, so the
first minibatch of every update has ratio exactly 1 (logged as debug/first_ratio_max_dev).
lambda = 0 is the plain-PPO baseline and gives exactly the numbers of --rd False.

PPO: CleanRL-style discrete PPO (GAE, clipped surrogate, clipped value loss, advantage
normalisation, LR annealing, gradient clipping, optional target-KL stop) on gymnasium 1.x vector
envs in SAME_STEP autoreset mode: the step that ends an episode returns the first observation of
the next one, with the true last observation in info["final_obs"]. Terminations cut the return;
truncations (500 steps) bootstrap with r_t + discount * V(final_obs). No junk transition exists.

Run:      python rd_ppo.py --gamma 0.1 --env stateless
Sweep:    wandb sweep benchmark/rd_ppo_sweep.yaml      (bool flags take --flag=True/False)
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: global_step), summary.json,
          learning_curve.png, rd_ppo.model (--save-model True)
Runtime:  CartPole reaches a 20-episode mean of 475 after about 50k steps, about 4 s of training
          on one CPU thread (benchmark/rd_ppo_speed.sh); the full 500k steps at the measured
          9-15k SPS is an estimated 33-55 s. See README.
Result:   (5 seeds, README) on CartPole every setting solves the task and gamma does not order
          the learning speed; on stateless CartPole every gamma plateaus at a return of about 46,
          like plain PPO, so the RD state does not act as a usable memory.
"""

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro


@dataclass
class Args:
    # ---- infrastructure ----
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of the experiment; the run folder is runs/{exp_name}__{seed}__{unix time}"""
    seed: int = 1
    """seed of python, numpy, torch and the environments"""
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
    """environment steps of training, summed over the parallel envs"""
    learning_rate: float = 2.5e-3
    """Adam learning rate at the start (annealed linearly to 0 with --anneal-lr True)"""
    num_envs: int = 16
    """parallel environments"""
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
    """global gradient-norm clip"""
    target_kl: Optional[float] = None
    """stop the epochs of an update once approx_kl exceeds this (None: never)"""
    torch_threads: int = 1
    """torch CPU threads; one is fastest for these tiny networks"""
    save_model: bool = False
    """write runs/{run_name}/rd_ppo.model and evaluate it greedily"""
    eval_episodes: int = 10
    """greedy evaluation episodes after training (with --save-model True)"""

    # ---- reaction-diffusion module (fixed, never trained) ----
    rd: bool = True
    """compute the RD module at all; --rd False is plain PPO with no module"""
    rd_weight: float = 0.3
    """lambda in logits = (1-lambda)*policy + lambda*rd_out; 0 is the plain-PPO baseline"""
    gamma: float = 0.1
    """blind guidance strength: +gamma*sign(a) and +gamma*sign(h) in the RD update"""
    rd_dt: float = 0.1
    """Euler step of the RD update"""
    rd_d_a: float = 0.1
    """activator diffusion (coupling to the column mean), D_a"""
    rd_d_h: float = 1.0
    """inhibitor diffusion, D_h (> D_a for Turing-style patterns)"""
    rd_rho_a: float = 1.0
    """activator production rho_a in rho_a*a^2/h"""
    rd_rho_h: float = 1.0
    """inhibitor production rho_h in rho_h*a^2"""
    rd_mu_a: float = 1.0
    """activator decay mu_a"""
    rd_mu_h: float = 2.0
    """inhibitor decay mu_h"""
    rd_input_gain: float = 1.0
    """gain g of the observation drive I = g*w*s*P"""
    rd_clamp: float = 5.0
    """a is clipped to [-c, c] and h to [h_min, c]"""
    rd_h_min: float = 0.1
    """floor of the inhibitor, keeps a^2/h finite"""
    rd_seed: int = 0
    """seed of the fixed drive matrix P (separate from --seed: all seeds share one module)"""

    # ---- derived at runtime ----
    batch_size: tyro.conf.Suppress[int] = 0
    """num_envs * num_steps"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """batch_size // num_minibatches"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """total_timesteps // batch_size"""
    blend_weight: tyro.conf.Suppress[float] = 0.0
    """lambda actually used: rd_weight with the module on, 0 with --rd False"""


ENVS = ("cartpole", "stateless")


def finalize_args(args: Args) -> Args:
    """Check the arguments and fill the derived fields; a ValueError carries a one-line reason."""
    if args.env not in ENVS:
        raise ValueError(f"unknown --env {args.env!r}; choose one of {', '.join(ENVS)}")
    if not 0 <= args.seed < 2**32 or not 0 <= args.rd_seed < 2**32:
        raise ValueError(f"--seed and --rd-seed must lie in [0, 2**32), got {args.seed} and {args.rd_seed}")
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes",
                 "torch_threads"):
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
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        raise ValueError(
            f"--num-minibatches {args.num_minibatches} does not divide num_envs*num_steps = {args.batch_size}"
        )
    if args.total_timesteps < args.batch_size:
        raise ValueError(f"--total-timesteps {args.total_timesteps} is smaller than one batch ({args.batch_size})")
    if not (0 < args.rd_h_min < args.rd_clamp) or not math.isfinite(args.rd_clamp):
        raise ValueError("need 0 < --rd-h-min < --rd-clamp (finite)")
    # rollout buffers: obs, rd_out, Gumbel noise, rewards, dones, values, log-probs, actions, advantages and
    # returns, on the host and again on the device, float32; about x3 for the update's temporaries
    per_step = 4 * (4 + 2 + 2 + 8) * 3
    check_memory(args.batch_size * per_step, f"a rollout of {args.num_envs} envs x {args.num_steps} steps",
                 pick_device(args.cuda))
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    args.blend_weight = args.rd_weight if args.rd else 0.0
    return args


# ==================================================================================================
# Environments
# ==================================================================================================
class StatelessCartPole(gym.ObservationWrapper):
    """CartPole-v1 observing only [cart position x, pole angle theta]; the velocities are removed.

    Same definition as RLlib's StatelessCartPole: bounds +-2*x_threshold and +-2*theta_threshold.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        core = env.unwrapped
        high = np.array([core.x_threshold * 2, core.theta_threshold_radians * 2], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)

    def observation(self, observation):
        return np.array([observation[0], observation[2]], dtype=np.float32)


def make_env(env_name: str) -> gym.Env:
    env = gym.make("CartPole-v1")
    return StatelessCartPole(env) if env_name == "stateless" else env


def make_envs(env_name: str, num_envs: int) -> gym.vector.VectorEnv:
    """SAME_STEP autoreset: a done step returns the next episode's first obs, the last one in info."""
    envs = gym.vector.SyncVectorEnv(
        [lambda: make_env(env_name) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def finished_episodes(info: dict) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) of the episodes that ended on this vector step, in gymnasium 1.x format."""
    if "_episode" not in info:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    mask = info["_episode"]
    return info["episode"]["r"][mask], info["episode"]["l"][mask]


# ==================================================================================================
# Models
# ==================================================================================================
class Agent(nn.Module):
    """CleanRL's CartPole agent: separate 64-64 tanh actor and critic with orthogonal init; the
    critic sees s_t only. The two hidden stacks are stored as one (2, ., 64) tensor per layer and
    run as one batched matmul (slice 0 actor, slice 1 critic): the same function as two MLPs, at
    half the per-step op count, which matters because the rollout calls it once per env step."""

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.stack([self._orthogonal(obs_dim, 64, np.sqrt(2)) for _ in range(2)]))
        self.b1 = nn.Parameter(torch.zeros(2, 1, 64))
        self.w2 = nn.Parameter(torch.stack([self._orthogonal(64, 64, np.sqrt(2)) for _ in range(2)]))
        self.b2 = nn.Parameter(torch.zeros(2, 1, 64))
        self.actor_out = nn.Linear(64, n_actions)
        self.critic_out = nn.Linear(64, 1)
        for layer, std in ((self.actor_out, 0.01), (self.critic_out, 1.0)):
            nn.init.orthogonal_(layer.weight, std)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def _orthogonal(fan_in: int, fan_out: int, std: float) -> torch.Tensor:
        """(fan_in, fan_out) weight, orthogonal as nn.init.orthogonal_ makes an nn.Linear weight."""
        return nn.init.orthogonal_(torch.empty(fan_out, fan_in), std).T.contiguous()

    def hidden(self, obs: torch.Tensor) -> torch.Tensor:
        """(2, B, 64): actor and critic features of obs (B, obs_dim)."""
        x = torch.tanh(torch.baddbmm(self.b1, obs.expand(2, -1, -1), self.w1))
        return torch.tanh(torch.baddbmm(self.b2, x, self.w2))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(obs)[1], self.critic_out.weight, self.critic_out.bias).squeeze(-1)

    def forward(self, obs: torch.Tensor, rd_out: torch.Tensor, rd_weight: float):
        """(blended logits (B, A), value (B,)) for obs (B, obs_dim) and the stored RD outputs (B, A)."""
        x = self.hidden(obs)
        logits = F.linear(x[0], self.actor_out.weight, self.actor_out.bias)
        value = F.linear(x[1], self.critic_out.weight, self.critic_out.bias).squeeze(-1)
        return blend_logits(logits, rd_out, rd_weight), value


# ==================================================================================================
# Algorithm (pure functions; tests import them)
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

    @classmethod
    def from_args(cls, args: Args) -> "RDParams":
        return cls(args.rd_dt, args.rd_d_a, args.rd_d_h, args.rd_rho_a, args.rd_rho_h, args.rd_mu_a,
                   args.rd_mu_h, args.gamma, args.rd_input_gain, args.rd_clamp, args.rd_h_min)


def rd_drive_matrix(obs_dim: int, n_actions: int, rd_seed: int) -> np.ndarray:
    """Fixed (K, A) drive matrix P: standard normal, each row centred over the actions."""
    p = np.random.default_rng(rd_seed).standard_normal((obs_dim, n_actions)).astype(np.float32)
    return p - p.mean(axis=1, keepdims=True)


def rd_constants(p: RDParams, drive: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column coefficient rows for the stacked state s = [a | h] of shape (N, K, 2A)."""
    k, n_act = drive.shape
    both = lambda for_a, for_h: np.concatenate([np.full(n_act, for_a), np.full(n_act, for_h)]).astype(np.float32)
    return {
        "diffusion": both(p.d_a / k, p.d_h / k),             # D * mean_k(x) = (D / K) * sum_k(x)
        "decay": both(p.d_a + p.mu_a, p.d_h + p.mu_h),       # the -D*x of diffusion merged with -mu*x
        "low": both(-p.clamp, p.h_min),
        "high": both(p.clamp, p.clamp),
        "drive": np.concatenate([p.input_gain * drive, np.zeros_like(drive)], axis=1).astype(np.float32),
    }


def rd_step(s: np.ndarray, obs: np.ndarray, c: dict[str, np.ndarray], p: RDParams) -> np.ndarray:
    """One RD update, in place, for a batch of envs; returns rd_out (N, A).

    s: (N, K, 2A) stacked state, a = s[..., :A], h = s[..., A:]; obs: (N, K). The equations are
    the module docstring's. a and h share one array so that each numpy call (about a microsecond
    on arrays this small, which dominates the cost) updates both species at once.
    """
    n_act = s.shape[-1] // 2
    a, h = s[..., :n_act], s[..., n_act:]
    w = np.exp(np.minimum(np.abs(obs), 50.0))                # softmax_k(min(|s_t|, 50)): no overflow
    w /= w.sum(axis=1, keepdims=True)                        # (N, K) emphasis
    a2 = a * a
    ds = (c["diffusion"] * s.sum(axis=1, keepdims=True) - c["decay"] * s + p.gamma * np.sign(s)
          + (w * obs)[:, :, None] * c["drive"])              # diffusion, decay, guidance, drive (a only)
    ds[..., :n_act] += p.rho_a * a2 / h                      # h >= h_min > 0 keeps this finite
    ds[..., n_act:] += p.rho_h * a2
    s += p.dt * ds
    np.maximum(s, c["low"], out=s)
    np.minimum(s, c["high"], out=s)
    return (w[:, :, None] * a).sum(axis=1)


class RDModule:
    """Per-env RD state s = [a | h], (N, K, 2A), kept on the host in numpy float32. It is never
    trained and needs no gradient, and a step is ~25 tiny array ops: ~1 us each in numpy against
    ~4 us for a CPU torch op or a kernel launch on CUDA. rd_out joins the observation on its way
    to the device."""

    def __init__(self, num_envs: int, obs_dim: int, n_actions: int, params: RDParams, rd_seed: int):
        self.p, self.n_actions = params, n_actions
        self.c = rd_constants(params, rd_drive_matrix(obs_dim, n_actions, rd_seed))
        self.s = np.zeros((num_envs, obs_dim, 2 * n_actions), dtype=np.float32)
        self.reset(np.ones(num_envs, dtype=bool))

    @property
    def a(self) -> np.ndarray:
        return self.s[..., : self.n_actions]

    @property
    def h(self) -> np.ndarray:
        return self.s[..., self.n_actions:]

    def reset(self, mask: np.ndarray) -> None:
        """a = 0, h = 1 for the envs in mask (their episode just ended)."""
        self.s[mask, :, : self.n_actions] = 0.0
        self.s[mask, :, self.n_actions:] = 1.0

    def step(self, obs: np.ndarray) -> np.ndarray:
        return rd_step(self.s, obs, self.c, self.p)

    def diagnostics(self) -> tuple[float, float, float]:
        """(mean |a|, mean |h|, fraction of entries of a and h sitting at a clip bound)."""
        at_clip = ((self.s <= self.c["low"]) | (self.s >= self.c["high"])).mean()
        return float(np.abs(self.a).mean()), float(np.abs(self.h).mean()), float(at_clip)


def blend_logits(policy_logits: torch.Tensor, rd_out: torch.Tensor, rd_weight: float) -> torch.Tensor:
    """(1 - lambda) * policy + lambda * rd_out, as one lerp; lambda = 0 returns the policy logits
    themselves, so the baseline is bit-identical to a run without the module."""
    if rd_weight == 0.0:
        return policy_logits
    return torch.lerp(policy_logits, rd_out, rd_weight)


def gumbel_noise(shape: tuple, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise -log(E), E ~ Exp(1); drawn once per rollout, one slice per step."""
    return torch.empty(shape, device=device).exponential_().log_().neg_()


def sample_actions(logits: torch.Tensor, gumbel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max sample of Categorical(logits): argmax(log p + g). Returns (action, log p(action))."""
    logp = torch.log_softmax(logits, dim=-1)
    action = (logp + gumbel).argmax(dim=-1)
    return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
        discount: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a (T, N) rollout.

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
    """Clipped PPO loss on one minibatch. Returns (loss, pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    log_ratio = logp - old_logprobs
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # k3 estimator (Schulman 2020)
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    if norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if clip_vloss:
        v_clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((values - returns) ** 2).mean()
    loss = pg_loss - ent_coef * entropy + vf_coef * v_loss
    return loss, pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio


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
        self.last_x, self.rows = None, 0
        write_json(os.path.join(run_dir, "config.json"), {"args": vars(args), "argv": sys.argv, "x_axis": x_axis})
        self.metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        self.wandb = init_wandb(args, run_name, run_dir, x_axis) if args.track else None

    def log(self, x: int, row: dict) -> None:
        row = to_json_safe({self.x_axis: x, **row})
        self.metrics.write(json.dumps(row, allow_nan=False) + "\n")
        self.last_x, self.rows = x, self.rows + 1
        if self.wandb is not None:
            self.wandb.log(row)

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


def evaluate(agent: Agent, args: Args, device: torch.device, episodes: int, seed: int) -> list[float]:
    """Greedy (argmax of the blended logits) returns of `episodes` episodes, RD module included."""
    env = make_env(args.env)
    obs_dim, n_actions = env.observation_space.shape[0], env.action_space.n
    rd = RDModule(1, obs_dim, n_actions, RDParams.from_args(args), args.rd_seed) if args.rd else None
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        if rd is not None:
            rd.reset(np.ones(1, dtype=bool))
        done, total = False, 0.0
        while not done:
            rd_out = rd.step(obs[None]) if rd is not None else np.zeros((1, n_actions), dtype=np.float32)
            with torch.no_grad():
                logits, _ = agent(torch.as_tensor(obs[None], device=device),
                                  torch.as_tensor(rd_out, device=device), args.blend_weight)
            obs, reward, terminated, truncated, _ = env.step(int(logits.argmax(-1)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


# ==================================================================================================
# Stages
# ==================================================================================================
def anneal(iteration: int, args: Args) -> float:
    """Learning rate of update `iteration` (1-based): linear from learning_rate to 0 with --anneal-lr."""
    if not args.anneal_lr:
        return args.learning_rate
    return args.learning_rate * (1.0 - (iteration - 1.0) / args.num_iterations)


def ppo_update(agent: Agent, optimizer: torch.optim.Optimizer, batch: dict, args: Args, device: torch.device):
    """update_epochs passes of minibatch PPO over one rollout; the epochs stop early once the last
    minibatch's approx_kl exceeds --target-kl. Returns (stats [n_minibatches, 6] tensor of loss,
    policy loss, value loss, entropy, approx_kl, clipfrac; the first minibatch's max |ratio - 1|)."""
    stats, first_ratio_dev = [], None
    for epoch in range(args.update_epochs):
        perm = torch.randperm(args.batch_size, device=device)
        for start in range(0, args.batch_size, args.minibatch_size):
            mb = perm[start:start + args.minibatch_size]
            logits, new_value = agent(batch["obs"][mb], batch["rd"][mb], args.blend_weight)
            loss, pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio = ppo_loss(
                logits, new_value, batch["actions"][mb], batch["logprobs"][mb], batch["values"][mb],
                batch["advantages"][mb], batch["returns"][mb], args.clip_coef, args.clip_vloss, args.ent_coef,
                args.vf_coef, args.norm_adv)
            if first_ratio_dev is None:                        # before any gradient step: must be 0
                first_ratio_dev = (ratio.detach() - 1.0).abs().max()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            stats.append(torch.stack([loss.detach(), pg_loss.detach(), v_loss.detach(), entropy.detach(),
                                      approx_kl, clipfrac]))
        if args.target_kl is not None and approx_kl.item() > args.target_kl:
            break
    return torch.stack(stats), first_ratio_dev


def train(args: Args, log: RunLog) -> dict:
    """PPO on args.env for args.total_timesteps steps; logs every episode and every update to `log`,
    writes the learning curve (and the model with --save-model) into log.run_dir; returns the summary."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)

    # ---- env, agent, RD module ----
    envs = make_envs(args.env, args.num_envs)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(obs_dim, n_actions).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    rd = RDModule(args.num_envs, obs_dim, n_actions, RDParams.from_args(args), args.rd_seed) if args.rd else None

    # ---- rollout storage: env-side arrays on the host; policy outputs are stacked per rollout ----
    T, N = args.num_steps, args.num_envs
    obs_buf = np.zeros((T, N, obs_dim), dtype=np.float32)
    rd_buf = np.zeros((T, N, n_actions), dtype=np.float32)       # rd_out of each step, reused in the update
    rew_buf = np.zeros((T, N), dtype=np.float32)
    done_buf = np.zeros((T, N), dtype=np.float32)
    zero_rd = torch.zeros((N, n_actions), device=device)

    ep_steps, ep_returns, ep_times = [], [], []           # per finished episode
    global_step, status = 0, "ok"
    next_obs, _ = envs.reset(seed=args.seed)
    start_time = time.time()
    print_every = max(1, args.num_iterations // 20)

    for iteration in range(1, args.num_iterations + 1):
        optimizer.param_groups[0]["lr"] = anneal(iteration, args)

        # ---- rollout ----
        actions, logps, values = [], [], []
        gumbel = gumbel_noise((T, N, n_actions), device)
        for step in range(T):
            global_step += N
            obs_buf[step] = next_obs
            obs_t = torch.from_numpy(obs_buf[step]).to(device)
            if rd is not None:
                rd_buf[step] = rd.step(next_obs)                  # uses s_t, before the action
                rd_t = torch.from_numpy(rd_buf[step]).to(device)
            else:
                rd_t = zero_rd
            with torch.no_grad():
                logits, value = agent(obs_t, rd_t, args.blend_weight)
                action, logp = sample_actions(logits, gumbel[step])
            actions.append(action), logps.append(logp), values.append(value)
            next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())  # the one host sync per step
            done = terminated | truncated
            rew_buf[step], done_buf[step] = reward, done
            if done.any():
                if rd is not None:
                    rd.reset(done)                                 # RD state lives for one episode
                cut = truncated & ~terminated                      # time limit: bootstrap from V(final obs)
                if cut.any():
                    final = np.stack(info["final_obs"][cut]).astype(np.float32)
                    with torch.no_grad():
                        rew_buf[step, cut] += args.discount * agent.value(torch.from_numpy(final).to(device)).cpu().numpy()
                for r, length in zip(*finished_episodes(info)):
                    ep_steps.append(global_step), ep_returns.append(float(r)), ep_times.append(time.time() - start_time)
                    log.log(global_step, {"charts/episodic_return": float(r), "charts/episodic_length": int(length)})
        val_buf = torch.stack(values)

        # ---- advantages ----
        with torch.no_grad():
            next_value = agent.value(torch.from_numpy(next_obs.astype(np.float32)).to(device))
            rewards = torch.from_numpy(rew_buf).to(device)
            dones = torch.from_numpy(done_buf).to(device)
            advantages, returns = gae(rewards, val_buf, dones, next_value, args.discount, args.gae_lambda)
        batch = {"obs": torch.from_numpy(obs_buf).to(device).reshape(-1, obs_dim),
                 "rd": torch.from_numpy(rd_buf).to(device).reshape(-1, n_actions),
                 "actions": torch.cat(actions), "logprobs": torch.cat(logps), "values": val_buf.reshape(-1),
                 "advantages": advantages.reshape(-1), "returns": returns.reshape(-1)}

        # ---- PPO update ----
        s, first_ratio_dev = ppo_update(agent, optimizer, batch, args, device)

        # ---- per-iteration logging (one host sync) ----
        b_ret, b_val = batch["returns"], batch["values"]
        var_y = b_ret.var()
        explained_var = torch.where(var_y == 0, torch.nan, 1 - (b_ret - b_val).var() / var_y)
        last_kl = s[-1, 4]
        vals = torch.cat([s.mean(0), last_kl.view(1), explained_var.view(1), first_ratio_dev.view(1)]).tolist()
        loss_m, pg_m, v_m, ent_m, _, clipfrac_m, kl_m, ev, ratio_dev = vals
        sps = int(global_step / (time.time() - start_time))
        row = {
            "charts/learning_rate": optimizer.param_groups[0]["lr"], "charts/SPS": sps,
            "losses/loss": loss_m, "losses/policy_loss": pg_m, "losses/value_loss": v_m, "losses/entropy": ent_m,
            "losses/approx_kl": kl_m, "losses/clipfrac": clipfrac_m, "losses/explained_variance": ev,
            "debug/first_ratio_max_dev": ratio_dev, "debug/update_minibatches": int(s.shape[0]),
        }
        if rd is not None:
            mean_a, mean_h, clip_frac = rd.diagnostics()
            row.update({"rd/mean_abs_a": mean_a, "rd/mean_abs_h": mean_h, "rd/clip_fraction": clip_frac,
                        "rd/out_norm": float(np.linalg.norm(rd_buf, axis=-1).mean())})
        log.log(global_step, row)
        if not all(np.isfinite([loss_m, pg_m, v_m, ent_m, kl_m])):
            status = f"non-finite loss at global_step {global_step} (loss={loss_m}, entropy={ent_m})"
            break
        if iteration % print_every == 0 or iteration == args.num_iterations:
            recent = np.mean(ep_returns[-20:]) if ep_returns else float("nan")
            print(f"global_step {global_step:>8d}/{args.total_timesteps}  return(20) {recent:7.1f}  SPS {sps}", flush=True)

    # ---- summary, plot, model ----
    wall_time = time.time() - start_time
    envs.close()
    ep_steps_a, ep_returns_a = np.array(ep_steps, dtype=np.int64), np.array(ep_returns)
    curve = learning_curve_summary(ep_steps_a, ep_returns_a, global_step)
    summary = {
        "status": status, "env": args.env, "gamma": args.gamma, "rd_weight": args.rd_weight, "rd": args.rd,
        "seed": args.seed, "global_step": global_step, "episodes": len(ep_returns),
        "final_return_mean20": curve["final_return"], "steps_to_475": curve["steps_to_threshold"],
        "auc": curve["auc"], "wall_time_s": wall_time, "SPS": global_step / wall_time,
        "time_to_475_s": None if curve["threshold_episode"] is None else ep_times[curve["threshold_episode"]],
    }
    if args.save_model and status == "ok":
        summary.update(save_and_evaluate(agent, args, device, log.run_dir, obs_dim, n_actions))
    plot_learning_curve(ep_steps_a, ep_returns_a, f"{log.run_name} ({args.env}, gamma={args.gamma}, "
                        f"lambda={args.blend_weight})", os.path.join(log.run_dir, "learning_curve.png"))
    print(f"{log.run_name}: final return(20) {curve['final_return']}, steps to 475 {curve['steps_to_threshold']}, "
          f"AUC {curve['auc']:.1f}, {summary['SPS']:.0f} SPS, {wall_time:.1f} s -> {log.run_dir}")
    return summary


def save_and_evaluate(agent: Agent, args: Args, device: torch.device, run_dir: str, obs_dim: int,
                      n_actions: int) -> dict:
    """Save the agent to run_dir/{exp_name}.model, reload it and evaluate it greedily."""
    model_path = os.path.join(run_dir, f"{args.exp_name}.model")
    torch.save({"agent": agent.state_dict(), "args": vars(args)}, model_path)
    eval_agent = Agent(obs_dim, n_actions).to(device)
    eval_agent.load_state_dict(torch.load(model_path, map_location=device)["agent"])
    eval_returns = evaluate(eval_agent, args, device, args.eval_episodes, seed=args.seed + 10_000)
    print(f"saved {model_path}; greedy return over {args.eval_episodes} episodes: {np.mean(eval_returns):.1f}")
    return {"eval_greedy_return_mean": float(np.mean(eval_returns)), "eval_greedy_returns": eval_returns}


if __name__ == "__main__":
    args = parse_args("rd_ppo.py", Args, finalize_args)
    sys.exit(run_experiment("rd_ppo.py", args, train, x_axis="global_step"))
