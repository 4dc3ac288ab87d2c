"""gist_meta.py: gist tokens as a semantic-space loss, learned in situ by second-order meta-gradients.

Question (seed 004, METALEARN plans 2 and 3): can a language model learn from a loss it produces
itself in a compressed "semantic" space, the space of gist tokens (Mu, Li & Goodman 2023), instead
of token cross-entropy? And can the gist parameters that define that loss be learned in situ, by
backpropagating the true validation CE through an inner update? The seed has no code for either
plan; every numeric choice below is ours. Three stages, --stage a|b|c|all:

A. Gist compression (the bottleneck). A sequence is [context c (Lc) | k gist tokens G | continuation
   x (Lx)], k = --num-gist-tokens; G is one new vocabulary entry <gist> repeated k times, its
   embedding row initialised to the mean of the other rows. Gist mask, as an additive float
   (B, 1, T, T) mask (0 = may attend, finfo.min = may not) added to the attention scores:
       allowed(q, j) = j <= q  AND  NOT (q >= Lc + k AND j < Lc)
   i.e. causal everywhere, and nothing after the last gist sees the context: the continuation
   reaches c only through the gist positions' activations. Controls, same sequence and positions:
       full:  allowed = j <= q                              (no bottleneck; upper bound)
       none:  allowed = j <= q AND NOT (q >= Lc AND j < Lc)  (ours: the gists do not see c either)
       neg:   allowed = j <= q AND NOT (q >= Lc+k AND j < Lc+k)  (Mu et al.'s negative control: the
              gists see c, nothing after them sees the gists or c)
   (gist, neg and full agree entry by entry with Mu et al.'s make_gist_mask, make_neg_control_mask
   and make_pos_control_mask, each AND causal.) Scored: x_2..x_Lx only (x_i predicted by x_{i-1});
   x_1 is input, never scored, because the position that predicts it is the last gist, which sees
   the context directly (Mu et al. never score it either). Loss: CE on the scored tokens plus, with
   --a-context-loss True (default), LM CE on the context tokens, so that the gist model stays a plain
   causal LM for stages B and C. Report: scored CE on validation text per mask, the positive-control
   gap CE_none - CE_full, and the gist retention
       R = (CE_none - CE_gist) / (CE_none - CE_full)       (1: gists keep everything, 0: nothing),
   also against neg. --corpus repeat | letters | kv: synthetic text in which the context decides
   the continuation (a random P-letter string repeated per line; each line uniform over its own S
   of 62 symbols; each line a random map of m lowercase keys to uppercase values, written as pairs).
B. Self-produced semantic loss (plan 2), starting from stage A's gist model f_theta. On a chunk
   s = (s_0..s_L) the LM predicts s_1..s_L teacher-forced; its prediction is made differentiable as
   soft embeddings  s^_i = softmax(logits_i / tau) @ E   (B, L, d)  (E: the encoding model's input
   embedding matrix, <gist> excluded; tau = --soft-temperature). We chose soft embeddings over
   REINFORCE: exact gradients, no variance, one extra matmul. The gist code of a span u is the
   final-layer hidden state at k gist tokens appended to it, z(u) = H([u | G])[-k:]  (B, k, d).
       L_B = mean_{b,k} (1 - cos(c(z_enc(s^)), c(sg z_tgt(E_tgt[s_1..s_L]))))
   c(z) = z - mean_batch z with --b-center True (default; the common code is removed), sg = stop-gradient.
   The ground-truth code comes from a target copy (--b-target frozen: copied at the start of B;
   ema: theta_tgt <- d theta_tgt + (1-d) theta after each step, d = --b-ema). The prediction is
   encoded by the live model (--b-pred-encoder online, JEPA-like) or by the target copy (target:
   gradient reaches theta only through the predicted distribution). Report: validation CE after
   --b-steps updates with L_B, with true CE, and with no update; collapse diagnostics = mean pairwise
   cosine of the raw codes across the batch and the effective rank of the centred codes; the cosine
   between the gradients of L_B and of true CE on the same batch.
C. In-situ second-order learning of the gist (plan 3). Gist parameters phi = {k gist vectors
   (init: stage A's <gist> row), optional projection P (d x d, init I, --gist-proj), optional
   log-scale s (init 0, --learn-loss-scale)}:
       L_gist(theta, phi; s) = e^s * mean_{b,k} (1 - cos(P z_phi(s^), P z_phi([s^ ; E[s_1..s_L]])))
   (the gist of the model's own output against the gist of its own output followed by the truth;
   bounded in [0, 2 e^s], so it cannot drift negative like the seed's scalar learned loss). With
   --c-stopgrad-target True (default) z_both is computed from theta detached: theta can only move
   its own code towards the truth's, not the truth's code; z_both still depends on phi. It is
   computed by continuing a detached copy of z_own's cached s^ prefix with s (no graph) and putting
   the k gists on top: L + k positions instead of 2L + k, and a backward over k.
       inner:  theta' = theta - alpha * grad_theta L_gist(theta, phi)     on a training chunk
       outer:  L_out  = CE(theta'; validation chunk)     dL_out/dphi (and dL_out/dtheta with
               --meta-theta True) through the inner step, torch.func.functional_call +
               autograd.grad(create_graph=True); Adam on phi with --meta-lr.
   --val-select next: the validation chunk is the one right after the training chunk; similar: the
   bank chunk (--bank-size random training chunks, re-embedded every --bank-refresh steps) with the
   highest cosine similarity of its gist code (--sim-repr gist) or mean-pooled hidden state (mean)
   to the training chunk, chunks overlapping it excluded.
   --first-order True (the default; False: the exact second order, by double backward): no double
   backward. The exact phi-gradient is -alpha * d/dphi (v . grad_theta
   L_gist), v = grad CE(theta'); we take it by a forward difference (the DARTS approximation):
       dL_out/dphi ~ -alpha (grad_phi L_gist(theta + eps v) - grad_phi L_gist(theta)) / eps,
   eps = --fd-eps / |v|; theta (with --meta-theta) gets v itself (first-order MAML).
   This episodic phase (theta restored after every meta step) is phi's pre-training. Report (on
   validation text never trained on): K = --eval-inner-steps SGD steps (lr alpha) on K consecutive
   chunks with each update rule, then CE on the next chunk: learned L_gist, the fixed gist loss
   (phi at its init), stage B's loss (frozen target = the start model), true CE, none.
   Online phase (plan 3 as written, "learn indefinitely"): on a stream of N = --c-online-steps + 1
   consecutive validation chunks, theta KEEPS every step theta_{t+1} = theta_t - alpha grad L(chunk t);
   rule gist_meta: L = L_gist(phi_t) and phi takes one Adam step on CE(theta_{t+1}; chunk t+1)
   through that step; gist_fixed: phi frozen; stage_b; ce; none. Reported: the CE of every chunk
   under theta before it learns from it (prequential), averaged over the whole stream.

Model: a Llama-style causal LM built from a config with Hugging Face transformers (1.0M parameters
at the defaults), or a local checkpoint (--model-name-or-path), always with eager attention, since
SDPA has no double backward; one <gist> token is added to the vocabulary. Data: pydoc_data.topics
by default (offline), or --text-path / --hf-dataset; byte tokenizer by default, or BPE / pretrained.

Run:      python gist_meta.py                     (all stages)
          python gist_meta.py --stage c --val-select similar --first-order False   (exact second order)
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: step = optimizer/meta steps of all
          stages in order, each row has "stage"), summary.json, stage_a.png, stage_b.png,
          stage_c.png, stage_c_online.png, tokenizer.json (BPE); summary.json's "status" is ok, a non-finite loss (the
          run stops, every row kept), interrupted (SIGINT/SIGTERM) or failed (traceback.txt)
Code:     finalize_args checks every argument and input file before a run folder exists; train
          runs stage_a, stage_b, stage_c, evaluate_stage_c and online_phase in that order
Cost:     a meta step = 6.4-6.7x (second order) and 5.6-5.9x (first order) one CE forward+backward at
          the defaults, one thread (benchmark/gist_meta_speed.py; docs/gist_meta.md, "Speed").
Runtime:  the defaults (4 stage-A masks, B, C, a 100-step online stream; 1.0M parameters, pydoc text) took
          6.9 min wall / 412 s CPU on one thread of the shared 2-core VM (another job on the other core).
          On this text the positive control fails (gap 0.08 nats) and the run says so.
Result:   docs/gist_meta.md, "Results" (issue-13 runs: 0.14M params, synthetic corpora, 3-6 seeds). Retention
          on --corpus repeat at 1000 steps: 0.99 with 4 gists for P = 4, 0.21 for P = 8 (half the seeds at
          zero), 0.00 with 1 gist for P >= 8 (benchmark/gist_meta_issue13_curve.sh); one gist keeps 0.82 of a line's
          alphabet (--corpus letters). The semantic loss raises CE; the meta-learned gist loss does not
          change the online stream's CE (true CE lowers it).
"""

import copy
import functools
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.func import functional_call


