"""ga_learning_rule.py: a genetic algorithm evolves a learning rule that trains an actor during its lifetime.

Question (seed 003, ASFaust/MetaRL "Learning to learn with Genetic Algorithms"): can a GA find the
parameters of a small message-passing "learning-rule network" such that a freshly initialised
actor, updated by that rule after every action, learns to control its environment within one
lifetime? The original reported "it doesn't work (yet)"; this script is the version that can say
why, with the controls that separate lifetime learning from a rule that merely drives the weights
to a fixed policy.

Everything is batched over B = population x lifetimes (row b = p*K + k, one (individual, lifetime) pair), on the
chosen device, under torch.inference_mode (no autograd). The actor and the rules' state are stored batch-last (B
innermost and contiguous), the env and the GA batch-first; at most --batch-rows rows run at once.

Actor (per individual, shape --actor-shape, default [7, 8, 8, 2]): for each layer l
    z = x W_l + b_l,   z^ = z + sigma_l * eps (eps ~ N(0, 1), shared by the population),   y = tanh(z^)
    node info of a neuron: [z, z^, y, b, sigma] (5 numbers); the action is the last layer's y.
    W, b are clipped to +-weight_limit, sigma to [0, sigma_limit]. Fresh draw per lifetime:
    W, b ~ N(0, (weight_init * weight_limit)^2), sigma = sigma_init.

Rule "mpnn" (the seed's message-passing network; every individual has its own 123 numbers
with the default signal_dim 1, state_dim 2). A cell with persistent state s, zero at birth:
    cell(x, s):  s' = tanh(Ws [s, x] + bs),   out = tanh(Wo [s', x] + bo)
Each env step, after the reward r arrives, layers are processed last -> first:
    node cell on every post neuron j of layer l:
        x_j = [info_j (5), g_j (S), r, is_action_j]      ->  out = [g'_j (S), db_j, dsigma_j]
        g_j is the learning signal arriving from layer l+1 (zeros for the last layer).
        b_j += lr db_j (clip +-weight_limit);  sigma_j = clip(sigma_j + lr dsigma_j, 0, sigma_limit)
    connection cell on every synapse i -> j of layer l (own state per synapse):
        x_ij = [info_j (5, with the new b, sigma), info_i (5), g'_j (S), w_ij, r, is_input_layer]
        out  = [m_ij (S), dw_ij];   w_ij += lr dw_ij (clip +-weight_limit)
        (info_i of the input layer: zeros except the "y" slot, which holds the observation)
    signal sent to layer l-1:  g_i = mean_j m_ij
All cell outputs are tanh-bounded, so |change| <= lr per step (the seed's lr = 0.01).

Rule "abcd" (Najarro & Risi 2020, with a third, reward factor): per synapse (bias = synapse from
a constant input 1) eight evolved numbers (A, B, C, D, A', B', C', D'):
    h  = A pre post + B pre + C post + D,   h' = A' pre post + B' pre + C' post + D'
    dw = lr * clip(h + m h', -1, 1),   m = clip((r - rbar) / (sqrt(v) + 1e-8), -3, 3)
    rbar <- rbar + 0.05 (r - rbar),  v <- v + 0.05 ((r - rbar)^2 - v)     (after m is computed)
pre = layer input (the observation for layer 0), post = y. sigma is not plastic under this rule.
m = 0 with the reward zeroed, so h alone is Najarro's reward-free rule.

Rule "nodepert" (hand-set, never evolved: the positive control that a rule CAN learn here; run on
hiddenfood's held-out lifetimes): node perturbation with an eligibility trace on every layer,
    xi = z^ - z,  e <- lam e + x xi^T / sigma^2,  W += lr (r - rbar) e,  rbar <- rbar + 0.05 (r - rbar)
(lr 0.15, sigma 1, lam 0.8: picked on a small grid over seed 1's held-out lifetimes).
mpnn --neuron-id True (default): both cells also read a one-hot identity of each action neuron (zeros
off the action layer), so the two action neurons can differ (the seed's cells are symmetric in them).

--evolve gru: a GRU actor (RL^2-style, the upper reference) fed [obs, last reward, last action]; its
genome is the GRU's weights; it learns with its memory, not its weights.

GA: the genome (rule parameters, or with --evolve actor the actor's own W, b [, sigma], rule off)
of P individuals, initialised N(0, init_std^2). Fitness = return summed over a whole lifetime of
--steps steps, mean (or min) over --evals-per-gen lifetimes. All individuals of a generation share
the lifetimes' seeds (layouts, actor draws, noise: common random numbers); new seeds each
generation. Truncation: the top --num-survivors are parents; the top --num-elites are copied
unmutated (and re-evaluated next generation); every other child copies a uniformly drawn parent,
with probability --crossover-rate takes each gene from a second parent with probability 1/2, then
each gene gets + N(0, mutation_strength^2) with probability mutation_probability. NaN fitness is
the worst fitness and is counted. --elitism original reproduces the seed's grouped copying (rows
0..S-1 unmutated, which are 50 copies each of only the top 4 at P/S = 50).

--optimizer es: OpenAI-ES instead of the GA, on the same evaluations per generation (P/2 antithetic pairs
mean +- es_sigma eps, centred ranks, mean += es_lr g; the mean starts at 0, the rule that changes nothing).
After the last generation the top --reeval-top (10) are re-evaluated on fresh validation lifetimes and the
best there is the champion whose controls are reported.

Environments (batched torch, float32):
  hiddenfood       THE TASK THAT NEEDS LEARNING WITHIN A LIFETIME. obs 4-d [x, y, vx, vy]; the food sits at a
                   hidden place on the unit circle (one angle per lifetime, never observed); FoodWorld's
                   physics; the lifetime is --episodes episodes (each restarts at the origin at rest, the food
                   stays); r = (d_before - d_after) / 0.9 + eaten (normalised, pays eating; after an eat the
                   agent restarts at the origin). The return per episode is the within-lifetime learning curve.
  foodworld        7-d obs [x, y, vx, vy, food_x, food_y, count]; action = 2-d force in [-0.01, 0.01];
                   v <- 0.9 v + a (|v| <= 10); p <- p + v; walls at +-2 (clamp, v_axis *= -0.9);
                   food eaten within 0.1 -> count + 1 and the food rotates by a fixed angle about
                   the origin onto the unit circle. value = count - distance, reward = value change.
                   --food-layout fixed: food starts at (1,-1)/sqrt2 and rotates by atan2(0.95, 0.3)
                   (the seed's); random: start angle U[0, 2pi), step +-U[pi/3, pi] per lifetime.

Run:      python ga_learning_rule.py                        # mpnn rule, FoodWorld, P = 1000, 30 gen.
          python ga_learning_rule.py --evolve actor         # the sanity check: evolve the actor itself
          python ga_learning_rule.py --rule abcd
          python ga_learning_rule.py --show runs/RUN/best/gen0029.json   # GIF of a saved individual
          GPU:  python ga_learning_rule.py --population-size 10000 --num-survivors 200 --num-elites 20
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: generation), summary.json (held-out
          controls), best/genNNNN.json, fitness.png, trajectory.png; with --show: show.gif.
Runtime:  defaults (P = 1000, 2 lifetimes x 200 steps, 30 generations, rule mpnn) are 12 M
          individual-steps: about 2 min of one CPU thread at the measured ~9e4 individual-steps per
          CPU-second (benchmark/ga_learning_rule_speed.sh), longer on a loaded machine.
Result:   hiddenfood (docs/ga_learning_rule.md, benchmark/ga_learning_rule_hidden.sh; 10 seeds, P = 200, 50
          generations, a reduced budget): OpenAI-ES on the abcd family evolves a rule that learns where the
          food is (lifetime return 3.19 +- 0.89 against 0 for doing nothing; shuffling its reward costs
          4.02 +- 0.88); the GA's abcd rule improves a little within the lifetime but stays below 0
          (-2.35 +- 1.16), its mpnn rule ignores the reward; the hand-set node-perturbation rule learns
          (episode 1 -> 6: -0.31 -> 0.42). FoodWorld (3 seeds; rule rows re-run after the aliasing fix) evolving the actor directly (P = 1000, 8 lifetimes, 200
          generations) reaches a lifetime return of 8.25 +- 0.26 (about the foods eaten) on unseen
          layouts, against 8.32 +- 0.20 for a hand-written push-toward-food controller. No evolved rule of either family learns within its lifetime:
          the best mpnn rule ignores the reward (same return with it zeroed) and moves the agent on a
          fixed diagonal; the best abcd rule does worse than no action.
"""

import dataclasses
import json
import math
import os
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import tyro


@dataclass
class Args:
    # ---- infrastructure ----
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of the experiment; the run folder is runs/{exp_name}__{seed}__{unix time}"""
    seed: int = 1
    """seed of the GA, the training lifetimes and the held-out lifetimes"""
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

    # ---- what is evolved ----
    env: str = "foodworld"
    """environment: foodworld (the seed's) or hiddenfood (needs learning within a lifetime)"""
    evolve: str = "rule"
    """rule: evolve the learning rule (fresh actor every lifetime); actor: the actor's weights, rule off; gru: a
    recurrent actor fed (obs, last reward, last action), RL^2-style, rule off"""
    optimizer: str = "ga"
    """ga (the seed's truncation GA) or es (OpenAI-ES: antithetic Gaussian search, centred ranks, plain SGD)"""
    rule: str = "mpnn"
    """learning-rule family: mpnn (the seed's message-passing cells) or abcd (reward-modulated Hebbian)"""
    neuron_id: bool = True
    """mpnn: feed the cells a one-hot identity of each action neuron (False: the seed's symmetric cells)"""
    food_layout: str = "random"
    """foodworld food placement per training lifetime: fixed (the seed's) or random"""
    observe_count: bool = True
    """foodworld: the 7th observation is the food count (the seed's); False feeds 0 there instead"""
    steps: int = 200
    """environment steps per lifetime"""
    episodes: int = 4
    """episodes per lifetime (hiddenfood restarts the agent at the origin each episode; the food stays); the
    return per episode is the within-lifetime learning curve (foodworld: equal segments of the lifetime)"""

    # ---- actor ----
    actor_shape: list[int] = field(default_factory=lambda: [7, 8, 8, 2])
    """layer sizes of the actor, observation first, action last"""
    weight_limit: float = 4.0
    """weights and biases are clipped to +- this"""
    weight_init: float = 0.001
    """fresh actors draw W, b ~ N(0, (weight_init * weight_limit)^2)"""
    sigma_init: float = 0.0
    """initial per-neuron noise std"""
    sigma_limit: float = 0.0
    """noise std is clipped to [0, sigma_limit]; 0 makes the actor deterministic"""

    # ---- learning rule ----
    rule_lr: float = 0.01
    """largest change of a weight, bias or sigma per step"""
    signal_dim: int = 1
    """mpnn: size of the backward learning signal"""
    state_dim: int = 2
    """mpnn: recurrent state per neuron and per synapse"""
    gru_hidden: int = 8
    """--evolve gru: hidden units"""
    hand_lr: float = 0.15
    """hand-set node-perturbation rule (a control on hiddenfood): learning rate"""
    hand_sigma: float = 1.0
    """hand-set node-perturbation rule: std of the exploration noise added to every pre-activation"""
    hand_trace: float = 0.8
    """hand-set node-perturbation rule: decay of the eligibility trace (the force acts through the velocity)"""

    # ---- genetic algorithm ----
    population_size: int = 1000
    """individuals P"""
    num_survivors: int = 100
    """truncation: the best S are the parents"""
    num_elites: int = 10
    """the best k are copied unmutated and re-evaluated (--elitism topk)"""
    elitism: str = "topk"
    """topk, or original: the seed's grouped copying where rows < S stay unmutated"""
    generations: int = 30
    """generations"""
    evals_per_gen: int = 2
    """lifetimes per individual per generation (shared by all individuals)"""
    fitness_agg: str = "mean"
    """mean or min of the lifetime returns"""
    mutation_probability: float = 0.1
    """probability that a gene is mutated"""
    mutation_strength: float = 0.1
    """std of the Gaussian added to a mutated gene"""
    crossover_rate: float = 0.0
    """probability that a child is a uniform crossover of two parents"""
    init_std: float = 1.0
    """std of the initial genomes"""
    es_sigma: float = 0.1
    """--optimizer es: std of the search perturbations"""
    es_lr: float = 0.2
    """--optimizer es: step size of the mean"""
    reeval_top: int = 10
    """the top k of the final generation are re-evaluated on fresh validation lifetimes before the champion is picked"""

    # ---- evaluation and outputs ----
    eval_lifetimes: int = 32
    """held-out lifetimes (unseen random layouts) for the final controls"""
    show: Optional[str] = None
    """replay a saved individual (best/genNNNN.json) for one lifetime and write show.gif instead of evolving"""
    gif_stride: int = 2
    """--show: draw every n-th step"""
    torch_threads: int = 1
    """torch CPU threads; one is fastest on a small shared CPU"""
    batch_rows: int = 2048
    """at most this many (individual, lifetime) rows are run at once (the population runs in groups of individuals on
    the same lifetimes): bounds the memory and keeps the rule's state in cache; it does not change the numbers"""

    # ---- derived at runtime ----
    genome_size: tyro.conf.Suppress[int] = 0
    """numbers per genome"""


ENVS = ("foodworld", "hiddenfood")
RULES = ("mpnn", "abcd")
# fields that describe a saved individual; --show takes them from the file, not from the command line
STRUCTURAL = ("env", "evolve", "rule", "neuron_id", "gru_hidden", "observe_count", "actor_shape", "weight_limit", "weight_init",
              "sigma_init", "sigma_limit", "rule_lr", "signal_dim", "state_dim", "genome_size")


def check_structure(args: Args) -> None:
    """The fields that describe an individual (STRUCTURAL): choices, actor shape, limits; fills genome_size."""
    if args.env not in ENVS:
        raise ValueError(f"unknown --env {args.env!r}; choose one of {', '.join(ENVS)}")
    if args.rule not in RULES:
        raise ValueError(f"unknown --rule {args.rule!r}; choose one of {', '.join(RULES)}")
    if args.evolve not in ("rule", "actor", "gru"):
        raise ValueError(f"unknown --evolve {args.evolve!r}; choose one of rule, actor, gru")
    obs_dim, act_dim = ENV_DIMS[args.env]
    shape = args.actor_shape
    if len(shape) < 2 or min(shape) <= 0:
        raise ValueError(f"--actor-shape needs at least two positive sizes, got {shape}")
    if shape[0] != obs_dim or shape[-1] != act_dim:
        raise ValueError(f"--actor-shape {shape} must start with {obs_dim} (observation) and end with {act_dim} "
                         f"(action) for --env {args.env}")
    for name in ("signal_dim", "state_dim", "gru_hidden"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name, low, strict in (("weight_limit", 0.0, True), ("rule_lr", 0.0, True), ("weight_init", 0.0, False),
                              ("sigma_init", 0.0, False), ("sigma_limit", 0.0, False)):
        value = getattr(args, name)
        if not math.isfinite(value) or value < low or (strict and value == low):
            kind = "a finite number > 0" if strict else "a finite number >= 0"
            raise ValueError(f"--{name.replace('_', '-')} must be {kind}, got {value}")
    if args.sigma_init > args.sigma_limit:
        raise ValueError(f"--sigma-init {args.sigma_init} exceeds --sigma-limit {args.sigma_limit} "
                         f"(the noise std is clipped to [0, sigma_limit])")
    args.genome_size = genome_size(args)


def field_default(name: str):
    f = Args.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def load_saved_individual(path: str) -> dict:
    """Read a saved individual (best/genNNNN.json) for --show: {"genome": [D numbers], "fitness": number
    or null, "args": {every STRUCTURAL field}}. Anything else is a ValueError that says what is wrong."""
    where = f"--show {path!r}"
    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError as e:
        raise ValueError(f"{where} cannot be read: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:          # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{where} is not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        raise ValueError(f"{where} is not a saved individual: need a JSON object with 'genome', 'fitness' and "
                         f"'args' (a best/genNNNN.json of a run)")
    missing = [k for k in ("genome", "fitness") if k not in saved] + \
              [f"args.{n}" for n in STRUCTURAL if n not in saved["args"]]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    for name in STRUCTURAL:
        value, default = saved["args"][name], field_default(name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = number(value)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"{where}: args.{name} = {value!r} is not a {type(default).__name__}")
        if isinstance(default, float):
            saved["args"][name] = float(value)
    genome = saved["genome"]
    if not isinstance(genome, list) or not genome:
        raise ValueError(f"{where}: genome must be a non-empty list of numbers")
    bad = next((i for i, v in enumerate(genome) if not (number(v) and math.isfinite(v))), None)
    if bad is not None:
        raise ValueError(f"{where}: genome[{bad}] = {genome[bad]!r} is not a finite number")
    if saved["fitness"] is not None and not number(saved["fitness"]):
        raise ValueError(f"{where}: fitness = {saved['fitness']!r} is not a number or null")
    return saved


def estimate_bytes(args: Args) -> tuple[float, str]:
    """The large allocations, from the arguments: every tensor of a generation's evaluation is batched
    over B = P x lifetimes rows (the held-out random-rule control over eval_lifetimes^2), at most --batch-rows of
    them at once, per row the
    repeated genome, the actor (W, b, sigma, a copy while updating), its trace, the rule's state and the
    update's temporaries (one layer at a time); the GA step holds about 6 copies of the (P, D) population;
    a recorded lifetime (trajectory, --show) keeps a small tensor per step, and --show's GIF writer every
    frame as an image. Returns (bytes, what needs them)."""
    shape, layers = args.actor_shape, actor_layer_shapes(args.actor_shape)
    synapses = [n_in * n_out for n_in, n_out in layers]
    D = args.genome_size
    per_row = D + 2 * sum(s + 2 * n_out for s, (_, n_out) in zip(synapses, layers)) + 4 * sum(shape) + 32
    if args.evolve == "rule" and args.rule == "mpnn":
        S, sd = args.signal_dim, args.state_dim
        in_c, out_c = 2 * NODE_INFO + S + 3, S + 1
        per_row += sd * (sum(shape[1:]) + sum(synapses)) + 2 * in_c * (sd + out_c) \
            + (2 * sd + out_c + 1) * max(synapses) + (sd + out_c) * (max(shape) + 2 * NODE_INFO + S + 4)
    elif args.evolve == "rule":
        per_row += 8 * max((n_in + 1) * n_out for n_in, n_out in layers)
    if args.env == "hiddenfood":                # the hand-set rule's eligibility traces and the kept rewards
        per_row += 2 * sum(s + n_out for s, (_, n_out) in zip(synapses, layers)) + args.steps
    if args.show is not None:                    # the GIF writer keeps every drawn frame: 400 x 400 RGBA
        frames = -(-args.steps // args.gif_stride)
        return 4.0 * per_row + 512.0 * args.steps + 640_000.0 * frames, \
            f"a GIF of {frames} frames (--steps {args.steps}, --gif-stride {args.gif_stride})"
    rows, what = args.population_size * args.evals_per_gen, \
        f"a population of {args.population_size} x {args.evals_per_gen} lifetimes (genome {D})"
    heldout = args.eval_lifetimes ** 2 if args.evolve == "rule" else args.eval_lifetimes
    if heldout > rows:
        rows, what = heldout, f"the held-out random-rule control ({args.eval_lifetimes}^2 lifetimes, genome {D})"
    live = min(rows, args.batch_rows)             # at most --batch-rows rows hold an actor and a rule at once
    return 4.0 * (live * per_row + 64 * rows + 6 * args.population_size * D) + 512.0 * args.steps, what


def finalize_args(args: Args) -> Args:
    """Check the arguments and fill the derived fields; a ValueError carries a one-line reason. With
    --show, the structure of the individual (STRUCTURAL) comes from the file and is checked here too."""
    choices = {"food_layout": ("fixed", "random"), "elitism": ("topk", "original"), "fitness_agg": ("mean", "min"),
               "optimizer": ("ga", "es")}
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            flag = f"--{name.replace('_', '-')} {getattr(args, name)!r}"
            raise ValueError(f"unknown {flag}; choose one of {', '.join(allowed)}")
    if args.show is not None:
        if not os.path.isfile(args.show):
            raise ValueError(f"--show {args.show!r} is not a file")
        saved = load_saved_individual(args.show)
        for name in STRUCTURAL:
            setattr(args, name, saved["args"][name])
        try:
            check_structure(args)
        except ValueError as e:
            raise ValueError(f"--show {args.show!r} holds arguments this script refuses: {e}") from None
        if len(saved["genome"]) != args.genome_size:
            what = "actor" if args.evolve == "actor" else f"rule {args.rule}"
            raise ValueError(f"--show {args.show!r}: its genome has {len(saved['genome'])} numbers, but its "
                             f"arguments ({args.env}, {what}, actor shape {args.actor_shape}) need {args.genome_size}")
    else:
        check_structure(args)
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must lie in [0, 2**32 - 1], got {args.seed}")
    for name in ("population_size", "num_survivors", "generations", "evals_per_gen", "steps", "eval_lifetimes",
                 "torch_threads", "gif_stride", "episodes", "reeval_top", "batch_rows"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.episodes > args.steps or (args.env == "hiddenfood" and args.steps % args.episodes):
        raise ValueError(f"--steps {args.steps} must be a multiple of --episodes {args.episodes} (hiddenfood) "
                         f"and not smaller")
    if args.optimizer == "es" and args.population_size % 2:
        raise ValueError(f"--optimizer es pairs antithetic perturbations: --population-size must be even, "
                         f"got {args.population_size}")
    for name in ("hand_lr", "hand_sigma", "es_sigma", "es_lr"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    if not 0.0 <= args.hand_trace < 1.0:
        raise ValueError(f"--hand-trace must lie in [0, 1), got {args.hand_trace}")
    if args.num_survivors > args.population_size:
        raise ValueError(f"--num-survivors {args.num_survivors} exceeds --population-size {args.population_size}")
    if not 0 <= args.num_elites <= args.num_survivors:
        raise ValueError(f"--num-elites must lie in [0, --num-survivors = {args.num_survivors}], got {args.num_elites}")
    for name in ("mutation_probability", "crossover_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}")
    for name in ("mutation_strength", "init_std"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(args, name)}")
    if args.show is not None and args.gif_stride > args.steps:
        raise ValueError(f"--gif-stride {args.gif_stride} exceeds --steps {args.steps}: the GIF would have one frame")
    check_memory(*estimate_bytes(args), pick_device(args.cuda))
    return args


# ==================================================================================================
# Environments: batched over B = individuals x lifetimes. initial_state(K, gen) draws K lifetimes'
# starts; reset(state) loads a (B, .) batch; step(action in [-1, 1]) -> reward (B,).
# ==================================================================================================
ENV_DIMS = {"foodworld": (7, 2), "hiddenfood": (4, 2)}
SEED_FOOD_STEP = math.atan2(0.95, 0.3)   # the seed's rotation matrix [[0.3, -0.95], [0.95, 0.3]], as an angle


class FoodWorld:
    """state (B, 7) = [x, y, vx, vy, food_x, food_y, count] (also the observation); rot (B, 2) = the
    lifetime's relocation rotation [cos, sin]."""
    ACCEL, DRAG, MAX_SPEED, WALL, BOUNCE, EAT_RADIUS = 0.01, 0.9, 10.0, 2.0, -0.9, 0.1

    def __init__(self, layout: str = "random", observe_count: bool = True, **_):
        self.layout, self.observe_count = layout, observe_count

    def initial_state(self, k: int, gen: torch.Generator, device) -> torch.Tensor:
        """(K, 9): the 7-d state plus [cos, sin] of the food's relocation step."""
        if self.layout == "fixed":
            phi0 = torch.full((k,), -math.pi / 4, device=device)
            step = torch.full((k,), SEED_FOOD_STEP, device=device)
        else:
            phi0 = torch.rand(k, generator=gen, device=device) * 2 * math.pi
            sign = torch.randint(0, 2, (k,), generator=gen, device=device) * 2 - 1
            step = sign * (math.pi / 3 + torch.rand(k, generator=gen, device=device) * (2 * math.pi / 3))
        s = torch.zeros(k, 9, device=device)
        s[:, 4], s[:, 5] = torch.cos(phi0), torch.sin(phi0)
        s[:, 7], s[:, 8] = torch.cos(step), torch.sin(step)
        return s

    def reset(self, state: torch.Tensor) -> None:
        self.s, self.rot = state[:, :7].clone(), state[:, 7:].clone()
        self.value = self.current_value()

    @property
    def obs(self) -> torch.Tensor:
        """A fresh tensor: step() writes self.s in place, and the rules read the observation from the trace
        after the step (an alias here once fed them s_{t+1} instead of what the actor saw)."""
        return self.s.clone() if self.observe_count else torch.cat([self.s[:, :6], torch.zeros_like(self.s[:, 6:])], 1)

    def current_value(self) -> torch.Tensor:
        return self.s[:, 6] - torch.linalg.vector_norm(self.s[:, 4:6] - self.s[:, 0:2], dim=1)

    def step(self, action: torch.Tensor) -> torch.Tensor:
        s = self.s
        vel = self.DRAG * s[:, 2:4] + self.ACCEL * action
        speed = torch.linalg.vector_norm(vel, dim=1, keepdim=True)
        vel = vel * torch.clamp(self.MAX_SPEED / speed.clamp_min(1e-12), max=1.0)
        pos = s[:, 0:2] + vel
        hit = pos.abs() > self.WALL
        s[:, 0:2] = pos.clamp(-self.WALL, self.WALL)
        s[:, 2:4] = torch.where(hit, self.BOUNCE * vel, vel)
        eaten = torch.linalg.vector_norm(s[:, 4:6] - s[:, 0:2], dim=1) < self.EAT_RADIUS
        s[:, 6] += eaten
        s[:, 4:6] = torch.where(eaten[:, None], relocate_food(s[:, 4:6], self.rot), s[:, 4:6])
        value = self.current_value()
        reward, self.value = value - self.value, value
        return reward

    def positions(self) -> torch.Tensor:
        return self.s[:, [0, 1, 4, 5, 6]]


class HiddenFood:
    """A task that needs learning within a lifetime. The food sits at a hidden place on the unit circle (angle
    U[0, 2pi), one per lifetime) that is NOT observed: obs (B, 4) = [x, y, vx, vy] only. FoodWorld's physics
    (v <- 0.9 v + 0.01 a, walls at +-2). The lifetime is `episodes` episodes of steps/episodes steps; each starts
    at the origin at rest, and the food stays where it was. Reward, normalised and paying for eating:
        r = (d_before - d_after) / (1 - EAT_RADIUS) + eaten,   d = distance to the (hidden) food,
    after an eat the agent restarts at the origin (that jump is not a reward), so one trip pays about 2.
    A fixed policy can only sweep; one that has learned where the food is goes straight there."""
    ACCEL, DRAG, MAX_SPEED, WALL, BOUNCE, EAT_RADIUS = 0.01, 0.9, 10.0, 2.0, -0.9, 0.1

    def __init__(self, episode_len: int = 50, **_):
        self.episode_len = episode_len

    def initial_state(self, k: int, gen: torch.Generator, device) -> torch.Tensor:
        """(K, 2): the hidden food of each lifetime."""
        phi = torch.rand(k, generator=gen, device=device) * 2 * math.pi
        return torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)

    def reset(self, state: torch.Tensor) -> None:
        self.food = state.clone()
        self.s = torch.zeros(state.shape[0], 4, device=state.device)
        self.t = 0
        self.eats = torch.zeros(state.shape[0], device=state.device)

    @property
    def obs(self) -> torch.Tensor:
        return self.s.clone()

    def step(self, action: torch.Tensor) -> torch.Tensor:
        s = self.s
        d_before = torch.linalg.vector_norm(self.food - s[:, 0:2], dim=1)
        vel = self.DRAG * s[:, 2:4] + self.ACCEL * action
        speed = torch.linalg.vector_norm(vel, dim=1, keepdim=True)
        vel = vel * torch.clamp(self.MAX_SPEED / speed.clamp_min(1e-12), max=1.0)
        pos = s[:, 0:2] + vel
        hit = pos.abs() > self.WALL
        pos = pos.clamp(-self.WALL, self.WALL)
        vel = torch.where(hit, self.BOUNCE * vel, vel)
        d_after = torch.linalg.vector_norm(self.food - pos, dim=1)
        eaten = d_after < self.EAT_RADIUS
        reward = (d_before - d_after) / (1.0 - self.EAT_RADIUS) + eaten
        self.eats += eaten
        self.t += 1
        restart = eaten[:, None] | (self.t % self.episode_len == 0)
        self.s = torch.where(restart, torch.zeros_like(s), torch.cat([pos, vel], dim=1))
        return reward

    def positions(self) -> torch.Tensor:
        return torch.cat([self.s[:, 0:2], self.food, self.eats[:, None]], dim=1)


def hidden_food_oracle(env) -> torch.Tensor:
    """The ceiling on hiddenfood: a controller that is told where the food is (push_toward_food on it)."""
    return push_toward_food(torch.cat([env.s, env.food], dim=1))


def relocate_food(food: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate (B, 2) food positions by the angle whose [cos, sin] is rot (B, 2), onto the unit circle.
    (The seed updated x in place and then used the new x for y: not a rotation.)"""
    c, s = rot[:, 0], rot[:, 1]
    new = torch.stack([c * food[:, 0] - s * food[:, 1], s * food[:, 0] + c * food[:, 1]], dim=1)
    return new / torch.linalg.vector_norm(new, dim=1, keepdim=True).clamp_min(1e-12)


ENV_CLASSES = {"foodworld": FoodWorld, "hiddenfood": HiddenFood}


def make_env(args: Args, layout: Optional[str] = None):
    return ENV_CLASSES[args.env](layout=layout or args.food_layout, observe_count=args.observe_count,
                                 episode_len=args.steps // args.episodes)


def push_toward_food(obs: torch.Tensor, kp: float = 10.0, kd: float = 30.0) -> torch.Tensor:
    """Hand-written FoodWorld controller: force = clip(kp (food - pos) - kd v, -1, 1) (a damped PD push)."""
    return (kp * (obs[:, 4:6] - obs[:, 0:2]) - kd * obs[:, 2:4]).clamp(-1.0, 1.0)


# ==================================================================================================
# Actor: a batched tanh MLP whose weights, biases and noise stds belong to each (individual, lifetime).
# ==================================================================================================
class Actor:
    """Stored batch-last: W[l] (n_in, n_out, B), b[l] and sigma[l] (n_out, B), with B = individuals x lifetimes (row
    b = p*K + k) innermost and contiguous, so that every per-individual operation of the forward pass and of the rules
    is one long vectorised loop over B (batch-first, each op loops over a handful of neurons per individual)."""

    def __init__(self, weights: list, biases: list, sigmas: list, weight_limit: float, sigma_limit: float):
        self.W, self.b, self.sigma = weights, biases, sigmas
        self.weight_limit, self.sigma_limit = weight_limit, sigma_limit

    def forward(self, obs: torch.Tensor, noise: Optional[list] = None):
        """obs (B, n_obs) -> action (B, n_act) and the trace [(x, z, z^, y)] per layer that the rules read, each
        (n, B). noise: per layer (K, n) standard normals shared by the P individuals (b = p*K + k)."""
        x, trace = obs.t().contiguous(), []
        for li, (w, b, sig) in enumerate(zip(self.W, self.b, self.sigma)):
            z = torch.addcmul(b, w[0], x[0])                                      # z_j = b_j + sum_i x_i w_ij
            for i in range(1, w.shape[0]):
                z.addcmul_(w[i], x[i])
            if noise is None:
                zhat = z
            else:
                eps = noise[li].t()                                               # (n, K), broadcast over P
                zhat = (z.view(z.shape[0], -1, eps.shape[1]) + sig.view(z.shape[0], -1, eps.shape[1]) * eps[:, None]) \
                    .view_as(z)
            y = torch.tanh(zhat)
            trace.append((x, z, zhat, y))
            x = y
        return x.t().contiguous(), trace

    def rows(self, lo: int, hi: int) -> "Actor":
        """Rows lo..hi-1 (views)."""
        pick = lambda ts: [t[..., lo:hi] for t in ts]
        return Actor(pick(self.W), pick(self.b), pick(self.sigma), self.weight_limit, self.sigma_limit)

    @staticmethod
    def cat(actors: list) -> "Actor":
        join = lambda ts: [torch.cat(parts, dim=-1) for parts in zip(*ts)]
        a = actors[0]
        return Actor(join([x.W for x in actors]), join([x.b for x in actors]), join([x.sigma for x in actors]),
                     a.weight_limit, a.sigma_limit)


def actor_layer_shapes(shape: list[int]) -> list[tuple[int, int]]:
    return list(zip(shape[:-1], shape[1:]))


def batch_last(t: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(P, *shape) -> a contiguous (*shape, P*k): dimension 0 moved last, each row repeated k times (row p*k + j)."""
    t = t.movedim(0, -1)
    return (t if k == 1 else t.unsqueeze(-1).expand(*t.shape, k).flatten(-2)).contiguous()


def fresh_actor(shape: list[int], k: int, p: int, args: Args, gen: torch.Generator, device) -> Actor:
    """K lifetimes' fresh actors, repeated for the P individuals (row b = p*K + k)."""
    std = args.weight_init * args.weight_limit
    weights, biases, sigmas = [], [], []
    for n_in, n_out in actor_layer_shapes(shape):
        lim = args.weight_limit
        w = (torch.randn(k, n_in, n_out, generator=gen, device=device) * std).clamp(-lim, lim)
        b = (torch.randn(k, n_out, generator=gen, device=device) * std).clamp(-lim, lim)
        weights.append(batch_last(w).repeat(1, 1, p))
        biases.append(batch_last(b).repeat(1, p))
        sigmas.append(torch.full((n_out, k * p), min(args.sigma_init, args.sigma_limit), device=device))
    return Actor(weights, biases, sigmas, args.weight_limit, args.sigma_limit)


def actor_from_genome(genome: torch.Tensor, shape: list[int], k: int, args: Args) -> Actor:
    """--evolve actor: the genome (P, D) is [W_1, b_1, ..., W_L, b_L (, sigma_1..L)], repeated K times."""
    parts = unpack(genome, actor_param_shapes(shape, args.sigma_limit > 0))
    lim = args.weight_limit
    weights = [batch_last(parts[f"W{l}"], k).clamp(-lim, lim) for l in range(len(shape) - 1)]
    biases = [batch_last(parts[f"b{l}"], k).clamp(-lim, lim) for l in range(len(shape) - 1)]
    if args.sigma_limit > 0:
        sigmas = [batch_last(parts[f"s{l}"], k).clamp(0.0, args.sigma_limit) for l in range(len(shape) - 1)]
    else:
        sigmas = [torch.zeros_like(b) for b in biases]
    return Actor(weights, biases, sigmas, lim, args.sigma_limit)


class GRUActor:
    """--evolve gru (RL^2-style, the upper reference): x_t = [obs_t, r_{t-1}, a_{t-1}] (zeros at birth),
        u = sig(x Wu + h Uu + bu),  c = sig(x Wc + h Uc + bc),  n = tanh(x Wn + bn + c * (h Un)),
        h <- (1 - u) n + u h,       a = tanh(h Wa + ba)
    with per-individual weights; the memory h is what it learns with (the weights never change)."""

    def __init__(self, genome: torch.Tensor, shape: list[int], hidden: int, k: int):
        g = genome.repeat_interleave(k, dim=0)
        self.p = unpack(g, gru_param_shapes(shape, hidden))
        B, self.H = g.shape[0], hidden
        self.h = torch.zeros(B, hidden, device=g.device)
        self.last_reward = torch.zeros(B, 1, device=g.device)
        self.last_action = torch.zeros(B, shape[-1], device=g.device)

    def forward(self, obs: torch.Tensor, noise=None):
        x = torch.cat([obs, self.last_reward, self.last_action], dim=1)
        H, p = self.H, self.p
        gx = torch.baddbmm(p["b"].unsqueeze(1), x.unsqueeze(1), p["Wx"]).squeeze(1)       # (B, 3H)
        gh = torch.bmm(self.h.unsqueeze(1), p["Wh"]).squeeze(1)
        u = torch.sigmoid(gx[:, :H] + gh[:, :H])
        c = torch.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gx[:, 2 * H:] + c * gh[:, 2 * H:])
        self.h = (1 - u) * n + u * self.h
        action = torch.tanh(torch.baddbmm(p["ba"].unsqueeze(1), self.h.unsqueeze(1), p["Wa"]).squeeze(1))
        self.last_action = action
        return action, None

    def observe(self, reward: torch.Tensor) -> None:
        self.last_reward = reward[:, None]


def gru_param_shapes(shape: list[int], hidden: int) -> list[tuple[str, tuple]]:
    n_in = shape[0] + 1 + shape[-1]
    return [("Wx", (n_in, 3 * hidden)), ("Wh", (hidden, 3 * hidden)), ("b", (3 * hidden,)),
            ("Wa", (hidden, shape[-1])), ("ba", (shape[-1],))]


# ==================================================================================================
# Genome layouts
# ==================================================================================================
NODE_INFO = 5  # [z, z^, y, b, sigma]


def mpnn_param_shapes(signal_dim: int, state_dim: int, id_dim: int = 0) -> list[tuple[str, tuple]]:
    """Node cell: x = [info 5, signal S, r, is_action, id] -> [signal S, db, dsigma]; connection cell:
    x = [post info 5, pre info 5, signal S, w, r, is_input, post id] -> [signal S, dw]. Ws acts on [s, x].
    id: one-hot of the action neuron (id_dim = action size with --neuron-id, zeros off the action layer)."""
    s, sd = signal_dim, state_dim
    in_n, out_n, in_c, out_c = NODE_INFO + s + 2 + id_dim, s + 2, 2 * NODE_INFO + s + 3 + id_dim, s + 1
    return [("node_Ws", (sd + in_n, sd)), ("node_bs", (sd,)), ("node_Wo", (sd + in_n, out_n)), ("node_bo", (out_n,)),
            ("conn_Ws", (sd + in_c, sd)), ("conn_bs", (sd,)), ("conn_Wo", (sd + in_c, out_c)), ("conn_bo", (out_c,))]


ABCD = 8  # A, B, C, D of the plain term and A', B', C', D' of the reward-gated term


def abcd_param_shapes(shape: list[int]) -> list[tuple[str, tuple]]:
    """Per layer: (n_in + 1, n_out, 8) coefficients; row n_in is the bias (a synapse from a constant 1)."""
    return [(f"coef{l}", (n_in + 1, n_out, ABCD)) for l, (n_in, n_out) in enumerate(actor_layer_shapes(shape))]


def actor_param_shapes(shape: list[int], with_sigma: bool) -> list[tuple[str, tuple]]:
    layers = actor_layer_shapes(shape)
    out = [item for l, (n_in, n_out) in enumerate(layers) for item in ((f"W{l}", (n_in, n_out)), (f"b{l}", (n_out,)))]
    return out + ([(f"s{l}", (n_out,)) for l, (_, n_out) in enumerate(layers)] if with_sigma else [])


def param_shapes(args: Args) -> list[tuple[str, tuple]]:
    if args.evolve == "actor":
        return actor_param_shapes(args.actor_shape, args.sigma_limit > 0)
    if args.evolve == "gru":
        return gru_param_shapes(args.actor_shape, args.gru_hidden)
    if args.rule == "mpnn":
        return mpnn_param_shapes(args.signal_dim, args.state_dim, id_dim(args))
    return abcd_param_shapes(args.actor_shape)


def id_dim(args: Args) -> int:
    return args.actor_shape[-1] if args.neuron_id else 0


def genome_size(args: Args) -> int:
    return sum(math.prod(s) for _, s in param_shapes(args))


def unpack(genome: torch.Tensor, shapes: list[tuple[str, tuple]]) -> dict[str, torch.Tensor]:
    """Views (B, *shape) into a flat (B, D) genome, in the order of shapes."""
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = genome[:, i:i + n].view(genome.shape[0], *shape)
        i += n
    assert i == genome.shape[1], (i, genome.shape)
    return out


# ==================================================================================================
# Learning rules (pure tensor code; update the actor in place after every env step)
# ==================================================================================================
def neuron_map(const: Optional[torch.Tensor], terms: list, n: int) -> torch.Tensor:
    """A per-individual linear map applied to n neurons, batch-last: (C, n, B) = const (C, B) + sum over terms of
    w (C, B) * x (n, B); const None is zero. (One pass over (C, n, B) per term; no per-individual matmul.)"""
    (w0, x0), rest = terms[0], terms[1:]
    acc = w0[:, None] * x0[None] if const is None else torch.addcmul(const[:, None], w0[:, None], x0[None])
    for w, x in rest:
        acc.addcmul_(w[:, None], x[None])
    return acc


def tanh_of_half_(u: torch.Tensor) -> torch.Tensor:
    """tanh(u / 2) in place, as 2 sigmoid(u) - 1 (the same function; torch's CPU tanh is about 4x slower than its
    sigmoid, and the cells' tanh was the largest cost of the update). The rule's parameters are stored doubled, so
    u is twice the pre-activation and no extra pass is needed."""
    return u.sigmoid_().mul_(2.0).sub_(1.0)


class MessagePassingRule:
    """The seed's rule (module docstring), batch-last like the actor: every per-individual parameter is a contiguous
    (B,) vector; state per neuron (state_dim, n, B), per synapse (state_dim, n_in, n_out, B). Both cells are
    evaluated as sums of per-individual scalars times batch-last inputs (neuron_map), and the connection cell's
    input part, which is linear, per neuron, broadcast to the synapses (never building the (14, n_in, n_out, B)
    input)."""

    def __init__(self, genome: torch.Tensor, shape: list[int], args: Args, k: int = 1):
        """genome (P, D); the rule runs P*k rows (row p*k + j is individual p)."""
        self.n_id = id_dim(args)
        S, sd = args.signal_dim, args.state_dim
        self.S, self.sd, self.lr, self.act_dim = S, sd, args.rule_lr, shape[-1]
        p = {name: batch_last(t, k) * 2.0 for name, t in                                 # (.., ., B), doubled:
             unpack(genome, mpnn_param_shapes(S, sd, self.n_id)).items()}                   # see tanh_of_half_
        B, dev, dt = genome.shape[0] * k, genome.device, genome.dtype
        self.node_Ws, self.node_bs, self.node_Wo, self.node_bo = p["node_Ws"], p["node_bs"], p["node_Wo"], p["node_bo"]
        self.node_state = [torch.zeros(sd, n, B, device=dev, dtype=dt) for n in shape[1:]]
        self.conn_state = [torch.zeros(sd, i, o, B, device=dev, dtype=dt) for i, o in actor_layer_shapes(shape)]
        # the connection cell's x rows of both heads side by side: (in_c, sd + S + 1, B); its state rows per head
        self.wx = torch.cat([p["conn_Ws"][sd:], p["conn_Wo"][sd:]], dim=1)
        self.bias_c = torch.cat([p["conn_bs"], p["conn_bo"]], dim=0)
        self.ws_state, self.wo_state = p["conn_Ws"][:sd], p["conn_Wo"][:sd]

    def update(self, actor: Actor, trace: list, reward: torch.Tensor) -> None:
        L, S, sd, lr, wl = len(trace), self.S, self.sd, self.lr, actor.weight_limit
        r, signal = reward, None
        # input rows: node x = [info 0-4, signal 5.., r, is_action, id..]; connection x = [post info 0-4, pre info
        # 5-9, signal 10.., w, r, is_input, post id..] (after the state rows of Ws and Wo)
        n_r, n_act, n_ids = sd + NODE_INFO + S, sd + NODE_INFO + S + 1, sd + NODE_INFO + S + 2
        c_sig, c_w = 2 * NODE_INFO, 2 * NODE_INFO + S
        c_r, c_flag, c_ids = c_w + 1, c_w + 2, c_w + 3
        for l in range(L - 1, -1, -1):
            x_in, z, zhat, y = trace[l]
            n_in, n_out, last = x_in.shape[0], y.shape[0], l == L - 1
            b, sig, w = actor.b[l], actor.sigma[l], actor.W[l]
            info = (z, zhat, y, b, sig)
            sig_in = [] if signal is None else list(signal)                          # zeros for the last layer
            # node cell: s' = tanh(Ws [s, x] + bs), out = tanh(Wo [s', x] + bo); is_action and the id are constants
            cells = []
            for Wm, bm, state in ((self.node_Ws, self.node_bs, self.node_state[l]), (self.node_Wo, self.node_bo, None)):
                const = torch.addcmul(bm, Wm[n_r], r)
                if last:
                    const = const + Wm[n_act]
                state = cells[0] if state is None else state
                terms = [(Wm[j], state[j]) for j in range(sd)] + [(Wm[sd + a], t) for a, t in enumerate(info)] \
                    + [(Wm[sd + NODE_INFO + j], g) for j, g in enumerate(sig_in)]
                acc = neuron_map(const, terms, n_out)
                if last:
                    for q in range(self.n_id):
                        acc[:, q] += Wm[n_ids + q]
                cells.append(tanh_of_half_(acc))
            self.node_state[l], out = cells
            post_signal = out[:S]
            b.add_(out[S], alpha=lr).clamp_(-wl, wl)
            sig.add_(out[S + 1], alpha=lr).clamp_(0.0, actor.sigma_limit)
            # connection cell, x part per neuron (C = sd + S + 1 pre-activations): post (with the new b, sigma) and pre
            wx = self.wx
            const = torch.addcmul(self.bias_c, wx[c_r], r)
            if l == 0:
                const = const + wx[c_flag]
            post = neuron_map(const, [(wx[a], t) for a, t in enumerate(info)]
                              + [(wx[c_sig + j], g) for j, g in enumerate(post_signal)], n_out)
            if last:
                for q in range(self.n_id):
                    post[:, q] += wx[c_ids + q]
            if l == 0:                                                   # the input layer's info: only y = obs
                pre = neuron_map(None, [(wx[NODE_INFO + 2], x_in)], n_in)
            else:
                _, pz, pzhat, py = trace[l - 1]
                pre = neuron_map(None, [(wx[NODE_INFO + a], t) for a, t in
                                        enumerate((pz, pzhat, py, actor.b[l - 1], actor.sigma[l - 1]))], n_in)
            # ... broadcast to the synapses, (units, n_in, n_out, B) per head, plus w and the state rows
            state, heads = self.conn_state[l], []
            for lo, hi, wstate in ((0, sd, self.ws_state), (sd, None, self.wo_state)):
                x = pre[lo:hi, :, None] + post[lo:hi, None, :]
                x.addcmul_(wx[c_w, lo:hi, None, None], w[None])
                prev = state if not heads else heads[0]
                for j in range(sd):
                    x.addcmul_(wstate[j][:, None, None], prev[j][None])
                heads.append(tanh_of_half_(x))
            self.conn_state[l], out_c = heads                                # out_c (S + 1, n_in, n_out, B)
            w.add_(out_c[S], alpha=lr).clamp_(-wl, wl)
            signal = out_c[:S].mean(dim=2)                                   # (S, n_in, B) to layer l-1


def abcd_delta(coef: torch.Tensor, pre: torch.Tensor, post: torch.Tensor, m: torch.Tensor):
    """clip(h + m h', -1, 1) for every synapse of one layer, before the lr, batch-last. coef (8, n_in+1, n_out, B),
    pre (n_in, B), post (n_out, B), m (B,). Returns (dW (n_in, n_out, B), db (n_out, B)). The coefficients are
    combined with m first: ((A + mA') pre + (C + mC')) post + (B + mB') pre + (D + mD'), one pass each."""
    pre1 = torch.cat([pre, torch.ones_like(pre[:1])], dim=0)[:, None]                    # (n_in+1, 1, B)
    post1 = post[None]                                                                 # (1, n_out, B)
    d = torch.addcmul(coef[0], coef[4], m).mul_(pre1).add_(coef[2]).addcmul_(coef[6], m).mul_(post1)
    d.add_(torch.addcmul(coef[1], coef[5], m).mul_(pre1)).add_(coef[3]).addcmul_(coef[7], m)
    d.clamp_(-1.0, 1.0)
    return d[:-1], d[-1]


class HebbianRule:
    """Reward-modulated ABCD rule (module docstring); rbar, v: running mean and variance of the reward. The
    coefficients are held batch-last, (8, n_in+1, n_out, B) per layer, one copy for the rows being run."""
    RATE = 0.05

    def __init__(self, genome: torch.Tensor, shape: list[int], args: Args, k: int = 1):
        self.coef = [batch_last(c.movedim(-1, 1), k) for c in unpack(genome, abcd_param_shapes(shape)).values()]
        self.lr = args.rule_lr
        self.rbar = torch.zeros(genome.shape[0] * k, device=genome.device, dtype=genome.dtype)
        self.var = torch.zeros_like(self.rbar)

    def modulation(self, reward: torch.Tensor) -> torch.Tensor:
        err = reward - self.rbar
        m = (err / (self.var.sqrt() + 1e-8)).clamp(-3.0, 3.0)
        self.rbar += self.RATE * err
        self.var += self.RATE * (err * err - self.var)
        return m

    def update(self, actor: Actor, trace: list, reward: torch.Tensor) -> None:
        m = self.modulation(reward)
        for l, (x_in, _, _, y) in enumerate(trace):
            dw, db = abcd_delta(self.coef[l], x_in, y, m)
            actor.W[l].add_(dw, alpha=self.lr).clamp_(-actor.weight_limit, actor.weight_limit)
            actor.b[l].add_(db, alpha=self.lr).clamp_(-actor.weight_limit, actor.weight_limit)


class NodePerturbationRule:
    """The hand-set rule known to learn (a positive control, nothing evolved): reward-modulated node
    perturbation (Williams 1992; Fiete & Seung 2006) on every layer, with an eligibility trace because a
    force acts on the position through the velocity:
        xi = z^ - z (the injected noise, std sigma),  e_W <- lam e_W + x xi^T / sigma^2,  e_b <- lam e_b + xi / sigma^2
        W += lr (r - rbar) e_W,  b += lr (r - rbar) e_b  (clip +-weight_limit),  rbar <- rbar + 0.05 (r - rbar)."""
    RATE = 0.05

    def __init__(self, genome: torch.Tensor, shape: list[int], args: Args, k: int = 1):
        B, dev = genome.shape[0] * k, genome.device
        self.lr, self.lam, self.var = args.hand_lr, args.hand_trace, args.hand_sigma ** 2
        self.eW = [torch.zeros(i, o, B, device=dev) for i, o in actor_layer_shapes(shape)]
        self.eb = [torch.zeros(o, B, device=dev) for o in shape[1:]]
        self.rbar = torch.zeros(B, device=dev)

    def update(self, actor: Actor, trace: list, reward: torch.Tensor) -> None:
        adv = self.lr * (reward - self.rbar)
        self.rbar += self.RATE * (reward - self.rbar)
        for l, (x, z, zhat, _) in enumerate(trace):
            xi = (zhat - z) / self.var
            self.eW[l].mul_(self.lam).addcmul_(x[:, None], xi[None])
            self.eb[l].mul_(self.lam).add_(xi)
            actor.W[l].addcmul_(self.eW[l], adv).clamp_(-actor.weight_limit, actor.weight_limit)
            actor.b[l].addcmul_(self.eb[l], adv).clamp_(-actor.weight_limit, actor.weight_limit)


RULE_CLASSES = {"mpnn": MessagePassingRule, "abcd": HebbianRule, "nodepert": NodePerturbationRule}


# ==================================================================================================
# Lifetimes and the GA
# ==================================================================================================
def lifetime_generator(seed: int, generation: int, device) -> torch.Generator:
    """Generation g's lifetimes (layouts, actor draws, noise); held-out lifetimes use generation = -1."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7919 * (generation + 2))


def run_lifetimes(args: Args, genome: Optional[torch.Tensor], k: int, gen: torch.Generator, device, *,
                  plastic: bool = True, zero_reward: bool = False, rule_rewards: Optional[torch.Tensor] = None,
                  controller=None, record: bool = False, rule_name: Optional[str] = None,
                  actor: Optional[Actor] = None, keep_rewards: bool = False) -> dict:
    """Run every genome (P, D) for k shared lifetimes of args.steps steps.

    genome is rule parameters (--evolve rule), actor parameters (--evolve actor) or GRU parameters (--evolve
    gru); None with a controller (env -> action in [-1, 1]) runs that controller instead. rule_name overrides
    args.rule (the hand-set "nodepert" ignores the genome); actor, given, replaces the fresh draw (the frozen
    control). What the rule (or the GRU's reward input) is fed: the env's reward; zeros with zero_reward;
    rule_rewards (steps, B) with it given (the shuffled control). Returns returns (P, k), quarters (P, k, 4),
    episodes (P, k, E) (return of each episode), saturated (P, k) (fraction of action entries with |a| > 0.99),
    the final actor, with keep_rewards the env's rewards (steps, B), with record the states of row 0.

    More than --batch-rows rows run as consecutive groups of individuals, each on the same lifetimes (the generator
    is replayed: every draw here is per lifetime, shared by the individuals), so the numbers do not depend on it."""
    p = 1 if genome is None else genome.shape[0]
    per = max(1, args.batch_rows // k)
    if p > per:
        state, parts = gen.get_state(), []
        for lo in range(0, p, per):
            hi = min(p, lo + per)
            gen.set_state(state)
            parts.append(run_lifetimes(
                args, genome[lo:hi], k, gen, device, plastic=plastic, zero_reward=zero_reward,
                rule_rewards=None if rule_rewards is None else rule_rewards[:, lo * k:hi * k], controller=controller,
                record=record and lo == 0, rule_name=rule_name, actor=None if actor is None else actor.rows(lo * k, hi * k),
                keep_rewards=keep_rewards))
        out = {key: torch.cat([q[key] for q in parts]) for key in ("returns", "quarters", "episodes", "saturated")}
        out["actor"] = Actor.cat([q["actor"] for q in parts]) if isinstance(parts[0]["actor"], Actor) else None
        if keep_rewards:
            out["rewards"] = torch.cat([q["rewards"] for q in parts], dim=1)
        if record:
            out["frames"] = parts[0]["frames"]
        return out
    env = make_env(args)
    shape = args.actor_shape
    B, E = p * k, args.episodes
    start = env.initial_state(k, gen, device)
    env.reset(start.repeat(p, 1))
    rule = None
    if controller is None and actor is None:
        if args.evolve == "actor":
            actor = actor_from_genome(genome, shape, k, args)
        elif args.evolve == "gru":
            actor = GRUActor(genome, shape, args.gru_hidden, k)
        else:
            actor = fresh_actor(shape, k, p, args, gen, device)
    if controller is None and args.evolve == "rule" and plastic:
        rule = RULE_CLASSES[rule_name or args.rule](genome, shape, args, k)
    noisy = isinstance(actor, Actor) and args.sigma_limit > 0
    total = torch.zeros(B, device=device)
    quarters = torch.zeros(B, 4, device=device)
    episodes = torch.zeros(B, E, device=device)
    saturated = torch.zeros(B, device=device)
    frames, rewards = [], []
    for t in range(args.steps):
        if controller is not None:
            action = controller(env)
            trace = None
        else:
            noise = [torch.randn(k, n, generator=gen, device=device) for n in shape[1:]] if noisy else None
            action, trace = actor.forward(env.obs, noise)
        reward = env.step(action)
        total += reward
        quarters[:, 4 * t // args.steps] += reward
        episodes[:, E * t // args.steps] += reward
        saturated += (action.abs() > 0.99).float().mean(dim=1)
        if keep_rewards:
            rewards.append(reward)
        fed = torch.zeros_like(reward) if zero_reward else reward if rule_rewards is None else rule_rewards[t]
        if rule is not None:
            rule.update(actor, trace, fed)
        elif isinstance(actor, GRUActor):
            actor.observe(fed)
        if record:
            frames.append(env.positions()[0].clone())
    out = {"returns": total.view(p, k), "quarters": quarters.view(p, k, 4), "episodes": episodes.view(p, k, E),
           "saturated": (saturated / args.steps).view(p, k), "actor": actor}
    if keep_rewards:
        out["rewards"] = torch.stack(rewards)
    if record:
        out["frames"] = torch.stack(frames).cpu().numpy()
    return out


def shuffle_within_lifetime(rewards: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(steps, B) rewards -> each column's own rewards in a random order (the same values, no contingency)."""
    perm = torch.argsort(torch.rand(rewards.shape, generator=gen, device=rewards.device), dim=0)
    return torch.gather(rewards, 0, perm)


def sanitize_fitness(fitness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN (or +-inf) fitness becomes -inf, the worst; returns (clean fitness, number replaced)."""
    bad = ~torch.isfinite(fitness)
    return torch.where(bad, torch.full_like(fitness, -math.inf), fitness), bad.sum()


def aggregate_fitness(returns: torch.Tensor, how: str) -> torch.Tensor:
    """(P, K) lifetime returns -> (P,) fitness; a NaN lifetime makes the individual NaN."""
    return returns.mean(dim=1) if how == "mean" else returns.min(dim=1).values


def next_generation(pop: torch.Tensor, fitness: torch.Tensor, num_survivors: int, num_elites: int,
                    mutation_probability: float, mutation_strength: float, crossover_rate: float,
                    gen: torch.Generator, elitism: str = "topk") -> tuple[torch.Tensor, torch.Tensor]:
    """Truncation selection + elitism + optional uniform crossover + Gaussian mutation.

    fitness must be finite or -inf (sanitize_fitness). Returns (new population, ranking), where
    ranking sorts the old population best first; with elitism topk, new rows 0..k-1 are the k best
    unchanged. elitism original: rows are the survivors each repeated ceil(P/S) times in rank order,
    and rows < S are left unmutated (the seed's GA)."""
    P, D = pop.shape
    ranking = torch.sort(fitness, descending=True, stable=True).indices
    survivors = pop[ranking[:num_survivors]]
    if elitism == "original":
        children = survivors.repeat_interleave(-(-P // num_survivors), dim=0)[:P].clone()
        keep = num_survivors
    else:
        n_child = P - num_elites
        children = survivors[torch.randint(0, num_survivors, (n_child,), generator=gen, device=pop.device)]
        if crossover_rate > 0:
            mates = survivors[torch.randint(0, num_survivors, (n_child,), generator=gen, device=pop.device)]
            crossing = torch.rand(n_child, 1, generator=gen, device=pop.device) < crossover_rate
            genes = torch.rand(n_child, D, generator=gen, device=pop.device) < 0.5
            children = torch.where(crossing & genes, mates, children)
        children = torch.cat([survivors[:num_elites], children], dim=0)
        keep = num_elites
    tail = children[keep:]
    mask = torch.rand(tail.shape, generator=gen, device=pop.device) < mutation_probability
    noise = torch.randn(tail.shape, generator=gen, device=pop.device) * mutation_strength
    tail += torch.where(mask, noise, torch.zeros_like(noise))
    return children, ranking


def es_population(mean: torch.Tensor, sigma: float, P: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenAI-ES (Salimans et al. 2017) search points: P/2 antithetic pairs mean +- sigma eps. Returns (pop, eps)."""
    eps = torch.randn(P // 2, mean.shape[0], generator=gen, device=mean.device)
    return torch.cat([mean + sigma * eps, mean - sigma * eps]), eps


def es_step(mean: torch.Tensor, eps: torch.Tensor, fitness: torch.Tensor, sigma: float, lr: float) -> torch.Tensor:
    """One OpenAI-ES step: centred ranks u in [-0.5, 0.5] (ties by order, -inf last), gradient estimate
    g = sum_i (u_i+ - u_i-) eps_i / (P sigma), mean + lr g (plain SGD)."""
    P = fitness.shape[0]
    ranks = torch.empty_like(fitness)
    ranks[torch.sort(fitness, stable=True).indices] = torch.arange(P, dtype=fitness.dtype, device=fitness.device)
    u = ranks / max(P - 1, 1) - 0.5
    grad = (u[:P // 2] - u[P // 2:]) @ eps / (P * sigma)
    return mean + lr * grad


def quarter_stats(res: dict) -> dict:
    """Mean and std over lifetimes of the whole-lifetime return and its first and last quarters (row 0), and
    the mean return of each episode (the within-lifetime learning curve)."""
    r, q = res["returns"][0], res["quarters"][0]
    stats = {}
    for name, v in (("return", r), ("first_quarter", q[:, 0]), ("last_quarter", q[:, 3])):
        stats[name], stats[name + "_std"] = float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0
    if "episodes" in res:
        stats["episodes"] = res["episodes"][0].mean(0).tolist()
    return stats


def rule_controls(args: Args, genome: torch.Tensor, device, prefix: str = "", rule_name: Optional[str] = None) -> dict:
    """One individual (genome (1, D)) on args.eval_lifetimes unseen lifetimes and its controls, every one on the
    same lifetimes: the individual; reward zeroed; reward shuffled within each lifetime (the individual's own
    rewards of the first run, in a random order: the same values without their contingency); and for a rule
    plasticity off (the fresh actor, never updated) and the frozen final weights (each lifetime's learned
    weights, no more updates) on fresh layouts and on the same layouts. Keys get prefix."""
    k = args.eval_lifetimes
    fresh = lambda: lifetime_generator(args.seed, -1, device)
    run = lambda gen=None, **kw: run_lifetimes(args, genome, k, gen or fresh(), device, rule_name=rule_name, **kw)
    first = run(keep_rewards=True)
    out = {prefix + "best": quarter_stats(first), prefix + "reward_zeroed": quarter_stats(run(zero_reward=True))}
    shuffled = shuffle_within_lifetime(first["rewards"],
                                       torch.Generator(device=device).manual_seed(args.seed + 777))
    out[prefix + "reward_shuffled"] = quarter_stats(run(rule_rewards=shuffled))
    if args.evolve == "rule":
        out[prefix + "plasticity_off"] = quarter_stats(run(plastic=False))
        learned = first["actor"]
        out[prefix + "frozen_fresh"] = quarter_stats(run(lifetime_generator(args.seed, -3, device), plastic=False,
                                                         actor=learned))
        out[prefix + "frozen_same"] = quarter_stats(run(plastic=False, actor=learned))
    return out


def hand_rule_args(args: Args) -> Args:
    """The hand-set node-perturbation rule's run: a fresh noisy actor (sigma = --hand-sigma) under --rule nodepert."""
    return dataclasses.replace(args, evolve="rule", sigma_init=args.hand_sigma, sigma_limit=args.hand_sigma)


def heldout_controls(args: Args, best: torch.Tensor, device) -> dict:
    """The best genome and the controls on args.eval_lifetimes unseen random layouts (same for every control)."""
    k = args.eval_lifetimes
    hargs = dataclasses.replace(args, food_layout="random")
    fresh = lambda: lifetime_generator(args.seed, -1, device)
    if args.evolve in ("rule", "gru"):
        out = rule_controls(hargs, best[None], device)
    else:
        out = {"best": quarter_stats(run_lifetimes(hargs, best[None], k, fresh(), device))}
    if args.evolve == "rule":
        rand_gen = torch.Generator(device=device).manual_seed(args.seed + 12345)
        random_rules = torch.randn(k, args.genome_size, generator=rand_gen, device=device) * args.init_std
        res = run_lifetimes(hargs, random_rules, k, fresh(), device)      # random rule i on lifetime i
        diag = torch.arange(k, device=device)
        out["random_rule"] = quarter_stats({"returns": res["returns"][diag, diag][None],
                                            "quarters": res["quarters"][diag, diag][None],
                                            "episodes": res["episodes"][diag, diag][None]})
    if args.env == "hiddenfood":
        out.update(rule_controls(hand_rule_args(hargs), torch.zeros(1, 0, device=device), device, "hand_rule/",
                                 "nodepert"))
        out["oracle"] = quarter_stats(run_lifetimes(hargs, None, k, fresh(), device, controller=hidden_food_oracle))
    if args.env == "foodworld":
        out["push_toward_food"] = quarter_stats(run_lifetimes(hargs, None, k, fresh(), device,
                                                              controller=lambda env: push_toward_food(env.obs)))
    out["zero_action"] = quarter_stats(run_lifetimes(hargs, None, k, fresh(), device,
                                                     controller=lambda env: torch.zeros(env.obs.shape[0],
                                                                                        args.actor_shape[-1],
                                                                                        device=device)))
    return out


def pick_champion(args: Args, candidates: torch.Tensor, device) -> tuple[torch.Tensor, list]:
    """The top k of the final generation (rows of candidates, best first by their last fitness), each
    re-evaluated on args.eval_lifetimes fresh validation lifetimes (neither training nor held-out): the
    champion is the best there, not the luckiest of the last generation. Returns (champion (D,), the scores)."""
    res = run_lifetimes(dataclasses.replace(args, food_layout="random"), candidates, args.eval_lifetimes,
                        lifetime_generator(args.seed, -2, device), device)
    score, _ = sanitize_fitness(res["returns"].mean(dim=1))
    return candidates[int(torch.argmax(score))], score.tolist()


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
# Plots and the GIF
# ==================================================================================================
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fitness(rows: list[dict], title: str, path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    gens = [r["generation"] for r in rows]
    for key, label in (("fitness/best", "best"), ("fitness/elite_mean", "elite mean"),
                       ("fitness/mean", "population mean")):
        ax.plot(gens, [r[key] for r in rows], label=label)
    ax.set(xlabel="generation", ylabel="fitness (lifetime return)", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_trajectory(frames: np.ndarray, title: str, path: str) -> None:
    """The path in the plane with the foods it was chasing (frames: [x, y, food_x, food_y, foods eaten] per step)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(frames[:, 0], frames[:, 1], c=np.arange(len(frames)), cmap="viridis", s=6, label="agent")
    foods = np.unique(frames[:, 2:4].round(5), axis=0)
    ax.scatter(foods[:, 0], foods[:, 1], marker="*", s=120, c="red", label="food")
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls=":", color="gray"))
    ax.set(xlim=(-2.1, 2.1), ylim=(-2.1, 2.1), aspect="equal", xlabel="x", ylabel="y")
    ax.set_title(f"{title}\nfoods eaten: {int(frames[-1, 4])}", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_gif(frames: np.ndarray, stride: int, path: str) -> None:
    """Animated GIF of one lifetime (matplotlib's Pillow writer), standing in for the seed's OpenCV viewer."""
    plt = pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig, ax = plt.subplots(figsize=(4, 4))
    lim = 2.1
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    (line,) = ax.plot([], [], "-o", lw=2)
    (food,) = ax.plot([], [], "r*", ms=14)
    text = ax.text(-lim * 0.95, lim * 0.85, "")

    def draw(i):
        f = frames[i]
        line.set_data(frames[max(0, i - 20):i + 1, 0], frames[max(0, i - 20):i + 1, 1])
        food.set_data([f[2]], [f[3]])
        text.set_text(f"step {i}  foods {int(f[4])}")
        return line, food, text

    anim = FuncAnimation(fig, draw, frames=range(0, len(frames), stride), blit=True)
    anim.save(path, writer=PillowWriter(fps=20))
    plt.close(fig)


# ==================================================================================================
# Stages
# ==================================================================================================
def evaluate_generation(args: Args, pop: torch.Tensor, g: int, device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Generation g's lifetimes for the whole population: (sanitised fitness (P,), ranking best first,
    the metrics row). NaN fitness is the worst and is counted in fitness/nan_count."""
    P, K = pop.shape[0], args.evals_per_gen
    ind_steps = P * K * args.steps
    t0, c0 = time.time(), time.process_time()
    res = run_lifetimes(args, pop, K, lifetime_generator(args.seed, g, device), device)
    fitness, n_bad = sanitize_fitness(aggregate_fitness(res["returns"], args.fitness_agg))
    order = torch.sort(fitness, descending=True, stable=True).indices
    elites = order[:max(args.num_elites, 1)]
    top = order[0]
    stats = torch.stack([fitness[top], fitness[torch.isfinite(fitness)].mean(), fitness[elites].mean(),
                         fitness[torch.isfinite(fitness)].median(), n_bad.float(),
                         res["quarters"][top, :, 0].mean(), res["quarters"][top, :, 3].mean(),
                         res["saturated"].mean()]).tolist()             # the one host sync per generation
    dt_gen, cpu_gen = time.time() - t0, time.process_time() - c0
    best, mean, elite, median, n_nan, q1, q4, sat = stats
    row = {"fitness/best": best, "fitness/mean": mean, "fitness/elite_mean": elite, "fitness/median": median,
           "fitness/nan_count": int(n_nan), "fitness/best_first_quarter": q1, "fitness/best_last_quarter": q4,
           "diag/saturated_action_frac": sat, "time/individual_steps_per_s": ind_steps / dt_gen,
           "time/individual_steps_per_cpu_s": ind_steps / max(cpu_gen, 1e-9), "time/generation_s": dt_gen}
    return fitness, order, row


def save_best(args: Args, run_dir: str, g: int, fitness: float, genome: torch.Tensor) -> None:
    """best/genNNNN.json: the generation's best genome, its fitness and every argument (loadable by --show)."""
    write_json(os.path.join(run_dir, "best", f"gen{g:04d}.json"),
               {"generation": g, "fitness": fitness, "genome": genome.tolist(), "args": vars(args)})


def final_controls(args: Args, final_best: torch.Tensor, generations_done: int, run_dir: str, device) -> dict:
    """The champion (the best of the final top k re-evaluated, pick_champion) and the controls on unseen layouts, and its
    trajectory on one unseen layout (trajectory.png); returns the summary entries."""
    controls = heldout_controls(args, final_best, device)
    rec = run_lifetimes(dataclasses.replace(args, food_layout="random"), final_best[None], 1,
                        lifetime_generator(args.seed, -1, device), device, record=True)
    plot_trajectory(rec["frames"], f"champion of generation {generations_done - 1}, unseen layout",
                    os.path.join(run_dir, "trajectory.png"))
    line = "  ".join(f"{k} {v['return']:.3f}" for k, v in controls.items())
    print(f"held-out ({args.eval_lifetimes} lifetimes): {line}")
    best_q = controls["best"]
    print(f"  evolved individual, first / last quarter: {best_q['first_quarter']:.3f} / {best_q['last_quarter']:.3f}")
    return {"heldout": controls, "heldout_lifetimes": args.eval_lifetimes}


@torch.inference_mode()                          # no autograd anywhere: a GA needs no gradients
def train(args: Args, log: RunLog) -> dict:
    """The GA: args.generations generations of evaluation, logging (one row per generation), the
    generation's best saved to best/, selection and mutation; then the held-out controls and the plots
    in log.run_dir. Returns the summary; its status says why a run stopped early."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)
    run_dir = log.run_dir
    os.makedirs(os.path.join(run_dir, "best"))
    rss_start = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ga_gen = torch.Generator(device=device).manual_seed(args.seed)
    P, K = args.population_size, args.evals_per_gen
    pop = torch.randn(P, args.genome_size, generator=ga_gen, device=device).mul_(args.init_std)   # no second copy
    if args.optimizer == "es":
        mean = torch.zeros(args.genome_size, device=device)      # a zero rule makes no change: ES starts at no learning
        pop, eps = es_population(mean, args.es_sigma, P, ga_gen)
    rows, status, best_ever = [], "ok", (-math.inf, -1)
    ind_steps = P * K * args.steps
    start_time, eval_time, eval_cpu = time.time(), 0.0, 0.0
    for g in range(args.generations):
        c0 = time.process_time()
        fitness, order, row = evaluate_generation(args, pop, g, device)
        eval_time, eval_cpu = eval_time + row["time/generation_s"], eval_cpu + time.process_time() - c0
        rows.append({"generation": g, **row})
        log.log(g, row)
        best, n_nan = row["fitness/best"], row["fitness/nan_count"]
        save_best(args, run_dir, g, best, pop[order[0]])
        if best > best_ever[0]:
            best_ever = (best, g)
        print(f"gen {g:4d}  best {best:9.3f}  elite {row['fitness/elite_mean']:9.3f}  mean {row['fitness/mean']:9.3f}  "
              f"nan {n_nan}  {row['time/individual_steps_per_s']:,.0f} individual-steps/s", flush=True)
        if n_nan == P:
            status = f"every individual had a non-finite fitness at generation {g}"
            break
        if g + 1 < args.generations and args.optimizer == "es":
            mean = es_step(mean, eps, fitness, args.es_sigma, args.es_lr)
            pop, eps = es_population(mean, args.es_sigma, P, ga_gen)
        elif g + 1 < args.generations:
            pop, _ = next_generation(pop, fitness, args.num_survivors, args.num_elites, args.mutation_probability,
                                     args.mutation_strength, args.crossover_rate, ga_gen, args.elitism)

    summary = {"status": status, "env": args.env, "evolve": args.evolve, "rule": args.rule, "seed": args.seed,
               "food_layout": args.food_layout, "population_size": P, "genome_size": args.genome_size,
               "generations_done": len(rows), "wall_time_s": time.time() - start_time,
               "individual_steps_per_s": ind_steps * len(rows) / max(eval_time, 1e-9),
               "individual_steps_per_cpu_s": ind_steps * len(rows) / max(eval_cpu, 1e-9),
               "rss_start_mb": rss_start, "peak_rss_mb": peak_rss_mb(),
               "peak_rss_above_start_mb": peak_rss_mb() - rss_start}
    summary["bytes_per_individual"] = summary["peak_rss_above_start_mb"] * 2**20 / (P * K)
    if device.type == "cuda":
        summary["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if rows:
        last = rows[-1]
        summary.update({"final_best_fitness": last["fitness/best"], "final_elite_mean": last["fitness/elite_mean"],
                        "final_mean_fitness": last["fitness/mean"], "first_best_fitness": rows[0]["fitness/best"],
                        "best_fitness_ever": best_ever[0], "best_generation": best_ever[1]})
        what = "actor" if args.evolve == "actor" else f"rule {args.rule}"
        plot_fitness(rows, f"{log.run_name}\n{args.env}, evolving the {what}", os.path.join(run_dir, "fitness.png"))
    if status == "ok":
        candidates = pop[order[:args.reeval_top]]
        if args.optimizer == "es":
            candidates = torch.cat([mean[None], candidates])
        champion, scores = pick_champion(args, candidates, device)
        summary.update({"champion_validation_returns": scores, "champion_rank": int(np.argmax(scores))})
        summary.update(final_controls(args, champion, len(rows), run_dir, device))
        bad = [name for name, q in summary["heldout"].items() if not math.isfinite(q["return"])]
        if bad:
            summary["status"] = f"non-finite held-out return ({', '.join(bad)})"
    print(f"{log.run_name}: final best {summary.get('final_best_fitness')}, {summary['individual_steps_per_s']:,.0f} "
          f"individual-steps/s, {summary['wall_time_s']:.1f} s -> {run_dir}")
    return summary


@torch.inference_mode()
def show(args: Args, log: RunLog) -> dict:
    """--show: replay a saved individual for one lifetime (layout from --seed and --food-layout; its
    structure was taken from the file by finalize_args): show.gif and trajectory.png in log.run_dir."""
    torch.set_num_threads(args.torch_threads)
    saved = load_saved_individual(args.show)
    device = pick_device(args.cuda)
    genome = torch.tensor(saved["genome"], dtype=torch.float32, device=device)[None]
    res = run_lifetimes(args, genome, 1, lifetime_generator(args.seed, -1, device), device, record=True)
    frames = res["frames"]
    what = "actor" if args.evolve == "actor" else f"rule {args.rule}"
    title = f"{os.path.basename(args.show)} ({args.env}, {what})"
    write_gif(frames, args.gif_stride, os.path.join(log.run_dir, "show.gif"))
    plot_trajectory(frames, title, os.path.join(log.run_dir, "trajectory.png"))
    summary = {"status": "ok", "show": args.show, "saved_fitness": saved["fitness"], **quarter_stats(res)}
    summary["foods_eaten"] = int(frames[-1, 4])
    if not math.isfinite(summary["return"]):
        summary["status"] = "non-finite return of the replayed lifetime"
    print(f"{log.run_name}: return {summary['return']:.3f} -> {log.run_dir}/show.gif")
    return summary


if __name__ == "__main__":
    args = parse_args("ga_learning_rule.py", Args, finalize_args)
    if args.show is not None:                    # a replay: its own run folder, x-axis the lifetime's step
        sys.exit(run_experiment("ga_learning_rule.py", args, show, x_axis="step"))
    sys.exit(run_experiment("ga_learning_rule.py", args, train, x_axis="generation"))