@dataclass
class Args:
    # ---- infrastructure ----
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of the experiment; the run folder is runs/{exp_name}__{seed}__{unix time}"""
    seed: int = 1
    """seed of python, numpy and torch (init, data order)"""
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

    # ---- data, tokenizer, model (field names shared with self_critic_lm.py's copied blocks) ----
    text_path: Optional[str] = None
    """train on this UTF-8 text file instead of the default corpus (pydoc_data.topics)"""
    hf_dataset: Optional[str] = None
    """Hugging Face dataset NAME or NAME:CONFIG (split 'train', column 'text'); needs `datasets` and a local cache"""
    val_fraction: float = 0.1
    """last fraction of the text (in characters) held out for validation (every reported CE is on it)"""
    corpus: str = "text"
    """text (pydoc_data.topics, --text-path or --hf-dataset), or a synthetic corpus in which the context decides the continuation: repeat, letters, kv"""
    repeat_period: int = 8
    """P of --corpus repeat: each line is one random P-letter string (a-z) repeated"""
    letters_support: int = 6
    """S of --corpus letters: each line draws every character uniformly from its own random S of 62 symbols (a-z, A-Z, 0-9)"""
    kv_keys: int = 4
    """m of --corpus kv: each line is a random map of m lowercase keys to uppercase values, written as key-value pairs of keys drawn at random"""
    kv_value_len: int = 1
    """V of --corpus kv: each value is a string of V uppercase letters (a pair is V + 1 characters)"""
    synth_line_len: int = 512
    """characters per line of a synthetic corpus (a newline ends each line)"""
    synth_chars: int = 3_000_000
    """characters of a synthetic corpus (train + validation); 3M so that a few hundred stage-A steps do not overfit it (at 300k the none control's validation CE rose with training)"""
    corpus_seed: int = 0
    """seed of the synthetic corpus (fixed across --seed, so every seed sees the same text)"""
    tokenizer: str = "byte"
    """byte (256 byte ids + <gist>), bpe (byte-level BPE trained on the train split), or a tokenizer.json / pretrained tokenizer folder"""
    vocab_size: int = 512
    """BPE vocabulary size including the special tokens (--tokenizer bpe only)"""
    model_name_or_path: Optional[str] = None
    """local pretrained causal LM folder (from_pretrained); None builds the Llama-style model below from scratch"""
    n_embd: int = 128
    """hidden size d of the from-scratch model (SwiGLU width 4d)"""
    n_layer: int = 4
    """transformer blocks of the from-scratch model"""
    n_head: int = 4
    """query heads of the from-scratch model"""
    n_kv_head: int = 2
    """key/value heads (grouped-query attention); must divide --n-head"""
    torch_threads: int = 1
    """torch CPU threads; on a shared 2-core machine one is fastest"""
    stage: str = "all"
    """a (gist compression), b (semantic loss), c (meta-learned gist loss) or all; b and c start from stage A's gist model and train it first"""

    # ---- stage A: gist compression ----
    num_gist_tokens: int = 4
    """k: gist tokens between context and continuation"""
    context_len: int = 64
    """Lc: context tokens before the gists (also the chunk length of stage B)"""
    cont_len: int = 8
    """Lx: continuation tokens after the gists (x_2..x_Lx are scored; x_1 is input only)"""
    a_modes: tuple[str, ...] = ("gist", "full", "none", "neg")
    """attention masks to train in stage A, one model each from the same init (gist is always trained when b or c runs): gist, full (positive control), none (our negative control: nothing from the gists on sees the context), neg (Mu et al.'s negative control: the gists see the context, nothing after them sees the gists or the context)"""
    a_steps: Optional[int] = None
    """AdamW steps per stage-A model; None = the corpus's default (A_STEPS: 300 on text and repeat, 1000 on letters and kv, whose positive controls need about 1000 steps to reach 1 nat; docs/gist_meta.md)"""
    a_lr: float = 3e-3
    """AdamW learning rate of stage A (cosine decay to 10%)"""
    a_head_tokens: int = 4
    """also report the CE of the first this many scored continuation tokens (x_2.., where the context matters most)"""
    a_min_gap: float = 0.5
    """the positive-control gap CE_none - CE_full (nats/token) below which retention is not reported (None, with the raw ratio as a_retention_unchecked): the full model does not use the context, so nothing can be retained"""
    a_context_loss: bool = True
    """also train plain LM CE on the context tokens (keeps the gist model a causal LM for B and C)"""
    batch_size: int = 16
    """sequences per step in stages A and B"""
    weight_decay: float = 0.01
    """AdamW weight decay (stages A and B)"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip (stages A and B)"""
    eval_every: int = 100
    """evaluate validation CE every this many steps (stages A and B)"""
    eval_batches: int = 8
    """validation batches (of --batch-size sequences, fixed offsets) per evaluation"""

    # ---- stage B: self-produced semantic loss ----
    b_steps: int = 100
    """N: updates of each stage-B run"""
    b_lr: float = 1e-3
    """AdamW learning rate of stage B (constant)"""
    b_losses: tuple[str, ...] = ("gist", "ce", "none")
    """stage-B runs from the same start model: gist (L_B), ce (true CE, upper bound), none (no update)"""
    b_target: str = "frozen"
    """ground-truth gist encoder: frozen (copy at the start of B) or ema"""
    b_ema: float = 0.99
    """d in theta_tgt <- d theta_tgt + (1-d) theta (--b-target ema)"""
    b_pred_encoder: str = "online"
    """encoder of the predicted continuation: online (live model, JEPA-like) or target (the target copy)"""
    b_center: bool = True
    """subtract each code's batch mean (per gist slot) before the cosine distance of L_B (against collapse to a common code)"""
    soft_temperature: float = 1.0
    """tau in softmax(logits / tau) @ E for the soft predicted embeddings"""

    # ---- stage C: in-situ second-order meta-learning of the gist ----
    c_steps: int = 100
    """meta steps"""
    meta_lr: float = 3e-3
    """Adam learning rate of phi (and theta with --meta-theta)"""
    inner_lr: float = 0.03
    """alpha: SGD learning rate of the inner step (and of the K evaluation steps)"""
    c_chunk_len: int = 32
    """L: tokens per training / validation chunk in stage C (the gist reads 2L + k positions)"""
    meta_batch_size: int = 8
    """chunks per meta step and per evaluation step"""
    val_select: str = "next"
    """outer-loss chunk: next (the chunk after the training chunk) or similar (most similar bank chunk)"""
    sim_repr: str = "gist"
    """similarity representation for --val-select similar: gist (mean gist code) or mean (mean-pooled last hidden state)"""
    bank_size: int = 128
    """candidate validation chunks for --val-select similar (random training-split chunks)"""
    bank_refresh: int = 25
    """re-embed the bank every this many meta steps"""
    first_order: bool = True
    """forward-difference Hessian-vector product, no double backward (the default: 0.80x the cost of --first-order False, the exact second order)"""
    fd_eps: float = 0.01
    """eps * |v| of the forward difference (--first-order True)"""
    c_stopgrad_target: bool = True
    """stop-gradient on theta in the truth side z_both of L_gist (it still depends on phi); False: the model may lower L_gist by moving z_both"""
    meta_theta: bool = False
    """also meta-update the model weights theta with the outer gradient (MAML-style)"""
    gist_proj: bool = True
    """phi includes a d x d projection P (init identity) applied to the gist codes"""
    learn_loss_scale: bool = True
    """phi includes a log-scale s of L_gist (init 0); lets meta-learning set the step size, or switch the loss off"""
    eval_inner_steps: int = 5
    """K: inner SGD steps per evaluation episode"""
    c_eval_episodes: int = 8
    """evaluation episodes (validation text), identical for every update rule"""
    c_online_steps: int = 100
    """N of the online phase (plan 3): theta keeps every one of N SGD steps on a stream of consecutive validation chunks"""
    c_online_rules: tuple[str, ...] = ("gist_meta", "gist_fixed", "stage_b", "ce", "none")
    """update rules of the online phase on the same stream: gist_meta (L_gist, phi takes an outer step after every inner step), gist_fixed (L_gist, phi frozen at stage C's result), stage_b, ce, none"""

    # ---- derived at runtime ----
    gist_id: tyro.conf.Suppress[int] = -1
    """vocabulary id of <gist>"""
    n_vocab: tyro.conf.Suppress[int] = 0
    """ids the model embeds (tokenizer vocabulary including <gist>)"""
    n_positions: tyro.conf.Suppress[int] = 0
    """positions the run needs: max(Lc + k + Lx, 2L + k)"""
    run_stages: tyro.conf.Suppress[tuple[str, ...]] = ()
    """stages that run, in order"""
    a_run_modes: tyro.conf.Suppress[tuple[str, ...]] = ()
    """stage-A masks that run (gist first)"""


STAGES = ("a", "b", "c", "all")
MASK_MODES = ("gist", "full", "none", "neg")
CORPORA = ("text", "repeat", "letters", "kv")
# stage-A steps per model where --a-steps is not given: the positive-control gap CE_none - CE_full of
# letters and kv reaches 1 nat at about 1000 steps (a 300-step run of the 1.0M model: 0.58 nats on both),
# that of repeat at 300 (docs/gist_meta.md, "Positive control per corpus")
A_STEPS = {"text": 300, "repeat": 300, "letters": 1000, "kv": 1000}
ONLINE_RULES = ("gist_meta", "gist_fixed", "stage_b", "ce", "none")
B_LOSSES = ("gist", "ce", "none")
VAL_SELECT = ("next", "similar")
SIM_REPR = ("gist", "mean")
EVAL_RULES = ("learned", "fixed", "stage_b", "ce", "none")
GIST = "<gist>"


def check_args(args: Args) -> Args:
    """Check every argument on its own (no file is read) and fill the derived fields; a ValueError
    carries a one-line reason."""
    choices = {"stage": STAGES, "corpus": CORPORA, "val_select": VAL_SELECT, "sim_repr": SIM_REPR,
               "b_target": ("frozen", "ema"), "b_pred_encoder": ("online", "target")}
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(args, name)!r}; choose one of {', '.join(allowed)}")
    for name, allowed in (("a_modes", MASK_MODES), ("b_losses", B_LOSSES), ("c_online_rules", ONLINE_RULES)):
        bad = [m for m in getattr(args, name) if m not in allowed]
        if bad or not getattr(args, name):
            raise ValueError(f"unknown --{name.replace('_', '-')} {bad or '(empty)'}; choose from {', '.join(allowed)}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must lie in [0, 2**32), got {args.seed}")
    if args.num_gist_tokens < 1:
        raise ValueError(f"--num-gist-tokens (k) must be at least 1, got {args.num_gist_tokens}")
    for name in ("context_len", "cont_len", "c_chunk_len"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2, got {getattr(args, name)}")
    if not 1 <= args.a_head_tokens <= args.cont_len - 1:
        raise ValueError(f"--a-head-tokens must lie in [1, --cont-len - 1] (x_1 is not scored), got {args.a_head_tokens}")
    if args.corpus != "text" and (args.text_path is not None or args.hf_dataset is not None):
        raise ValueError(f"--corpus {args.corpus} is synthetic; --text-path and --hf-dataset need --corpus text")
    if not 1 <= args.repeat_period <= 1000:
        raise ValueError(f"--repeat-period must lie in [1, 1000], got {args.repeat_period}")
    if not 1 <= args.letters_support <= 62:
        raise ValueError(f"--letters-support must lie in [1, 62], got {args.letters_support}")
    if not 1 <= args.kv_keys <= 26:
        raise ValueError(f"--kv-keys must lie in [1, 26], got {args.kv_keys}")
    if not 1 <= args.kv_value_len <= 16:
        raise ValueError(f"--kv-value-len must lie in [1, 16], got {args.kv_value_len}")
    if args.synth_line_len < 2 or args.synth_chars < 2 * args.synth_line_len:
        raise ValueError(f"--synth-line-len must be at least 2 and --synth-chars at least two lines, got "
                         f"{args.synth_line_len} and {args.synth_chars}")
    if not 0 <= args.corpus_seed < 2**32:
        raise ValueError(f"--corpus-seed must lie in [0, 2**32), got {args.corpus_seed}")
    if args.a_steps is None:
        args.a_steps = A_STEPS[args.corpus]
    for name in ("a_steps", "b_steps", "c_steps", "batch_size", "meta_batch_size", "eval_every", "eval_batches",
                 "bank_size", "bank_refresh", "eval_inner_steps", "c_eval_episodes", "c_online_steps", "torch_threads",
                 "n_embd", "n_layer", "n_head", "n_kv_head"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("a_lr", "b_lr", "meta_lr", "inner_lr", "soft_temperature", "fd_eps", "max_grad_norm"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(args, name)}")
    if not (math.isfinite(args.a_min_gap) and args.a_min_gap >= 0):
        raise ValueError(f"--a-min-gap must be a finite number >= 0, got {args.a_min_gap}")
    for name in ("b_ema", "weight_decay"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1), got {getattr(args, name)}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    if args.n_embd % args.n_head:
        raise ValueError(f"--n-head {args.n_head} does not divide --n-embd {args.n_embd}")
    if args.n_head % args.n_kv_head:
        raise ValueError(f"--n-kv-head {args.n_kv_head} does not divide --n-head {args.n_head}")
    if (args.n_embd // args.n_head) % 2:
        raise ValueError(f"the head width --n-embd / --n-head = {args.n_embd // args.n_head} must be even (RoPE "
                         f"rotates pairs of dimensions)")
    if args.tokenizer == "bpe" and args.vocab_size < 257:
        raise ValueError(f"--vocab-size {args.vocab_size} must be at least 257 for byte-level BPE")
    if args.text_path is not None and args.hf_dataset is not None:
        raise ValueError("give at most one of --text-path and --hf-dataset")
    if args.text_path is not None and not os.path.isfile(args.text_path):
        raise ValueError(f"--text-path {args.text_path!r} is not a file")
    if args.model_name_or_path is not None and not os.path.isdir(args.model_name_or_path):
        raise ValueError(f"--model-name-or-path {args.model_name_or_path!r} is not a folder (only local checkpoints "
                         f"are loaded)")
    args.run_stages = ("a", "b", "c") if args.stage == "all" else (args.stage,)
    modes = args.a_modes if args.stage in ("a", "all") else ()
    args.a_run_modes = ("gist",) + tuple(m for m in dict.fromkeys(modes) if m != "gist")
    args.n_positions = max(args.context_len + args.num_gist_tokens + args.cont_len,
                           2 * args.c_chunk_len + args.num_gist_tokens)
    return args


def loader_error(flag: str, value, e: Exception) -> ValueError:
    """One line for a loader's failure: its own one-line ValueError as it is, anything else (a library's
    exception, maybe several lines long) as '{flag} {value!r} could not be loaded: {first line}'."""
    text = str(e).strip()
    if isinstance(e, ValueError) and text.startswith("--") and "\n" not in text:
        return e
    return ValueError(f"{flag} {value!r} could not be loaded: {text.splitlines()[0] if text else type(e).__name__}")


def check_inputs(args: Args) -> Args:
    """Read every input the run needs, before any run folder exists: the corpus (too short or
    unreadable), the tokenizer (sets args.gist_id and args.n_vocab), the checkpoint (loaded once
    here and again in train), and the memory estimate of the largest allocations. Every failure is
    a ValueError with one line. The from-scratch model is only built on the meta device here
    (shapes, no memory)."""
    if args.text_path is not None:                # str + bytes + id list + tensor: about 40 bytes per byte
        check_memory(40 * os.path.getsize(args.text_path), f"reading --text-path {args.text_path!r}",
                     torch.device("cpu"))
    try:
        tok, train_ids, val_ids, _ = load_data(args)
    except OSError as e:
        raise ValueError(f"--text-path {args.text_path!r} could not be read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 -- load_data's own errors are one line already
        if isinstance(e, ValueError) and "\n" not in str(e).strip():
            raise
        raise loader_error("the corpus", args.text_path or args.hf_dataset or "pydoc_data.topics", e) from None
    args.gist_id, args.n_vocab = tok.special_ids[GIST], tok.n_vocab
    n_tokens = len(train_ids) + len(val_ids)
    del tok, train_ids, val_ids
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.model_name_or_path is None:
        try:
            with torch.device("meta"):
                shapes, info = build_lm(args, args.n_vocab, args.n_positions, attn_implementation="eager")
        except Exception as e:  # noqa: BLE001 -- a config the library refuses becomes one line
            raise loader_error("the model", f"d={args.n_embd}, {args.n_layer} layers, {args.n_head} heads", e) from None
        n_params, config = info["n_params"], shapes.config
    else:
        try:
            config = AutoConfig.from_pretrained(args.model_name_or_path)
            with torch.device("meta"):
                shapes = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        except Exception as e:  # noqa: BLE001 -- not a causal-LM checkpoint folder
            raise loader_error("--model-name-or-path", args.model_name_or_path, e) from None
        rows = shapes.get_input_embeddings().weight.shape[0]
        tied = shapes.get_output_embeddings() is None or \
            shapes.get_output_embeddings().weight is shapes.get_input_embeddings().weight
        n_params = sum(p.numel() for p in shapes.parameters()) + \
            max(0, args.n_vocab - rows) * shapes.get_input_embeddings().weight.shape[1] * (1 if tied else 2)
    d = getattr(config, "hidden_size", args.n_embd)
    n_layer = getattr(config, "num_hidden_layers", args.n_layer)
    n_head = getattr(config, "num_attention_heads", args.n_head)
    del shapes
    size = f"{n_params / 1e6:.4g}M" if n_params < 1e9 else f"{n_params / 1e9:.4g}B"
    check_memory(memory_estimate(args, n_params, args.n_vocab, d, n_layer, n_head, n_tokens),
                 f"a run with {size} parameters (d={d}, {n_layer} layers, {n_head} heads, "
                 f"{args.n_vocab} ids), its optimizer states, copies and activations", pick_device(args.cuda))
    if args.model_name_or_path is not None:      # weights that do not load must fail here, not in train
        try:
            model, _ = load_model(args)
        except Exception as e:  # noqa: BLE001 -- build_lm's and check_positions' own errors are one line
            if isinstance(e, ValueError) and "\n" not in str(e).strip():
                raise
            raise loader_error("--model-name-or-path", args.model_name_or_path, e) from None
        del model
    return args


def finalize_args(args: Args) -> Args:
    """check_args, then check_inputs: every bad argument or input file is a one-line ValueError."""
    return check_inputs(check_args(args))


def required_tokens(args: Args) -> int:
    """Tokens each split must hold: a stage-A window (Lc + Lx), K + 1 consecutive stage-C chunks, and
    the N + 1 consecutive chunks of the online stream when stage C runs."""
    L = args.c_chunk_len
    online = (args.c_online_steps + 1) * L + 1 if "c" in args.run_stages else 0
    return max(args.context_len + args.cont_len, (args.eval_inner_steps + 1) * L + 1, 2 * L + 1, online) + 1


def check_positions(n_positions: int, model_positions: Optional[int]) -> None:
    """One-line error when the sequences do not fit the model's positions."""
    if model_positions is not None and n_positions > model_positions:
        raise ValueError(f"the run needs {n_positions} positions (Lc + k + Lx and 2L + k) but the model has "
                         f"{model_positions}; lower --context-len, --cont-len, --c-chunk-len or --num-gist-tokens")


def activation_bytes(rows: int, spans, d: int, n_layer: int, n_head: int, n_vocab: int) -> float:
    """float32 bytes one forward pass keeps for its backward: rows sequences, each of the given span
    lengths; per token and layer about 34 d values (norms, q/k/v/o, SwiGLU 4d x 3, residuals), per
    span and head two T x T attention maps (eager), and three T x V logit tensors."""
    return 4.0 * rows * sum(n_layer * (34 * d * T + 2 * n_head * T * T) + 3 * T * n_vocab for T in spans)


def memory_estimate(args: Args, n_params: int, n_vocab: int, d: int, n_layer: int, n_head: int,
                    n_tokens: int) -> float:
    """Bytes of the run's largest allocations: about 10 float32 copies of the weights (stage A's model,
    start state and gist model; gradients and two Adam moments; stage B's target; stage C's start
    model, inner-step weights and meta-gradients), the token ids (int64, on the host and the device),
    and the activations of the largest step of the stages that run (x2 for a backward pass, x3 for
    stage C's double backward)."""
    Lc, k, Lx, L = args.context_len, args.num_gist_tokens, args.cont_len, args.c_chunk_len
    dims = (d, n_layer, n_head, n_vocab)
    steps = [2 * activation_bytes(args.batch_size, [Lc + k + Lx], *dims)]
    if "b" in args.run_stages:
        steps.append(2 * activation_bytes(args.batch_size, [Lc, Lc + k, Lc + k], *dims))
    if "c" in args.run_stages:
        steps.append((2 if args.first_order else 3) * activation_bytes(args.meta_batch_size, [L, L + k, 2 * L + k],
                                                                       *dims))
    return 4.0 * 10 * n_params + 16.0 * n_tokens + max(steps)


# ==================================================================================================
# Data and tokenizer (shared with self_critic_lm.py)
# ==================================================================================================
# >>> copied: lm-corpus
# Corpus for the LM scripts. Reads only these Args fields: text_path, hf_dataset, val_fraction.
def load_corpus(args) -> tuple[str, str, str]:
    """(train_text, val_text, source): --text-path, else --hf-dataset (lazy `datasets`, split 'train',
    column 'text' or the first column), else the Python docs in pydoc_data.topics (stdlib, offline).
    The last --val-fraction of the characters is the validation text (contiguous, no overlap)."""
    if args.text_path is not None:
        if not os.path.isfile(args.text_path):
            raise ValueError(f"--text-path {args.text_path!r} is not a file")
        with open(args.text_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        source = f"file {args.text_path}"
    elif args.hf_dataset is not None:
        try:
            import datasets
        except ImportError:
            raise ValueError("--hf-dataset needs the `datasets` package (pip install datasets)") from None
        name, _, config = args.hf_dataset.partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split="train")
        except Exception as e:  # noqa: BLE001 -- any loader failure becomes one line
            raise ValueError(f"--hf-dataset {args.hf_dataset!r} could not be loaded: {type(e).__name__}") from None
        column = "text" if "text" in ds.column_names else ds.column_names[0]
        text = "\n\n".join(str(t) for t in ds[column])
        source = f"hf {args.hf_dataset} [{column}]"
    else:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
        source = f"pydoc_data.topics (Python {sys.version.split()[0]})"
    if not text.strip():
        raise ValueError(f"the corpus ({source}) is empty")
    cut = len(text) - int(len(text) * args.val_fraction)
    source += f", {len(text)} chars, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return text[:cut], text[cut:], source


def check_token_counts(train_ids, val_ids, need: int, what: str) -> None:
    """One-line error when either split has fewer than `need` tokens."""
    if len(train_ids) < need or len(val_ids) < need:
        raise ValueError(f"the corpus is too short for {what}: {len(train_ids)} train / {len(val_ids)} "
                         f"validation tokens, each split needs at least {need}")


def sample_windows(data: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(n, length) random contiguous windows of the 1-D token tensor `data` (starts drawn on the CPU)."""
    starts = torch.randint(0, len(data) - length + 1, (n, 1), generator=generator).to(data.device)
    return data[starts + torch.arange(length, device=data.device)]
# <<< copied: lm-corpus


# >>> copied: lm-tokenizer
# Tokenizers for the LM scripts. Reads only these Args fields: tokenizer, vocab_size.
class LMTokenizer:
    """One interface over a byte tokenizer (ids 0-255 are bytes, the specials follow) and a
    `tokenizers.Tokenizer` (BPE or pretrained, specials added). n_vocab counts every id the model
    must embed; special_ids maps each special string to its id."""

    def __init__(self, kind: str, specials, backend=None):
        self.kind, self.backend = kind, backend
        if backend is None:
            self.special_ids = {s: 256 + i for i, s in enumerate(specials)}
            self.n_vocab = 256 + len(specials)
        else:
            backend.add_special_tokens(list(specials))
            self.special_ids = {s: backend.token_to_id(s) for s in specials}
            self.n_vocab = backend.get_vocab_size(with_added_tokens=True)
        self._names = {i: s for s, i in self.special_ids.items()}

    def encode(self, text: str) -> list[int]:
        if self.backend is None:
            return list(text.encode("utf-8"))
        return self.backend.encode(text).ids

    def decode(self, ids) -> str:
        if self.backend is None:
            out, run = [], []
            for i in ids:
                if i < 256:
                    run.append(i)
                    continue
                out += [bytes(run).decode("utf-8", errors="replace"), self._names.get(i, f"<{i}>")]
                run = []
            return "".join(out) + bytes(run).decode("utf-8", errors="replace")
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, run_dir: str) -> Optional[str]:
        """Write run_dir/tokenizer.json (reload with --tokenizer that path); None for bytes."""
        if self.backend is None:
            return None
        path = os.path.join(run_dir, "tokenizer.json")
        self.backend.save(path)
        return path


def build_tokenizer(args, train_text: str, specials) -> LMTokenizer:
    """--tokenizer byte | bpe (byte-level BPE with --vocab-size ids, trained on train_text only) |
    a tokenizer.json file | a local pretrained tokenizer folder (AutoTokenizer, fast tokenizers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if args.tokenizer == "byte":
        return LMTokenizer("byte", specials)
    if args.tokenizer == "bpe":
        if args.vocab_size < 256 + len(specials):
            raise ValueError(f"--vocab-size {args.vocab_size} must be at least {256 + len(specials)} for byte-level BPE")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=list(specials),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(train_text.split("\n"), trainer)
        return LMTokenizer("bpe", specials, tok)
    if not os.path.exists(args.tokenizer):
        raise ValueError(f"--tokenizer {args.tokenizer!r} is neither byte, bpe nor an existing file or folder")
    if os.path.isfile(args.tokenizer):
        return LMTokenizer(f"file {args.tokenizer}", specials, Tokenizer.from_file(args.tokenizer))
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(args.tokenizer)
    if not hasattr(hf_tok, "backend_tokenizer"):
        raise ValueError(f"--tokenizer {args.tokenizer!r} is not a fast (tokenizers-backed) tokenizer")
    return LMTokenizer(f"pretrained {args.tokenizer}", specials, hf_tok.backend_tokenizer)
# <<< copied: lm-tokenizer


LOWER, UPPER, DIGITS = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"


def synthetic_line(kind: str, rng: np.random.Generator, n: int, period: int, support: int, keys: int,
                   value_len: int = 1) -> str:
    """One line of n characters of a synthetic corpus in which the context decides the continuation:
    repeat: a random `period`-letter string (a-z), repeated; letters: each character uniform over a
    random `support` of the 62 symbols a-z A-Z 0-9; kv: pairs key value (a lowercase key drawn
    uniformly from the line's `keys` keys, then its value of `value_len` uppercase letters, fixed for
    the line)."""
    if kind == "repeat":
        unit = "".join(rng.choice(list(LOWER), period))
        return (unit * (n // period + 1))[:n]
    if kind == "letters":
        symbols = rng.choice(list(LOWER + UPPER + DIGITS), support, replace=False)
        return "".join(rng.choice(symbols, n))
    if kind == "kv":
        ks = rng.choice(list(LOWER), keys, replace=False)
        vs = rng.choice(list(UPPER), keys) if value_len == 1 else \
            ["".join(rng.choice(list(UPPER), value_len)) for _ in range(keys)]
        picks = rng.integers(0, keys, n // (value_len + 1) + 1)
        return "".join(ks[i] + vs[i] for i in picks)[:n]
    raise ValueError(f"unknown synthetic corpus {kind!r}")


def synthetic_corpus(args) -> tuple[str, str, str]:
    """(train_text, val_text, source) of --corpus repeat | letters | kv: lines of --synth-line-len
    characters (+ newline) up to --synth-chars, drawn with --corpus-seed; the last --val-fraction of
    the characters is the validation text, as for the text corpora."""
    rng = np.random.default_rng(args.corpus_seed)
    n_lines = max(2, args.synth_chars // (args.synth_line_len + 1))
    text = "\n".join(synthetic_line(args.corpus, rng, args.synth_line_len, args.repeat_period, args.letters_support,
                                    args.kv_keys, args.kv_value_len) for _ in range(n_lines)) + "\n"
    cut = len(text) - int(len(text) * args.val_fraction)
    detail = {"repeat": f"P={args.repeat_period}", "letters": f"S={args.letters_support}",
              "kv": f"m={args.kv_keys}, V={args.kv_value_len}"}[args.corpus]
    source = (f"synthetic {args.corpus} ({detail}, {n_lines} lines of {args.synth_line_len}, corpus seed "
              f"{args.corpus_seed}), {len(text)} chars, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}")
    return text[:cut], text[cut:], source


# ==================================================================================================
# Model (shared with self_critic_lm.py)
# ==================================================================================================
# >>> copied: lm-model
# Causal LM for the LM scripts. Reads only these Args fields: model_name_or_path, n_embd, n_layer,
# n_head, n_kv_head.
def build_lm(args, vocab_size: int, n_positions: int, attn_implementation: str = "sdpa"):
    """(model, info). From scratch: a Llama-style decoder (GQA with --n-kv-head key/value heads, RoPE,
    RMSNorm, SwiGLU of width 4*n_embd, tied input/output embeddings, no biases) with vocab_size
    rows and a context of n_positions. With --model-name-or-path: from_pretrained on that local
    folder, embeddings resized when the tokenizer has more ids (mean_resizing: new rows drawn around
    the mean of the old ones);
    a ValueError if its context is shorter than n_positions. attn_implementation: "sdpa", or
    "eager" where second-order gradients are needed (SDPA has no double backward)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    info = {"resized_from": None}
    if args.model_name_or_path is None:
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=args.n_embd, intermediate_size=4 * args.n_embd,
                             num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                             num_key_value_heads=args.n_kv_head, max_position_embeddings=n_positions,
                             tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path,
                                                         attn_implementation=attn_implementation)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--model-name-or-path {args.model_name_or_path!r} could not be loaded: {first}") from None
        context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if context is not None and n_positions > context:
            raise ValueError(f"the run needs {n_positions} positions but {args.model_name_or_path!r} has a context "
                             f"of {context}; use shorter sequences")
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < vocab_size:
            model.resize_token_embeddings(vocab_size, mean_resizing=True)
            info["resized_from"] = rows
    info["n_params"] = sum(p.numel() for p in model.parameters())
    info["n_rows"] = model.get_input_embeddings().weight.shape[0]
    return model, info
# <<< copied: lm-model


def init_gist_row_(model, gist_id: int) -> None:
    """Set the <gist> input-embedding row (and the output row, tied or not) to the mean of all
    other rows, as Mu et al. initialise their new token."""
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None:
                others = torch.arange(layer.weight.shape[0], device=layer.weight.device) != gist_id
                layer.weight[gist_id] = layer.weight[others].mean(0)


def embedding_name(model) -> str:
    """Name of the input-embedding matrix among model.named_parameters()."""
    weight = model.get_input_embeddings().weight
    return next(n for n, p in model.named_parameters() if p is weight)


# ==================================================================================================
# Gist mask and sequences
# ==================================================================================================
def gist_attention_mask(ctx_len: int, num_gist: int, cont_len: int, mode: str,
                        dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(1, 1, T, T) additive float mask, T = ctx_len + num_gist + cont_len: 0 where query q may
    attend to key j, finfo(dtype).min where not. Causal always; mode gist: no query after the last
    gist sees a key before the first gist (Mu et al.'s make_gist_mask AND causal); none (ours): no
    query from the first gist on sees the context; neg (Mu et al.'s make_neg_control_mask AND causal):
    no query after the last gist sees the context or the gists; full: causal only (their
    make_pos_control_mask AND causal). Float, not bool: eager attention adds the mask to the scores."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}")
    T = ctx_len + num_gist + cont_len
    q = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = j <= q
    first_blind = {"gist": ctx_len + num_gist, "none": ctx_len, "neg": ctx_len + num_gist, "full": T}[mode]
    hidden_keys = ctx_len + num_gist if mode == "neg" else ctx_len
    allowed &= ~((q >= first_blind) & (j < hidden_keys))
    zeros = torch.zeros(T, T, dtype=dtype, device=device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def gist_sequences(windows: torch.Tensor, ctx_len: int, num_gist: int, gist_id: int) -> torch.Tensor:
    """(B, Lc + k + Lx) = [context | <gist> x k | continuation] from windows (B, Lc + Lx)."""
    gists = torch.full((windows.shape[0], num_gist), gist_id, dtype=windows.dtype, device=windows.device)
    return torch.cat([windows[:, :ctx_len], gists, windows[:, ctx_len:]], dim=1)


def continuation_token_ce(logits: torch.Tensor, ids: torch.Tensor, ctx_len: int, num_gist: int) -> torch.Tensor:
    """(B, Lx - 1) CE of the scored continuation tokens x_2..x_Lx: x_i sits at position Lc + k + i - 1
    and is predicted by position Lc + k + i - 2, which sees the context only through the gists.
    x_1 is never scored: the position that predicts it is the last gist, which attends to the
    context directly (Mu et al. never score it either)."""
    first = ctx_len + num_gist + 1
    tok = F.cross_entropy(logits[:, first - 1:-1].flatten(0, 1).float(), ids[:, first:].flatten(), reduction="none")
    return tok.view(ids.shape[0], -1)


def retention(ce_gist: float, ce_full: float, ce_neg: float, min_gap: float):
    """(R, R unchecked, the positive control passed) of one stage-A comparison, CE in nats/token:
    R = (CE_neg - CE_gist) / (CE_neg - CE_full), the share of the context's value that passes the gists
    (1: all of it, 0: none). R is None where the gap CE_neg - CE_full is below min_gap: then the full
    model does not use the context, and R is a ratio of noise over a near-zero denominator."""
    gap = ce_neg - ce_full
    raw = (ce_neg - ce_gist) / gap if gap != 0 else None
    ok = gap >= min_gap
    return (raw if ok else None), raw, ok


def stage_a_losses(logits: torch.Tensor, ids: torch.Tensor, ctx_len: int, num_gist: int,
                   context_loss: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, continuation CE). The scored continuation tokens are x_2..x_Lx (see
    continuation_token_ce; x_1 is input only). With context_loss, the loss is
    the token-weighted mean over continuation and context targets (context tokens 1..Lc-1)."""
    cont_tok = continuation_token_ce(logits, ids, ctx_len, num_gist).flatten()
    cont_ce = cont_tok.mean()
    if not context_loss:
        return cont_ce, cont_ce
    ctx_tok = F.cross_entropy(logits[:, :ctx_len - 1].flatten(0, 1).float(), ids[:, 1:ctx_len].flatten(), reduction="none")
    return torch.cat([cont_tok, ctx_tok]).mean(), cont_ce


# ==================================================================================================
# Model calls (functional: params None uses the module's own weights)
# ==================================================================================================
def forward(model, params: Optional[dict], hidden: bool = False, logits_to_keep: int = 0, cache=None, **inputs):
    """One model call; cache: a transformers DynamicCache that the call reads as the past and extends."""
    kwargs = dict(use_cache=cache is not None, output_hidden_states=hidden, logits_to_keep=logits_to_keep, **inputs)
    if cache is not None:
        kwargs["past_key_values"] = cache
    if params is None:
        return model(**kwargs)
    return functional_call(model, params, (), kwargs)


def input_embeddings(model, params: Optional[dict]) -> torch.Tensor:
    return model.get_input_embeddings().weight if params is None else params[embedding_name(model)]


def lm_ce(model, params: Optional[dict], ids: torch.Tensor) -> torch.Tensor:
    """Next-token CE (nats/token) of a chunk batch ids (B, L+1), computed by hand (float64-safe)."""
    logits = forward(model, params, input_ids=ids[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def soft_embeddings(logits: torch.Tensor, emb: torch.Tensor, gist_id: int, temperature: float) -> torch.Tensor:
    """(B, L, d) = softmax(logits / tau) @ E with the <gist> id excluded: the differentiable
    'predicted text' in embedding space (only the rows the logits cover are used)."""
    logits = logits[..., : emb.shape[0]] / temperature
    logits = logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) == gist_id, float("-inf"))
    return torch.softmax(logits, dim=-1) @ emb[: logits.shape[-1]]


def gist_codes(model, params: Optional[dict], span: torch.Tensor, gist_vecs: torch.Tensor) -> torch.Tensor:
    """(B, k, d): final-layer hidden states at k gist vectors appended to the span embeddings
    (B, S, d); ordinary causal attention (the gists see the whole span)."""
    B, k = span.shape[0], gist_vecs.shape[0]
    x = torch.cat([span, gist_vecs.unsqueeze(0).expand(B, k, -1)], dim=1)
    return forward(model, params, hidden=True, logits_to_keep=1, inputs_embeds=x).hidden_states[-1][:, -k:]


@torch.no_grad()
def span_cache(model, params: Optional[dict], span: torch.Tensor):
    """The keys and values of every layer over a span of embeddings (B, S, d), without a graph: the
    past that gist_codes_cached reads. One model pass over S positions."""
    from transformers import DynamicCache

    cache = DynamicCache()
    forward(model, params, logits_to_keep=1, cache=cache, inputs_embeds=span)
    return cache


def gist_codes_cached(model, params: Optional[dict], cache, gist_vecs: torch.Tensor) -> torch.Tensor:
    """gist_codes(span, gist_vecs) with the span given as its cache (span_cache): only the k gist
    positions are computed (positions S..S+k-1, causal over the span and the earlier gists), so the
    graph, and any backward, covers k positions and reaches gist_vecs (and params), never the span.
    Exact where nothing upstream of the span needs a gradient (the stop-gradient truth side, or a
    theta held constant). The cache is extended by the call (use it once)."""
    B, k = cache.layers[0].keys.shape[0], gist_vecs.shape[0]
    x = gist_vecs.unsqueeze(0).expand(B, k, -1)
    return forward(model, params, hidden=True, logits_to_keep=1, cache=cache, inputs_embeds=x).hidden_states[-1]


def gist_codes_and_cache(model, params: Optional[dict], span: torch.Tensor, gist_vecs: torch.Tensor):
    """(gist_codes(span, gist_vecs), the span's cache detached): the same codes and gradients in two
    calls, the span (keys and values kept, with their graph) then the k gists on it; the detached copy
    of the span's keys and values lets a stop-gradient pass continue the span without recomputing it."""
    from transformers import DynamicCache

    cache = DynamicCache()
    forward(model, params, logits_to_keep=1, cache=cache, inputs_embeds=span)
    detached = DynamicCache()
    for i, layer in enumerate(cache.layers):
        detached.update(layer.keys.detach(), layer.values.detach(), i)
    return gist_codes_cached(model, params, cache, gist_vecs), detached


def joint_gist_layout(span_len: int, num_gist: int, device=None, dtype: torch.dtype = torch.float32):
    """(mask (1, 1, T, T), position ids (1, T)) of the one-pass sequence [s^ | G | s | G'],
    T = 2L + 2k: causal, and nothing after G sees G (s and G' read s^ and s, never G), with position ids
    0..L+k-1 for [s^ | G] and L..2L+k-1 for [s | G'], so that G's states are those of the pass
    [s^ | G] and G''s those of the pass [s^ ; s | G']. Additive float mask, as gist_attention_mask."""
    L, k = span_len, num_gist
    T = 2 * L + 2 * k
    q = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = (j <= q) & ~((q >= L + k) & (j >= L) & (j < L + k))
    mask = torch.zeros(T, T, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
    pos = torch.cat([torch.arange(L + k, device=device), torch.arange(L, 2 * L + k, device=device)])[None]
    return mask, pos


def gist_codes_joint(model, params: Optional[dict], pred: torch.Tensor, truth: torch.Tensor,
                     gist_vecs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_own, z_both), each (B, k, d), from ONE model pass over [pred | G | truth | G'] (see
    joint_gist_layout): z_own = gist_codes(pred), z_both = gist_codes([pred ; truth]), same values
    and the same gradients, with one call instead of two (pred, truth: (B, L, d) embeddings)."""
    B, L = pred.shape[:2]
    k = gist_vecs.shape[0]
    g = gist_vecs.unsqueeze(0).expand(B, k, -1)
    mask, pos = joint_gist_layout(L, k, pred.device, pred.dtype)
    x = torch.cat([pred, g, truth, g], dim=1)
    h = forward(model, params, hidden=True, logits_to_keep=1, inputs_embeds=x, attention_mask=mask,
                position_ids=pos.expand(B, -1)).hidden_states[-1]
    return h[:, L:L + k], h[:, -k:]


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).mean()


def center_codes(z: torch.Tensor) -> torch.Tensor:
    """Codes (B, k, d) minus their batch mean (per gist slot): the common component every chunk
    shares is removed before the cosine distance."""
    return z - z.mean(dim=0, keepdim=True)


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Collapse diagnostic: mean cosine over the B(B-1) ordered pairs of distinct codes (B, k, d)
    flattened to (B, k*d), raw (not centred). 1 = every chunk has the same code direction."""
    u = F.normalize(z.flatten(1).double(), dim=-1)
    B = u.shape[0]
    sims = u @ u.T
    return float((sims.sum() - sims.diagonal().sum()) / (B * (B - 1)))


def effective_rank(z: torch.Tensor) -> float:
    """Collapse diagnostic: exp(entropy of the normalised singular values) of the centred code
    matrix (B, k*d) (Roy & Vetterli 2007); 1 = the codes vary along one direction only, at most
    min(B - 1, k d)."""
    x = z.flatten(1).double()
    sv = torch.linalg.svdvals(x - x.mean(0, keepdim=True))
    if float(sv.sum()) == 0.0:
        return 0.0
    p = sv / sv.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def grad_cosine(loss_a: torch.Tensor, loss_b: torch.Tensor, params: list) -> float:
    """Cosine between the gradients of two losses over the same parameters (all flattened)."""
    ga = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(loss_b, params, retain_graph=True, allow_unused=True)
    dot = na = nb = 0.0
    for a, b in zip(ga, gb):
        if a is None or b is None:
            continue
        dot, na, nb = dot + float((a * b).sum()), na + float((a * a).sum()), nb + float((b * b).sum())
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else 0.0


# ==================================================================================================
# Stage B: self-produced semantic loss
# ==================================================================================================
def semantic_loss(model, target, ids: torch.Tensor, gist_id: int, num_gist: int, temperature: float,
                  pred_encoder: str = "online", center: bool = True, params: Optional[dict] = None):
    """L_B on a chunk batch ids (B, L+1): (loss, z_pred, z_true), the codes raw. model and target are
    modules; the target side is computed under no_grad (stop-gradient). The prediction is encoded
    by `model` (online) or `target`; center: both codes lose their batch mean before the distance.
    params: model's weights as a dict (functional), None for its own."""
    logits = forward(model, params, input_ids=ids[:, :-1]).logits
    enc, enc_params = (model, params) if pred_encoder == "online" else (target, None)
    emb = input_embeddings(enc, enc_params)
    z_pred = gist_codes(enc, enc_params, soft_embeddings(logits, emb, gist_id, temperature),
                        emb[gist_id].expand(num_gist, -1))
    with torch.no_grad():
        t_emb = target.get_input_embeddings().weight
        z_true = gist_codes(target, None, t_emb[ids[:, 1:]], t_emb[gist_id].expand(num_gist, -1))
    if center:
        return cosine_distance(center_codes(z_pred), center_codes(z_true)), z_pred, z_true
    return cosine_distance(z_pred, z_true), z_pred, z_true


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), 1.0 - decay)


# ==================================================================================================
# Stage C: meta-learned gist loss
# ==================================================================================================
def init_phi(gist_row: torch.Tensor, num_gist: int, proj: bool, scale: bool) -> dict:
    """phi: k gist vectors (copies of the <gist> row), optional P = I (d x d), optional log-scale 0."""
    d = gist_row.shape[0]
    phi = {"gist": gist_row.detach().clone().expand(num_gist, d).clone()}
    if proj:
        phi["proj"] = torch.eye(d, dtype=gist_row.dtype, device=gist_row.device)
    if scale:
        phi["log_scale"] = torch.zeros((), dtype=gist_row.dtype, device=gist_row.device)
    return {k: v.requires_grad_() for k, v in phi.items()}


def gist_loss(model, params: Optional[dict], phi: dict, ids: torch.Tensor, gist_id: int,
              temperature: float = 1.0, stopgrad_target: bool = True,
              target_params: Optional[dict] = None, target_codes: Optional[torch.Tensor] = None,
              return_codes: bool = False):
    """L_gist(theta, phi) on a chunk batch ids (B, L+1): e^s * mean(1 - cos(P z(s^), P z([s^ ; s]))),
    s^ the soft predicted embeddings of s_1..s_L, s their true embeddings, z through gist phi.
    stopgrad_target: z_both (the truth side) is computed from theta detached (weights, s^ and E),
    so no gradient reaches theta through it, while it still depends on phi (for the meta-gradient);
    target_params: the weights of that truth side if not params (the first-order meta-gradient shifts
    only the prediction side's weights); target_codes: a ready z_both (raw codes, a function of phi)
    used instead of computing the truth side; return_codes: (loss, z_both), z_both None without the
    stop-gradient.
    Passes: the LM over the chunk, then the codes. Without the stop-gradient both codes come from ONE
    pass over [s^ | G | s | G'] (gist_codes_joint; both sides are differentiated, and the joint pass
    is shorter than the two). With it, z_own is s^ then G on s^'s cache (gist_codes_and_cache), and
    z_both continues a detached copy of that cache with s, without a graph, then puts G' on top, the
    only part of z_both that depends on phi: z_both costs L + k positions, not 2L + k, and its
    backward k. Where params carry no gradient (theta constant, as in the first-order shifted pass),
    s^ depends on nothing differentiated, so only G's k positions carry a graph (to phi)."""
    emb = input_embeddings(model, params)
    weights = dict(model.named_parameters()) if params is None else params
    theta_grad = torch.is_grad_enabled() and any(p.requires_grad for p in weights.values())
    phi_grad = torch.is_grad_enabled() and any(p.requires_grad for p in phi.values())
    with torch.set_grad_enabled(theta_grad):
        pred = soft_embeddings(forward(model, params, input_ids=ids[:, :-1]).logits, emb, gist_id, temperature)
    z_both = None
    if not stopgrad_target and target_codes is None:
        z_own, z_target = gist_codes_joint(model, params, pred, emb[ids[:, 1:]], phi["gist"])
    else:
        with torch.set_grad_enabled(theta_grad or phi_grad):       # (no graph at all where neither)
            z_own, cache = gist_codes_and_cache(model, params, pred, phi["gist"])
        if target_codes is not None:
            z_target = target_codes
        else:
            src = target_params if target_params is not None else weights
            frozen = {n: p.detach() for n, p in src.items()}
            emb_sg = input_embeddings(model, frozen)
            if target_params is None:            # s^'s keys and values (detached) extended by s: [s^ ; s]
                with torch.no_grad():
                    forward(model, frozen, logits_to_keep=1, cache=cache, inputs_embeds=emb_sg[ids[:, 1:]])
            else:                                # the truth side's own prediction, from its weights
                with torch.no_grad():
                    pred_sg = soft_embeddings(forward(model, frozen, input_ids=ids[:, :-1]).logits, emb_sg, gist_id,
                                              temperature)
                cache = span_cache(model, frozen, torch.cat([pred_sg, emb_sg[ids[:, 1:]]], dim=1))
            with torch.set_grad_enabled(phi_grad):
                z_both = z_target = gist_codes_cached(model, frozen, cache, phi["gist"])
    if "proj" in phi:
        z_own, z_target = z_own @ phi["proj"].T, z_target @ phi["proj"].T
    loss = cosine_distance(z_own, z_target)
    if "log_scale" in phi:
        loss = loss * phi["log_scale"].exp()
    return (loss, z_both) if return_codes else loss


def meta_gradients(model, theta: dict, phi: dict, x_train: torch.Tensor, x_val: torch.Tensor, inner_lr: float,
                   loss_fn, first_order: bool = False, fd_eps: float = 0.01, meta_theta: bool = False,
                   return_fast: bool = False):
    """One meta step's gradients. theta: name -> tensor (requires grad), phi: name -> tensor.
    loss_fn(model, params, phi, ids, **kw) is the inner loss; the first-order path calls it with
    return_codes=True and target_codes=... (see gist_loss). Returns (inner loss, outer loss, grads)
    with grads: name -> gradient of the outer loss for every phi entry (and theta's with meta_theta).
        second order:  theta' = theta - alpha grad L(theta, phi) kept in the graph; autograd.grad.
        first order:   v = grad CE(theta'), theta' detached; phi-grad by the forward difference
                       -alpha grad_phi (L(theta + eps v) - L(theta)) / eps, eps = fd_eps/|v|, the
                       second term from the inner backward, with the stop-gradient truth side
                       z_both(theta, phi) of the first pass reused; theta-grad = v (first-order
                       MAML). Model passes: LM + 2 gist passes at theta (one backward), CE at theta'
                       (forward + backward), LM + 1 gist pass at theta + eps v without a graph but
                       at its k gist positions.
    return_fast: also return theta' (detached), the weights after the inner step."""
    names, tensors = list(theta), list(theta.values())
    phi_names, phi_tensors = list(phi), list(phi.values())
    if first_order:                          # z_both (stop-gradient truth side) is reused below
        inner, z_both = loss_fn(model, theta, phi, x_train, return_codes=True)
    else:
        inner = loss_fn(model, theta, phi, x_train)
    if not first_order:
        g = torch.autograd.grad(inner, tensors, create_graph=True)
        fast = {n: p - inner_lr * gi for n, p, gi in zip(names, tensors, g)}
        outer = lm_ce(model, fast, x_val)
        wrt = phi_tensors + (tensors if meta_theta else [])
        grads = torch.autograd.grad(outer, wrt, allow_unused=True)
        grads = [torch.zeros_like(w) if gr is None else gr for w, gr in zip(wrt, grads)]
        out = inner.detach(), outer.detach(), dict(zip(phi_names + (names if meta_theta else []), grads))
        return out + ({n: f.detach() for n, f in fast.items()},) if return_fast else out
    # one backward gives theta's inner gradient and grad_phi L(theta) (the second term of the forward
    # difference below); the graph is kept because z_both's (k positions) is used again
    g_all = torch.autograd.grad(inner, tensors + phi_tensors, allow_unused=True, retain_graph=True)
    g, g0_phi = g_all[:len(tensors)], g_all[len(tensors):]
    fast = {n: (p - inner_lr * (0 if gi is None else gi)).detach().requires_grad_()
            for n, p, gi in zip(names, tensors, g)}
    outer = lm_ce(model, fast, x_val)
    v = torch.autograd.grad(outer, list(fast.values()))
    eps = fd_eps / torch.sqrt(sum((vi * vi).sum() for vi in v)).clamp_min(1e-12)
    shifted = {n: p.detach() + eps * vi for n, p, vi in zip(names, tensors, v)}
    # the truth side of a stop-gradient loss keeps theta: v . grad_theta L moves the prediction side only,
    # so its codes z_both(theta, phi) are those of the first pass (reused, with their graph to phi). theta +
    # eps v is a constant, so L(theta + eps v) carries a graph over the gist positions only (gist_loss)
    shifted_loss = loss_fn(model, shifted, phi, x_train) if z_both is None else \
        loss_fn(model, shifted, phi, x_train, target_codes=z_both)
    g1_phi = torch.autograd.grad(shifted_loss, phi_tensors, allow_unused=True)
    zero = lambda gr, w: torch.zeros_like(w) if gr is None else gr
    grads = {n: -inner_lr * (zero(a, w) - zero(b, w)) / eps
             for n, w, a, b in zip(phi_names, phi_tensors, g1_phi, g0_phi)}
    if meta_theta:
        grads.update(zip(names, v))
    out = inner.detach(), outer.detach(), grads
    return out + ({n: f.detach() for n, f in fast.items()},) if return_fast else out


def select_similar(query: torch.Tensor, bank: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """(B,) index of the bank row with the highest cosine similarity to each query row.
    query (B, D), bank (M, D), exclude (B, M) bool: pairs that may not be chosen."""
    sims = F.normalize(query, dim=-1) @ F.normalize(bank, dim=-1).T
    return sims.masked_fill(exclude, float("-inf")).argmax(dim=-1)


@torch.no_grad()
def chunk_repr(model, phi: dict, ids: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, D) chunk representation for similarity: the mean gist code of ids (B, L+1) read through
    phi's gist vectors (gist), or the mean-pooled final hidden state (mean)."""
    if kind == "gist":
        emb = model.get_input_embeddings().weight
        return gist_codes(model, None, emb[ids], phi["gist"]).mean(1)
    return forward(model, None, hidden=True, logits_to_keep=1, input_ids=ids).hidden_states[-1].mean(1)


def consecutive_chunks(data: torch.Tensor, starts: torch.Tensor, length: int, n: int) -> torch.Tensor:
    """(n, B, length + 1): n consecutive chunks per start; chunk j covers tokens
    [start + j*length, start + (j+1)*length] (one token of overlap: the last target of chunk j is
    the first input of chunk j+1)."""
    offsets = torch.arange(n, device=data.device)[:, None, None] * length + torch.arange(length + 1, device=data.device)
    return data[starts.to(data.device)[None, :, None] + offsets]


def k_step_ce(model, loss_fn, chunks: torch.Tensor, lr: float) -> float:
    """Copy the model, take one SGD step (lr) of loss_fn(model_copy, ids) on each of chunks[:-1],
    return the CE of the copy on chunks[-1]; loss_fn None: no update."""
    m = copy.deepcopy(model)
    if loss_fn is not None:
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for ids in chunks[:-1]:
            opt.zero_grad(set_to_none=True)
            loss_fn(m, ids).backward()
            opt.step()
    with torch.no_grad():
        return float(lm_ce(m, None, chunks[-1]))


def sgd_update(theta: dict, loss: torch.Tensor, lr: float) -> dict:
    """theta - lr * grad loss, as new leaf tensors (the step is kept, not restored)."""
    g = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
    return {n: (p.detach() if gi is None else (p - lr * gi).detach()).requires_grad_()
            for (n, p), gi in zip(theta.items(), g)}


def online_stream(model, rule: str, chunks: torch.Tensor, lr: float, phi: Optional[dict] = None, loss_fn=None,
                  meta_lr: float = 0.0, first_order: bool = False, fd_eps: float = 0.01) -> tuple[torch.Tensor, dict]:
    """Plan 3's online phase on one stream: chunks (N + 1, B, L + 1), consecutive. For t = 0..N-1
    the CE of chunk t under the current theta_t is recorded, then theta keeps one SGD step (lr):
        gist_meta:   theta_{t+1} = theta_t - lr grad L(theta_t, phi_t; chunk t), and phi takes one Adam
                     step (meta_lr) on dCE(theta_{t+1}; chunk t+1)/dphi through that step (so the CE
                     of chunk t+1 recorded next is the outer loss before phi's update);
        gist_fixed:  the same inner steps with phi never updated;
        loss:        theta_{t+1} = theta_t - lr grad loss_fn(model, theta_t, chunk t)  (ce, stage_b);
        none:        no update.
    loss_fn(model, params, ids) for loss rules, loss_fn(model, params, phi, ids) for the gist rules.
    Returns (CE of chunks 0..N, (N + 1,) tensor, recorded before each update, and the final theta)."""
    theta = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    if rule in ("gist_meta", "gist_fixed"):
        phi = {n: p.detach().clone().requires_grad_(rule == "gist_meta") for n, p in phi.items()}
        opt = torch.optim.Adam(list(phi.values()), lr=meta_lr) if rule == "gist_meta" else None
    ces = []
    for t in range(chunks.shape[0] - 1):
        with torch.no_grad():
            ces.append(lm_ce(model, theta, chunks[t]))
        if rule == "none":
            continue
        if rule == "gist_meta":
            _, _, grads, fast = meta_gradients(model, theta, phi, chunks[t], chunks[t + 1], lr, loss_fn,
                                               first_order, fd_eps, return_fast=True)
            for n, p in phi.items():
                p.grad = grads[n]
            opt.step()
            opt.zero_grad(set_to_none=True)
            theta = {n: f.requires_grad_() for n, f in fast.items()}
        elif rule == "gist_fixed":
            theta = sgd_update(theta, loss_fn(model, theta, phi, chunks[t]), lr)
        else:
            theta = sgd_update(theta, loss_fn(model, theta, chunks[t]), lr)
    with torch.no_grad():
        ces.append(lm_ce(model, theta, chunks[-1]))
    return torch.stack(ces), theta


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


def plot_curves(panels: list[tuple], title: str, path: str) -> None:
    """One row of line plots; each panel is (y label, {label: (xs, ys)}[, x label])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, series, *xlabel) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker=".", label=label)
        ax.set(xlabel=xlabel[0] if xlabel else "stage step", ylabel=ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class NonFinite(RuntimeError):
    """A loss became NaN/Inf; the message says where."""


def finite(value: float, step: int, where: str) -> float:
    """value, or NonFinite (the run stops; every row logged so far stays in metrics.jsonl)."""
    if not math.isfinite(value):
        raise NonFinite(f"non-finite loss {value} at step {step} ({where})")
    return value


def min_time(fn, *fn_args, reps: int = 3, **fn_kwargs) -> float:
    """Smallest wall time of `reps` calls of fn(*fn_args, **fn_kwargs) (after one warm-up call), in seconds."""
    fn(*fn_args, **fn_kwargs)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*fn_args, **fn_kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def cosine_lr_factor(step: int, total: int) -> float:
    """Stage A's schedule: cosine from 1 to 0.1 over `total` steps, then 0.1."""
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total) / total))


def fixed_val_windows(val_ids: torch.Tensor, length: int, n: int, seed: int, salt: int) -> torch.Tensor:
    """The same validation windows for every model of a stage (seeded by --seed and salt)."""
    return sample_windows(val_ids, n, length, torch.Generator().manual_seed(seed * 1000 + salt))


@torch.no_grad()
def continuation_ce(model, windows: torch.Tensor, mask: torch.Tensor, args: Args) -> tuple[float, float]:
    """(continuation CE, CE of its first --a-head-tokens tokens) of the gist sequences of the
    validation windows (n_batches, B, Lc + Lx) under one attention mask."""
    Lc, k = args.context_len, args.num_gist_tokens
    tok = torch.cat([continuation_token_ce(model(input_ids=ids, attention_mask=mask, use_cache=False).logits,
                                           ids, Lc, k)
                     for ids in (gist_sequences(w, Lc, k, args.gist_id) for w in windows)])
    return float(tok.mean()), float(tok[:, :args.a_head_tokens].mean())


@torch.no_grad()
def val_ce(model, windows: torch.Tensor) -> float:
    """Mean next-token CE of the plain causal LM over validation chunk batches (n_batches, B, L + 1)."""
    return float(torch.stack([lm_ce(model, None, w) for w in windows]).mean())


def draw_train_chunks(train_ids: torch.Tensor, length: int, n: int, generator: torch.Generator):
    """(starts, (2, n, length + 1)): n random training positions, each with its chunk and the next one."""
    starts = torch.randint(0, len(train_ids) - 2 * length - 1, (n,), generator=generator)
    return starts, consecutive_chunks(train_ids, starts, length, 2)


def plain_backward_step(model, theta: dict, phi: dict, chunks: torch.Tensor, loss_fn):
    """Stage C's speed reference: the meta step's computation with plain backward passes (L_gist on
    the training chunk, CE on the validation chunk), no inner update kept in the graph."""
    torch.autograd.grad(loss_fn(model, None, phi, chunks[0]), list(theta.values()) + list(phi.values()),
                        allow_unused=True)
    return torch.autograd.grad(lm_ce(model, None, chunks[1]), list(theta.values()))


def ce_backward_step(model, theta: dict, ids: torch.Tensor):
    """One CE forward and backward on a chunk batch (the cheapest training step, for speed ratios)."""
    return torch.autograd.grad(lm_ce(model, None, ids), list(theta.values()))


def gist_rule_loss(model, ids: torch.Tensor, phi: dict, gist_id: int, temperature: float,
                   stopgrad_target: bool = True) -> torch.Tensor:
    """Update rule 'learned' or 'fixed' of the stage-C evaluation: L_gist with the given (detached) phi."""
    return gist_loss(model, None, phi, ids, gist_id, temperature, stopgrad_target)


def semantic_rule_loss(model, ids: torch.Tensor, target, gist_id: int, num_gist: int, temperature: float,
                       pred_encoder: str, center: bool = True) -> torch.Tensor:
    """Update rule 'stage_b' of the stage-C evaluation: L_B against a frozen target."""
    return semantic_loss(model, target, ids, gist_id, num_gist, temperature, pred_encoder, center)[0]


def semantic_online_loss(model, params: dict, ids: torch.Tensor, target, gist_id: int, num_gist: int,
                         temperature: float, pred_encoder: str, center: bool) -> torch.Tensor:
    """Rule 'stage_b' of the online phase: L_B of the functional weights params against a frozen target."""
    return semantic_loss(model, target, ids, gist_id, num_gist, temperature, pred_encoder, center, params=params)[0]


def ce_online_loss(model, params: dict, ids: torch.Tensor) -> torch.Tensor:
    """Rule 'ce' of the online phase: true next-token CE of the functional weights params."""
    return lm_ce(model, params, ids)


def ce_rule_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Update rule 'ce' of the stage-C evaluation: true next-token CE."""
    return lm_ce(model, None, ids)


# ==================================================================================================
# Stages
# ==================================================================================================
def load_data(args: Args):
    """(tokenizer, train ids, validation ids, corpus description); one-line ValueErrors for a bad
    tokenizer or a corpus too short for the run."""
    train_text, val_text, source = load_corpus(args) if args.corpus == "text" else synthetic_corpus(args)
    try:
        tok = build_tokenizer(args, train_text, [GIST])
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for a broken file
        raise loader_error("--tokenizer", args.tokenizer, e) from None
    train_ids = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text), dtype=torch.long)
    Lc, Lx, L, K = args.context_len, args.cont_len, args.c_chunk_len, args.eval_inner_steps
    check_token_counts(train_ids, val_ids, required_tokens(args),
                       f"context {Lc} + continuation {Lx} and {K + 1} chunks of {L}")
    return tok, train_ids, val_ids, source


def load_model(args: Args):
    """(model, info): the LM with its <gist> row set to the mean of the others, on the CPU."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()                             # no "Loading weights" bar on stderr
    model, model_info = build_lm(args, args.n_vocab, args.n_positions, attn_implementation="eager")
    check_positions(args.n_positions, getattr(model.config, "max_position_embeddings", None))
    init_gist_row_(model, args.gist_id)
    return model, model_info


def stage_a(args: Args, log: RunLog, model, train_ids: torch.Tensor, val_ids: torch.Tensor, summary: dict,
            step: int):
    """Stage A: gist compression with the full / none controls, one model per mask from the same
    init on the same batches. Returns (the gist-masked model, step)."""
    Lc, k, Lx = args.context_len, args.num_gist_tokens, args.cont_len
    device = train_ids.device
    init_state = copy.deepcopy(model.state_dict())                    # every stage-A mask starts here
    a_val = fixed_val_windows(val_ids, Lc + Lx, args.eval_batches * args.batch_size, args.seed, 1).view(
        args.eval_batches, args.batch_size, Lc + Lx)
    masks = {m: gist_attention_mask(Lc, k, Lx, m, device=device) for m in MASK_MODES}
    a_curves, a_final, a_head, gist_model = {}, {}, {}, None
    for mode in args.a_run_modes:
        model.load_state_dict(init_state)
        opt = torch.optim.AdamW(model.parameters(), lr=args.a_lr, weight_decay=args.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(cosine_lr_factor, total=args.a_steps))
        a_gen = torch.Generator().manual_seed(args.seed)             # same batches for every mask
        xs, (y0, h0) = [0], continuation_ce(model, a_val, masks[mode], args)
        ys, heads = [y0], [h0]
        log.log(step, {"stage": "a", "stage_step": 0, "a/mode": mode, "a/val_cont_ce": y0, "a/val_head_ce": h0})
        t0, tokens = time.time(), 0
        for s in range(1, args.a_steps + 1):
            step += 1
            ids = gist_sequences(sample_windows(train_ids, args.batch_size, Lc + Lx, a_gen), Lc, k, args.gist_id)
            logits = model(input_ids=ids, attention_mask=masks[mode], use_cache=False).logits
            loss, cont_ce = stage_a_losses(logits, ids, Lc, k, args.a_context_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            tokens += ids.numel()
            if s % args.eval_every == 0 or s == args.a_steps:
                train_loss = loss.item()
                y, h = continuation_ce(model, a_val, masks[mode], args)
                xs.append(s), ys.append(y), heads.append(h)
                tps = tokens / (time.time() - t0)
                log.log(step, {"stage": "a", "stage_step": s, "a/mode": mode, "a/train_loss": train_loss,
                               "a/train_cont_ce": cont_ce.item(), "a/val_cont_ce": y, "a/val_head_ce": h,
                               "a/tokens_per_s": tps})
                finite(train_loss, step, f"stage A, mask {mode}")
                print(f"[A {mode:>4}] step {s:>5d}/{args.a_steps}  val cont CE {ys[-1]:.4f}  {tps:,.0f} tok/s", flush=True)
        a_curves[mode], a_final[mode], a_head[mode] = (xs, ys), ys[-1], heads[-1]
        summary[f"a_ce_{mode}"], summary[f"a_ce_head_{mode}"] = ys[-1], heads[-1]
        summary[f"a_tokens_per_s_{mode}"] = tokens / (time.time() - t0)
        if mode == "gist":
            gist_model = copy.deepcopy(model)
    for neg in ("none", "neg"):                    # retention against our negative control and Mu et al.'s
        if {"gist", "full", neg} <= set(a_final):
            tag = "" if neg == "none" else "_neg"
            for part, ce in (("", a_final), ("_head", a_head)):
                r, raw, ok = retention(ce["gist"], ce["full"], ce[neg], args.a_min_gap)
                summary[f"a_retention{tag}{part}"], summary[f"a_retention{tag}{part}_unchecked"] = r, raw
                summary[f"a_gap_{neg}_full{part}"] = ce[neg] - ce["full"]        # the positive-control gap
                summary[f"a_control_ok{tag}{part}"] = ok
    # speed: gist-masked vs unmasked (plain causal) forward on the same batch
    with torch.no_grad():
        ids = gist_sequences(a_val[0], Lc, k, args.gist_id)
        t_mask = min_time(model, reps=5, input_ids=ids, attention_mask=masks["gist"], use_cache=False)
        t_plain = min_time(model, reps=5, input_ids=ids, use_cache=False)
    summary.update({"a_fwd_masked_s": t_mask, "a_fwd_unmasked_s": t_plain, "a_fwd_masked_ratio": t_mask / t_plain})
    plot_curves([("validation continuation CE (nats/token)", a_curves)],
                f"{log.run_name}: stage A, k={k}, Lc={Lc}, Lx={Lx}", os.path.join(log.run_dir, "stage_a.png"))
    if "a" in args.run_stages:
        print("[A] CE " + ", ".join(f"{m} {a_final[m]:.4f}" for m in a_final)
              + (f"; retention {summary['a_retention']:.3f} (first {args.a_head_tokens} tokens: "
                 + ("-" if summary["a_retention_head"] is None else f"{summary['a_retention_head']:.3f}") + ")"
                 if summary.get("a_retention") is not None else "")
              + f"; masked/unmasked forward {t_mask / t_plain:.2f}x", flush=True)
        if summary.get("a_control_ok") is False:
            print(f"[A] positive control FAILED: CE_none - CE_full = {summary['a_gap_none_full']:.3f} nats < --a-min-gap "
                  f"{args.a_min_gap}, so retention is not reported (a_retention None; the raw ratio is "
                  f"a_retention_unchecked). Train longer (--a-steps) or use a corpus where the context decides the "
                  f"continuation (--corpus repeat, letters or kv).", flush=True)
    return gist_model, step


def stage_b(args: Args, log: RunLog, gist_model, train_ids: torch.Tensor, val_ids: torch.Tensor, summary: dict,
            step: int) -> int:
    """Stage B: the self-produced semantic loss L_B, true CE and no update, each from stage A's gist
    model on the same chunks. Returns step."""
    Lc, k = args.context_len, args.num_gist_tokens
    b_val = fixed_val_windows(val_ids, Lc + 1, args.eval_batches * args.batch_size, args.seed, 2).view(
        args.eval_batches, args.batch_size, Lc + 1)
    b_curves, b_spread_curves = {}, {}
    for loss_name in args.b_losses:
        model = copy.deepcopy(gist_model)
        target = copy.deepcopy(gist_model).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=args.b_lr, weight_decay=args.weight_decay)
        b_gen = torch.Generator().manual_seed(args.seed + 1)     # same chunks for every loss
        xs, ys = [0], [val_ce(model, b_val)]
        spread_x, spread_pred, spread_true, grad_cos = [], [], [], []
        steps = args.b_steps if loss_name != "none" else 0
        for s in range(1, steps + 1):
            step += 1
            ids = sample_windows(train_ids, args.batch_size, Lc + 1, b_gen)
            if loss_name == "gist":
                loss, z_pred, z_true = semantic_loss(model, target, ids, args.gist_id, k,
                                                     args.soft_temperature, args.b_pred_encoder, args.b_center)
                if s % 10 == 0 or s == steps or s == 1:     # does L_B point where true CE points?
                    grad_cos.append(grad_cosine(loss, lm_ce(model, None, ids), list(model.parameters())))
            else:
                loss = lm_ce(model, None, ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            if args.b_target == "ema":
                ema_update_(target, model, args.b_ema)
            if s % args.eval_every == 0 or s == steps or (loss_name == "gist" and (s % 10 == 0 or s == 1)):
                row = {"stage": "b", "stage_step": s, "b/loss_name": loss_name, "b/train_loss": loss.item()}
                if loss_name == "gist":
                    spread_x.append(s)
                    spread_pred.append(mean_pairwise_cosine(z_pred.detach()))
                    spread_true.append(mean_pairwise_cosine(z_true))
                    row.update({"b/pair_cos_pred": spread_pred[-1], "b/pair_cos_true": spread_true[-1],
                                "b/eff_rank_pred": effective_rank(z_pred.detach()),
                                "b/eff_rank_true": effective_rank(z_true), "b/grad_cos_ce": grad_cos[-1]})
                if s % args.eval_every == 0 or s == steps:
                    xs.append(s), ys.append(val_ce(model, b_val))
                    row["b/val_ce"] = ys[-1]
                log.log(step, row)
                finite(row["b/train_loss"], step, f"stage B, loss {loss_name}")
                if "b/val_ce" in row:
                    print(f"[B {loss_name:>4}] step {s:>5d}/{steps}  val CE {ys[-1]:.4f}  "
                          f"train loss {row['b/train_loss']:.4f}", flush=True)
        if loss_name == "none":
            log.log(step, {"stage": "b", "stage_step": 0, "b/loss_name": "none", "b/val_ce": ys[0]})
        b_curves[loss_name] = (xs, ys)
        summary[f"b_val_ce_{loss_name}"] = ys[-1]
        summary["b_val_ce_start"] = ys[0]
        if loss_name == "gist":
            b_spread_curves = {"prediction (live encoder)" if args.b_pred_encoder == "online"
                               else "prediction (target encoder)": (spread_x, spread_pred),
                               f"ground truth ({args.b_target} target)": (spread_x, spread_true)}
            summary.update({"b_pair_cos_pred_final": spread_pred[-1], "b_pair_cos_true_final": spread_true[-1],
                            "b_pair_cos_pred_start": spread_pred[0], "b_pair_cos_true_start": spread_true[0],
                            "b_eff_rank_pred_final": effective_rank(z_pred.detach()),
                            "b_eff_rank_true_final": effective_rank(z_true),
                            "b_grad_cos_ce_mean": float(np.mean(grad_cos)), "b_grad_cos_ce_first": grad_cos[0]})
    plot_curves([("validation CE (nats/token)", b_curves),
                 ("mean pairwise cosine of the codes (1 = collapsed)", b_spread_curves)],
                f"{log.run_name}: stage B, target {args.b_target}, pred encoder {args.b_pred_encoder}",
                os.path.join(log.run_dir, "stage_b.png"))
    print("[B] val CE " + ", ".join(f"{n} {summary[f'b_val_ce_{n}']:.4f}" for n in args.b_losses), flush=True)
    return step


@dataclass
class MetaLearned:
    """What stage C hands to its evaluation."""
    model: nn.Module           # theta after stage C (meta-updated with --meta-theta, else unchanged)
    start_model: nn.Module     # theta at the start of stage C (stage A's gist model)
    phi: dict                  # learned gist parameters
    phi0: dict                 # their initial values (the 'fixed' rule)
    curves: dict               # per meta step: outer CE (theta') and CE before the inner step (theta)


def stage_c(args: Args, log: RunLog, gist_model, train_ids: torch.Tensor, summary: dict, step: int):
    """Stage C: in-situ second-order (or first-order) learning of the gist parameters phi.
    Returns (MetaLearned, step)."""
    k, L = args.num_gist_tokens, args.c_chunk_len
    device = train_ids.device
    model = copy.deepcopy(gist_model)
    theta = dict(model.named_parameters())
    emb_w = model.get_input_embeddings().weight
    phi = init_phi(emb_w[args.gist_id], k, args.gist_proj, args.learn_loss_scale)
    phi0 = {n: p.detach().clone() for n, p in phi.items()}
    start_model = copy.deepcopy(model)
    meta_params = list(phi.values()) + (list(theta.values()) if args.meta_theta else [])
    meta_opt = torch.optim.Adam(meta_params, lr=args.meta_lr)
    loss_c = functools.partial(gist_loss, gist_id=args.gist_id, temperature=args.soft_temperature,
                               stopgrad_target=args.c_stopgrad_target)
    c_gen = torch.Generator().manual_seed(args.seed + 2)
    if args.val_select == "similar":
        bank_starts = torch.randint(0, len(train_ids) - L, (args.bank_size,), generator=c_gen)
        bank = consecutive_chunks(train_ids, bank_starts, L, 1)[0]          # (M, L+1)

    # speed reference: the same computation with plain (first-order, no meta) backward passes
    _, ref_chunks = draw_train_chunks(train_ids, L, args.meta_batch_size, c_gen)
    t_plain_c = min_time(plain_backward_step, model, theta, phi, ref_chunks, loss_c)
    t_ce_c = min_time(ce_backward_step, model, theta, ref_chunks[0])
    meta_times, c_curves = [], {"outer CE (theta')": ([], []), "CE before inner step (theta)": ([], [])}
    for s in range(1, args.c_steps + 1):
        step += 1
        starts, chunks = draw_train_chunks(train_ids, L, args.meta_batch_size, c_gen)
        x_tr = chunks[0]
        if args.val_select == "next":
            x_val = chunks[1]
        else:
            if (s - 1) % args.bank_refresh == 0:
                bank_repr = torch.cat([chunk_repr(model, phi, b, args.sim_repr)
                                       for b in bank.split(args.meta_batch_size)])
            exclude = (bank_starts[None, :] - starts[:, None]).abs() <= L          # overlapping chunks
            pick = select_similar(chunk_repr(model, phi, x_tr, args.sim_repr), bank_repr, exclude.to(device))
            x_val = bank[pick]
        t0 = time.perf_counter()
        inner, outer, grads = meta_gradients(model, theta, phi, x_tr, x_val, args.inner_lr, loss_c,
                                             args.first_order, args.fd_eps, args.meta_theta)
        for n, p in list(phi.items()) + (list(theta.items()) if args.meta_theta else []):
            p.grad = grads[n]
        meta_opt.step()
        meta_opt.zero_grad(set_to_none=True)
        meta_times.append(time.perf_counter() - t0)
        outer_v = outer.item()
        with torch.no_grad():
            before = lm_ce(model, None, x_val).item()
        c_curves["outer CE (theta')"][0].append(s), c_curves["outer CE (theta')"][1].append(outer_v)
        c_curves["CE before inner step (theta)"][0].append(s), c_curves["CE before inner step (theta)"][1].append(before)
        row = {"stage": "c", "stage_step": s, "c/inner_loss": inner.item(), "c/outer_ce": outer_v,
               "c/ce_before": before, "c/inner_improvement": before - outer_v,
               "c/phi_gist_drift": float((phi["gist"].detach() - phi0["gist"]).norm()),
               "c/sec_per_meta_step": meta_times[-1]}
        if "log_scale" in phi:
            row["c/loss_scale"] = float(phi["log_scale"].detach().exp())
        if "proj" in phi:
            row["c/proj_drift"] = float((phi["proj"].detach() - phi0["proj"]).norm())
        log.log(step, row)
        finite(outer_v, step, "stage C, outer loss")
        finite(row["c/inner_loss"], step, "stage C, inner loss")
        if not all(torch.isfinite(p).all() for p in phi.values()):
            raise NonFinite(f"non-finite gist parameters after meta step {s} (step {step})")
        if s % max(1, args.c_steps // 10) == 0 or s == args.c_steps:
            print(f"[C] meta step {s:>4d}/{args.c_steps}  outer CE {outer_v:.4f}  improvement "
                  f"{before - outer_v:+.4f}  {np.mean(meta_times[-10:]):.2f} s/step", flush=True)
    sec_meta = float(np.mean(meta_times[2:] if len(meta_times) > 4 else meta_times))
    summary.update({"c_sec_per_meta_step": sec_meta, "c_sec_plain_step": t_plain_c, "c_sec_ce_step": t_ce_c,
                    "c_meta_vs_plain": sec_meta / t_plain_c, "c_meta_vs_ce_step": sec_meta / t_ce_c,
                    "c_mean_inner_improvement_last20":
                        float(np.mean(np.array(c_curves["CE before inner step (theta)"][1][-20:])
                                      - np.array(c_curves["outer CE (theta')"][1][-20:])))})
    if "log_scale" in phi:
        summary["c_loss_scale_final"] = float(phi["log_scale"].detach().exp())
    return MetaLearned(model, start_model, phi, phi0, c_curves), step


def evaluate_stage_c(args: Args, log: RunLog, learned: MetaLearned, val_ids: torch.Tensor, summary: dict,
                     step: int) -> int:
    """K steps of each update rule (learned L_gist, fixed L_gist, stage B's loss, true CE, none) on
    consecutive validation chunks, then CE on the next chunk; identical episodes for every rule."""
    k, L, K = args.num_gist_tokens, args.c_chunk_len, args.eval_inner_steps
    eval_model = learned.model if args.meta_theta else learned.start_model
    phi_learned = {n: p.detach() for n, p in learned.phi.items()}
    phi_fixed = {n: p.detach().clone() for n, p in learned.phi0.items()}
    frozen_target = copy.deepcopy(eval_model).requires_grad_(False)
    gist_kw = {"gist_id": args.gist_id, "temperature": args.soft_temperature}
    sg = args.c_stopgrad_target
    rules = {
        "learned": functools.partial(gist_rule_loss, phi=phi_learned, stopgrad_target=sg, **gist_kw),
        "fixed": functools.partial(gist_rule_loss, phi=phi_fixed, stopgrad_target=sg, **gist_kw),
        "stage_b": functools.partial(semantic_rule_loss, target=frozen_target, num_gist=k,
                                     pred_encoder=args.b_pred_encoder, center=args.b_center, **gist_kw),
        "ce": ce_rule_loss,
        "none": None,
    }
    e_gen = torch.Generator().manual_seed(args.seed + 3)
    e_starts = torch.randint(0, len(val_ids) - (K + 1) * L - 1, (args.c_eval_episodes, args.meta_batch_size),
                             generator=e_gen)
    results = {r: [] for r in rules}
    for e in range(args.c_eval_episodes):
        chunks = consecutive_chunks(val_ids, e_starts[e], L, K + 1)
        for r, fn in rules.items():
            results[r].append(finite(k_step_ce(eval_model, fn, chunks, args.inner_lr), step, f"stage C eval, {r}"))
    none = np.array(results["none"])
    for r, vals in results.items():
        vals = np.array(vals)
        summary[f"c_eval_ce_{r}"] = float(vals.mean())
        summary[f"c_eval_gain_{r}"] = float((none - vals).mean())      # CE lowered vs no update (nats)
        summary[f"c_eval_gain_std_{r}"] = float((none - vals).std())
    step += 1
    log.log(step, {"stage": "c", "stage_step": args.c_steps, **{f"c/eval_ce_{r}": summary[f"c_eval_ce_{r}"]
                                                               for r in rules}})
    before_c, outer_c = learned.curves["CE before inner step (theta)"], learned.curves["outer CE (theta')"]
    plot_curves([("inner-step gain CE(theta) - CE(theta') (nats)",
                  {"one inner step of L_gist": (before_c[0], list(np.array(before_c[1]) - np.array(outer_c[1])))}),
                 ("K-step gain vs none, next chunk (nats)",
                  {r: (list(range(args.c_eval_episodes)), list(none - np.array(results[r]))) for r in rules},
                  "evaluation episode")],
                f"{log.run_name}: stage C, val-select {args.val_select}, "
                f"{'first' if args.first_order else 'second'} order, K={K}", os.path.join(log.run_dir, "stage_c.png"))
    sec_meta = summary["c_sec_per_meta_step"]
    print("[C] CE lowered by K=%d steps (nats, vs none): " % K
          + ", ".join(f"{r} {summary[f'c_eval_gain_{r}']:+.4f}" for r in rules)
          + f"; meta step {sec_meta:.2f} s = {sec_meta / summary['c_sec_plain_step']:.2f}x plain step", flush=True)
    return step


def online_phase(args: Args, log: RunLog, learned: MetaLearned, val_ids: torch.Tensor, summary: dict,
                 step: int) -> int:
    """Plan 3 as the seed wrote it: from stage C's start model (its meta-updated model with
    --meta-theta), theta keeps every one of N = --c-online-steps SGD steps (lr alpha) on a stream of
    consecutive validation chunks (--meta-batch-size parallel streams), each rule of
    --c-online-rules on the same stream; gist_meta starts from stage C's phi and keeps meta-learning
    it online on the next chunk. Reports the CE of every chunk before theta learns from it (online,
    prequential CE), its mean over the whole stream and over the last quarter."""
    L, N, k = args.c_chunk_len, args.c_online_steps, args.num_gist_tokens
    start_model = learned.model if args.meta_theta else learned.start_model
    frozen_target = copy.deepcopy(start_model).requires_grad_(False)
    o_gen = torch.Generator().manual_seed(args.seed + 4)
    starts = torch.randint(0, len(val_ids) - (N + 1) * L - 1, (args.meta_batch_size,), generator=o_gen)
    chunks = consecutive_chunks(val_ids, starts, L, N + 1)
    gist_fn = functools.partial(gist_loss, gist_id=args.gist_id, temperature=args.soft_temperature,
                                stopgrad_target=args.c_stopgrad_target)
    loss_fns = {"gist_meta": gist_fn, "gist_fixed": gist_fn, "none": None, "ce": ce_online_loss,
                "stage_b": functools.partial(semantic_online_loss, target=frozen_target, gist_id=args.gist_id,
                                             num_gist=k, temperature=args.soft_temperature,
                                             pred_encoder=args.b_pred_encoder, center=args.b_center)}
    curves, q = {}, max(1, (N + 1) // 4)
    for rule in args.c_online_rules:
        t0 = time.time()
        ces, _ = online_stream(start_model, rule, chunks, args.inner_lr, phi=learned.phi, loss_fn=loss_fns[rule],
                               meta_lr=args.meta_lr, first_order=args.first_order, fd_eps=args.fd_eps)
        ces = ces.cpu().numpy()
        if not np.isfinite(ces).all():
            raise NonFinite(f"non-finite CE in the online phase, rule {rule} (step {step})")
        curves[rule] = (list(range(N + 1)), list(ces))
        summary[f"c_online_ce_{rule}"] = float(ces.mean())
        summary[f"c_online_ce_last_{rule}"] = float(ces[-q:].mean())
        summary[f"c_online_sec_{rule}"] = time.time() - t0
        for t in range(0, N + 1, max(1, N // 20)):
            step += 1
            log.log(step, {"stage": "c_online", "stage_step": t, "c_online/rule": rule, "c_online/ce": float(ces[t])})
        print(f"[C online] {rule:>10}: CE over the stream {ces.mean():.4f}, last quarter {ces[-q:].mean():.4f}",
              flush=True)
    if "none" in curves:
        for rule in curves:
            summary[f"c_online_gain_{rule}"] = summary["c_online_ce_none"] - summary[f"c_online_ce_{rule}"]
    plot_curves([("CE of each chunk before learning from it (nats)", curves, "stream step")],
                f"{log.run_name}: online phase, N={N}, alpha={args.inner_lr}", os.path.join(log.run_dir,
                                                                                       "stage_c_online.png"))
    return step


def train(args: Args, log: RunLog) -> dict:
    """Stage A (always: B and C start from its gist model), then B and C as --stage asks, in order;
    x-axis `step` counts the optimizer/meta steps of all stages. Writes the plots (and a BPE
    tokenizer) into log.run_dir; returns the summary ("status" names a non-finite loss)."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)
    tok, train_ids, val_ids, source = load_data(args)
    model, model_info = load_model(args)
    model.to(device)
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)
    tok.save(log.run_dir)
    print(f"{log.run_name}: {source}; {len(train_ids)} train / {len(val_ids)} val tokens; "
          f"{model_info['n_params'] / 1e6:.2f}M params; stages {','.join(args.run_stages)}", flush=True)
    summary = {"status": "ok", "stage": args.stage, "seed": args.seed, "corpus": source,
               "n_params": model_info["n_params"], "train_tokens": len(train_ids), "val_tokens": len(val_ids)}
    step = 0                                                          # x-axis: steps of all stages in order
    t_start = time.time()
    try:
        gist_model, step = stage_a(args, log, model, train_ids, val_ids, summary, step)
        if "b" in args.run_stages:
            step = stage_b(args, log, gist_model, train_ids, val_ids, summary, step)
        if "c" in args.run_stages:
            learned, step = stage_c(args, log, gist_model, train_ids, summary, step)
            step = evaluate_stage_c(args, log, learned, val_ids, summary, step)
            step = online_phase(args, log, learned, val_ids, summary, step)
    except NonFinite as e:
        summary["status"] = str(e)
    summary["wall_time_s"] = time.time() - t_start
    print(f"{log.run_name}: done in {summary['wall_time_s']:.1f} s -> {log.run_dir}", flush=True)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")                      # local checkpoints and tokenizers only
    args = parse_args("gist_meta.py", Args, finalize_args)
    sys.exit(run_experiment("gist_meta.py", args, train, x_axis="step"))
