"""self_critic_lm.py: a language model trained on its own critic's targets; when does it reward-hack?

Question (seed 004, METALEARN plan 1): a language model can learn "indefinitely" if it produces the
tokens it trains against itself. Here the same network has a second mode, a critic that reads
(predicted token, true token, [LOSS]) triples and says at each [LOSS] position which token the LM
should have produced. After a meta phase that teaches the critic, the LM trains only on the
critic's argmax targets. The seed reports that a live (non-frozen) critic is reward-hacked in ~5
steps and a frozen copy in ~750 (judged by eye). We measure when hacking starts, automatically,
over seeds, and which of the seed's mitigations delays it.

Notation: x_1..x_L is an LM window (L = --block-size), y_i = x_{i+1} its true next tokens,
f the network, p_i = argmax_v f(x)_i,v (the LM's own prediction, detached, specials excluded).
    critic input  c = (p_1, y_1, [LOSS], p_2, y_2, [LOSS], ..., p_L, y_L, [LOSS])      (B, 3L)
    critic output g_i = f(c)_{3i+2}  (logits at the i-th [LOSS] position, 0-based i)    (B, L, V)
    phase 1 (meta, --meta-steps):   loss = CE(f(x), y) + CE(g, y)    [+ CE(g~, y) with --adversarial]
    phase 2 (self, --self-steps):   t_i = argmax_v g_i,v under no_grad, critic f' in {online, frozen, ema}
                                    loss = CE(f(x), t)       (y enters only through the critic's input)
The causal critic sees y_i one position before it must output the target, so a perfect critic
just copies it; the seed calls the task "trivial" for that reason. The question is whether the
self-produced target stays anchored to the truth while the LM moves away from the data the
critic was trained on.
    online  the critic is the live model (same weights as the LM being updated)
    frozen  a copy taken at the start of phase 2, never updated
    ema     theta' <- d * theta' + (1 - d) * theta after every self step, d = --ema-decay
Mitigations (seed's list): --adversarial True adds critic triples whose predicted tokens are
replaced by uniform random tokens (probability --adv-random) or else sampled from the LM at
temperature --adv-temperature (a drifted model), so the critic learns to ignore p and point at y;
a longer meta phase is just --meta-steps; --hack-guard True watches held-out CE during phase 2 and,
when the hack detector fires, restores the weights of the best evaluation so far, runs
--guard-meta-steps meta steps (true labels), re-takes the critic copy, and resumes self training.

Hack detector (detect_hack): phase-2 evaluations j = 0, 1, ... (self step s_j, s_0 = 0 is the
model phase 1 produced) give the held-out CE c_j and the held-out self loss l_j (CE of the LM
against the critic's targets on the same validation windows). The hack step is s_j for the first
j >= 1 such that c_j, ..., c_{j+k-1} are ALL above min(c_0..c_{j-1}) + delta AND l_{j+k-1} is
below l_b, b = argmin(c_0..c_{j-1}): the true CE left its best and stayed up for k evaluations
while the proxy kept improving past where it was at the best. delta = --hack-delta (nats),
k = --hack-patience. None when that never happens.

Model: a Llama-style causal LM (GQA, RoPE, RMSNorm, SwiGLU, tied embeddings) built from a config
with Hugging Face transformers, or any local checkpoint (--model-name-or-path); one [LOSS] token
is added to the vocabulary. Data: pydoc_data.topics from the standard library by default
(always offline), or --text-path / --hf-dataset; the text is split into train and validation.
Byte-level tokenizer by default, or --tokenizer bpe (trained on the train split, saved to the
run folder) or a tokenizer.json / pretrained tokenizer folder. Nothing is downloaded.

Run:      python self_critic_lm.py --critic frozen          (online | frozen | ema)
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: step = optimizer steps of both
          phases), summary.json (hack step, CE curve, samples), self_critic.png, tokenizer.json (BPE)
Runtime:  defaults (1.0M params, byte vocab + [LOSS], batch 16 x 32 tokens, 50 meta + 200 self
          steps, frozen critic) took 190-275 s wall on one thread of the shared 2-core CPU, two runs
          at a time (benchmark/self_critic.sh). A self step costs 2.3x a plain LM step on the same
          batch (benchmark/self_critic_speed.py).
Result:   (3 seeds, README; this tiny scale only) after 50 meta steps the critic agrees with the
          true token 21-69% of the time and every critic mode is hacked within 4-16 self steps
          (online 5.3 +- 1.9, frozen 8.0 +- 5.7; 3.7 vs 6.3 at one-step resolution): online <=
          frozen by 0-8 steps, not the seed's online << frozen. With 150 meta steps (critic
          agreement ~94%) the frozen critic never hacked in 200 self steps (3/3), nor in 800 after
          100 meta steps (1 seed); adversarial critic triples delayed it (2/3 hacked, at 4 and
          125); the guard restores and ends lowest.
"""

import copy
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

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
    """seed of python, numpy and torch (data order, init, sampling)"""
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

    # ---- data, tokenizer, model ----
    text_path: Optional[str] = None
    """train on this UTF-8 text file instead of the default corpus (pydoc_data.topics)"""
    hf_dataset: Optional[str] = None
    """Hugging Face dataset NAME or NAME:CONFIG (split 'train', column 'text'); needs `datasets` and a local cache"""
    val_fraction: float = 0.1
    """last fraction of the text (in characters) held out for validation"""
    tokenizer: str = "byte"
    """byte (256 byte ids + specials), bpe (byte-level BPE trained on the train split), or a tokenizer.json / pretrained tokenizer folder"""
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
    block_size: int = 32
    """L: tokens per LM window; the critic reads 3L tokens"""

    # ---- optimisation ----
    batch_size: int = 16
    """windows per step"""
    learning_rate: float = 1e-3
    """AdamW learning rate of phase 1 (and of the guard's meta steps)"""
    self_learning_rate: Optional[float] = None
    """AdamW learning rate of phase 2; None uses --learning-rate"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip"""
    meta_steps: int = 50
    """phase 1 steps: LM CE + critic CE on true tokens"""
    self_steps: int = 200
    """phase 2 steps: LM CE against the critic's argmax targets"""
    torch_threads: int = 1
    """torch CPU threads; on a shared 2-core machine one is fastest"""

    # ---- critic and mitigations ----
    critic: str = "frozen"
    """phase-2 critic: online (the live model), frozen (copy at the start of phase 2), ema (EMA copy)"""
    ema_decay: float = 0.99
    """d in theta' <- d theta' + (1 - d) theta (--critic ema)"""
    adversarial: bool = False
    """phase 1 also trains the critic on triples with perturbed predicted tokens (one extra critic pass)"""
    adv_random: float = 0.5
    """adversarial triples: probability that p_i is a uniform random token instead of a sample"""
    adv_temperature: float = 2.0
    """adversarial triples: other p_i are sampled from the LM's softmax at this temperature"""
    hack_guard: bool = False
    """phase 2: when the detector fires, restore the best weights and run --guard-meta-steps meta steps"""
    guard_meta_steps: int = 50
    """M: meta steps the guard runs before self training resumes"""
    hack_delta: float = 0.05
    """delta: nats of validation CE above the phase-2 best that count as a rise"""
    hack_patience: int = 3
    """k: consecutive evaluations the rise must last"""

    # ---- evaluation ----
    eval_every: int = 25
    """evaluate every this many steps (phase 2 also at self steps 1, 2, 4, 8, ... below it)"""
    eval_windows: int = 32
    """fixed validation windows for val CE, critic agreement, KL and the self loss"""
    sample_prompts: int = 4
    """greedy samples per evaluation (prompts are the first 16 tokens of validation windows)"""
    sample_tokens: int = 64
    """new tokens per greedy sample"""

    # ---- derived at runtime ----
    critic_len: tyro.conf.Suppress[int] = 0
    """3 * block_size: length of a critic sequence"""
    n_vocab: tyro.conf.Suppress[int] = 0
    """tokenizer vocabulary including [LOSS]"""
    loss_id: tyro.conf.Suppress[int] = 0
    """token id of [LOSS]"""
    n_params: tyro.conf.Suppress[int] = 0
    """model parameters"""
    corpus: tyro.conf.Suppress[str] = ""
    """where the text came from, with a hash"""
    train_tokens: tyro.conf.Suppress[int] = 0
    """tokens in the train split"""
    val_tokens: tyro.conf.Suppress[int] = 0
    """tokens in the validation split"""


CRITICS = ("online", "frozen", "ema")
SPECIALS = ("[LOSS]",)
PROMPT_LEN = 16


def finalize_args(args: Args) -> Args:
    """Check the arguments that need no data; a ValueError carries a one-line reason."""
    if args.critic not in CRITICS:
        raise ValueError(f"unknown --critic {args.critic!r}; choose one of {', '.join(CRITICS)}")
    for name in ("block_size", "batch_size", "meta_steps", "eval_every", "eval_windows", "torch_threads",
                 "hack_patience", "sample_tokens", "n_embd", "n_layer", "n_head", "n_kv_head"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("self_steps", "guard_meta_steps", "sample_prompts", "hack_delta"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be non-negative, got {getattr(args, name)}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"--ema-decay must lie in [0, 1], got {args.ema_decay}")
    if not 0.0 <= args.adv_random <= 1.0 or args.adv_temperature <= 0:
        raise ValueError("need 0 <= --adv-random <= 1 and --adv-temperature > 0")
    if args.n_head % args.n_kv_head:
        raise ValueError(f"--n-kv-head {args.n_kv_head} does not divide --n-head {args.n_head}")
    if args.n_embd % args.n_head:
        raise ValueError(f"--n-head {args.n_head} does not divide --n-embd {args.n_embd}")
    if args.text_path is not None and args.hf_dataset is not None:
        raise ValueError("give at most one of --text-path and --hf-dataset")
    if args.model_name_or_path is not None and not os.path.exists(args.model_name_or_path):
        raise ValueError(f"--model-name-or-path {args.model_name_or_path!r} does not exist (only local checkpoints are loaded)")
    if args.self_learning_rate is None:
        args.self_learning_rate = args.learning_rate
    args.critic_len = 3 * args.block_size
    return args


# ==================================================================================================
# Data and tokenizer (shared with gist_meta.py)
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


# ==================================================================================================
# Model (shared with gist_meta.py)
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


# ==================================================================================================
# Algorithm (pure functions; tests import them)
# ==================================================================================================
def critic_input(pred: torch.Tensor, true: torch.Tensor, loss_id: int) -> torch.Tensor:
    """(B, 3L) sequence p_1, y_1, [LOSS], p_2, y_2, [LOSS], ... from pred, true of shape (B, L)."""
    loss_col = torch.full_like(true, loss_id)
    return torch.stack([pred, true, loss_col], dim=-1).flatten(1)


def loss_positions(length: int, device=None) -> torch.Tensor:
    """(L,) indices 2, 5, 8, ... of the [LOSS] tokens in a critic sequence for an L-token window."""
    return torch.arange(length, device=device) * 3 + 2


def lm_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def critic_logits(model, pred: torch.Tensor, true: torch.Tensor, loss_id: int) -> torch.Tensor:
    """(B, L, V): the critic's logits at the [LOSS] positions, i.e. its target for each LM position."""
    logits = lm_logits(model, critic_input(pred, true, loss_id))
    return logits[:, loss_positions(true.shape[1], true.device)]


def masked_argmax(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """argmax over the vocabulary with the banned ids (specials, unused rows) excluded."""
    return logits.masked_fill(banned, float("-inf")).argmax(-1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def adversarial_predictions(logits: torch.Tensor, banned: torch.Tensor, p_random: float,
                            temperature: float) -> torch.Tensor:
    """Drifted 'predicted' tokens for adversarial critic triples: each position is, with probability
    p_random, a uniform random allowed token, else a sample from softmax(logits / temperature)."""
    allowed = (~banned).nonzero().squeeze(-1)
    random_tok = allowed[torch.randint(len(allowed), logits.shape[:-1], device=logits.device)]
    probs = torch.softmax(logits.detach().float().masked_fill(banned, float("-inf")) / temperature, -1)
    sampled = torch.multinomial(probs.flatten(0, 1), 1).view(logits.shape[:-1])
    use_random = torch.rand(logits.shape[:-1], device=logits.device) < p_random
    return torch.where(use_random, random_tok, sampled)


def meta_loss(model, x, y, loss_id: int, banned, adversarial: bool = False, adv_random: float = 0.5,
              adv_temperature: float = 2.0):
    """Phase 1: (total, LM CE, critic CE, adversarial critic CE or 0) on windows x -> y, (B, L) each."""
    logits = lm_logits(model, x)
    lm = cross_entropy(logits, y)
    critic = cross_entropy(critic_logits(model, masked_argmax(logits.detach(), banned), y, loss_id), y)
    adv = torch.zeros((), device=x.device)
    if adversarial:
        drifted = adversarial_predictions(logits, banned, adv_random, adv_temperature)
        adv = cross_entropy(critic_logits(model, drifted, y, loss_id), y)
    return lm + critic + adv, lm, critic, adv


def self_loss(model, critic, x, y, loss_id: int, banned):
    """Phase 2: (CE(f(x), t), fraction t == y), t = the critic's argmax targets computed without gradient.
    `critic` may be `model` itself (online critic): the targets then come from the current weights."""
    logits = lm_logits(model, x)
    with torch.no_grad():
        targets = masked_argmax(critic_logits(critic, masked_argmax(logits.detach(), banned), y, loss_id), banned)
    return cross_entropy(logits, targets), (targets == y).float().mean()


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter (float buffers copied)."""
    tp, sp = list(target.parameters()), list(source.parameters())
    torch._foreach_lerp_(tp, sp, 1.0 - decay)
    for tb, sb in zip(target.buffers(), source.buffers()):
        tb.copy_(sb)


def detect_hack(val_ce, self_losses, delta: float, k: int) -> Optional[int]:
    """Index j of the first evaluation (j >= 1) after which validation CE stays more than delta above
    its best so far for k evaluations (c_j..c_{j+k-1} > min(c_0..c_{j-1}) + delta) while the self
    loss fell below its value at that best (l_{j+k-1} < l_b, b = argmin c_0..c_{j-1}). None if never."""
    for j in range(1, len(val_ce) - k + 1):
        b = int(np.argmin(val_ce[:j]))
        if all(c > val_ce[b] + delta for c in val_ce[j:j + k]) and self_losses[j + k - 1] < self_losses[b]:
            return j
    return None


def kl_from_reference(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_model || p_ref) in nats."""
    logp, logq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def distinct_n(seqs, n: int) -> float:
    """Mean over sequences of (distinct n-grams / n-grams)."""
    vals = []
    for s in seqs:
        grams = [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
        if grams:
            vals.append(len(set(grams)) / len(grams))
    return float(np.mean(vals)) if vals else float("nan")


def repetition_rate(seqs, n: int = 4) -> float:
    """Mean over sequences of the fraction of n-grams that already occurred earlier in the same
    sequence (= 1 - distinct-n); 0 for varied text, near 1 for a loop."""
    return 1.0 - distinct_n(seqs, n)


def phase2_eval_steps(self_steps: int, eval_every: int) -> list[int]:
    """Self steps at which phase 2 evaluates: 0, 1, 2, 4, 8, ... below eval_every, multiples of
    eval_every, and the last step (dense at first, to resolve a fast hack)."""
    steps = {0, self_steps} | set(range(eval_every, self_steps + 1, eval_every))
    k = 1
    while k < min(eval_every, self_steps):
        steps.add(k)
        k *= 2
    return sorted(steps)


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
def make_run_dir(exp_name: str, seed: int, root: str = "runs") -> tuple[str, str]:
    """Create runs/{exp_name}__{seed}__{unix time}[-k] atomically; returns (run_name, run_dir)."""
    base = f"{exp_name}__{seed}__{int(time.time())}"
    for k in range(10_000):
        run_name = base if k == 0 else f"{base}-{k}"
        run_dir = os.path.join(root, run_name)
        try:
            os.makedirs(run_dir)
            return run_name, run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run folder for {base}")
# <<< copied: run-name


# >>> copied: wandb-init
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
def _to_builtin(value):
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return str(value)


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_to_builtin)


class RunLog:
    """runs/{run_name}/: config.json (vars(args) + argv), metrics.jsonl (one row per log call, the
    x-axis first), summary.json; with --track every row and the summary also go to W&B."""

    def __init__(self, args, run_name: str, run_dir: str, x_axis: str):
        self.run_dir, self.x_axis = run_dir, x_axis
        write_json(os.path.join(run_dir, "config.json"), {"args": vars(args), "argv": sys.argv, "x_axis": x_axis})
        self.metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        self.wandb = init_wandb(args, run_name, run_dir, x_axis) if args.track else None

    def log(self, x: int, row: dict) -> None:
        row = {self.x_axis: x, **row}
        self.metrics.write(json.dumps(row, default=_to_builtin) + "\n")
        if self.wandb is not None:
            self.wandb.log(row)

    def summary(self, summary: dict) -> None:
        write_json(os.path.join(self.run_dir, "summary.json"), summary)
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})

    def close(self) -> None:
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()
# <<< copied: outputs


# ==================================================================================================
# Evaluation and plots
# ==================================================================================================
@torch.no_grad()
def evaluate(model, critic, ref, val_x, val_y, loss_id: int, banned) -> dict:
    """Held-out numbers on fixed validation windows (one host sync): true CE, the self loss (CE of
    the LM against `critic`'s targets), the critic's agreement with the true token, and the KL of
    the LM from `ref` (the phase-2 starting model; None in phase 1)."""
    was_training = model.training
    model.eval()
    logits = lm_logits(model, val_x)
    targets = masked_argmax(critic_logits(critic, masked_argmax(logits, banned), val_y, loss_id), banned)
    vals = [cross_entropy(logits, val_y), cross_entropy(logits, targets), (targets == val_y).float().mean()]
    if ref is not None:
        vals.append(kl_from_reference(logits, lm_logits(ref, val_x)))
    vals = torch.stack(vals).tolist()
    model.train(was_training)
    out = {"val/ce": vals[0], "val/self_loss": vals[1], "val/critic_agreement": vals[2]}
    if ref is not None:
        out["val/kl_from_start"] = vals[3]
    return out


@torch.no_grad()
def greedy_samples(model, prompts: torch.Tensor, n_new: int, banned_ids: list[int]) -> tuple[list[list[int]], float]:
    """(new token ids per prompt, generated tokens per second) of greedy decoding with the KV cache."""
    was_training = model.training
    model.eval()
    t0 = time.time()
    out = model.generate(prompts, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, use_cache=True,
                         pad_token_id=0, suppress_tokens=banned_ids)
    dt = time.time() - t0
    model.train(was_training)
    new = out[:, prompts.shape[1]:].tolist()
    return new, len(prompts) * n_new / max(dt, 1e-9)


def median_of(rows: list[dict], phase: Optional[int], key: str) -> Optional[float]:
    """Median of a logged per-evaluation number over the rows of one phase (None: all rows)."""
    vals = [r[key] for r in rows if key in r and (phase is None or r["phase"] == phase)]
    return float(np.median(vals)) if vals else None


def plot_run(rows: list[dict], meta_end: int, hack_step: Optional[int], guard_steps: list[int], title: str,
             path: str) -> None:
    """Top: validation CE and held-out self loss against the global step, phase boundary and hack step
    marked; bottom: the critic's agreement with the truth and the KL from the phase-2 start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [r for r in rows if "val/ce" in r]
    x = [r["step"] for r in ev]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax.plot(x, [r["val/ce"] for r in ev], "-o", ms=2, color="C0", label="validation CE (true)")
    ax.plot(x, [r["val/self_loss"] for r in ev], "-o", ms=2, color="C1", label="self loss (vs critic targets)")
    ax2.plot(x, [r["val/critic_agreement"] for r in ev], color="C2", label="critic agreement with y")
    kl = [(r["step"], r["val/kl_from_start"]) for r in ev if "val/kl_from_start" in r]
    if kl:
        ax2b = ax2.twinx()
        ax2b.plot(*zip(*kl), color="C5", label="KL from phase-2 start")
        ax2b.set_ylabel("KL from phase-2 start (nats)", color="C5")
    for a in (ax, ax2):
        a.axvline(meta_end, color="gray", ls="--", lw=1)
        for g in guard_steps:
            a.axvline(g, color="C4", ls=":", lw=1)
        if hack_step is not None:
            a.axvline(hack_step, color="red", lw=1.5)
    ax.set(ylabel="nats / token", title=title + ("" if hack_step is None else "  (red: hack step)"))
    ax2.set(xlabel="step (meta | self; dashed: phase boundary, dotted: guard restores)", ylabel="agreement")
    ax.legend(fontsize=8)
    ax2.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ==================================================================================================
# Main
# ==================================================================================================
def prepare(args: Args, device: torch.device):
    """Corpus, tokenizer, token tensors and model; every bad input raises a one-line ValueError here,
    before a run folder exists."""
    train_text, val_text, args.corpus = load_corpus(args)
    tok = build_tokenizer(args, train_text, SPECIALS)
    train_ids = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text), dtype=torch.long)
    check_token_counts(train_ids, val_ids, max(args.block_size + 1, PROMPT_LEN), f"--block-size {args.block_size}")
    n_positions = max(args.critic_len, PROMPT_LEN + args.sample_tokens)
    model, info = build_lm(args, tok.n_vocab, n_positions)
    args.n_vocab, args.loss_id, args.n_params = tok.n_vocab, tok.special_ids["[LOSS]"], info["n_params"]
    args.train_tokens, args.val_tokens = len(train_ids), len(val_ids)
    return tok, train_ids.to(device), val_ids.to(device), model.to(device), info


if __name__ == "__main__":
    args = tyro.cli(Args, config=(tyro.conf.FlagConversionOff,))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")            # nothing is ever downloaded
    torch.set_num_threads(args.torch_threads)
    seed_everything(args.seed, args.torch_deterministic)
    device = pick_device(args.cuda)
    try:
        finalize_args(args)
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        tok, train_ids, val_ids, model, model_info = prepare(args, device)
    except ValueError as e:
        sys.exit(f"self_critic_lm.py: error: {e}")
    seed_everything(args.seed, args.torch_deterministic)     # same stream whatever prepare() consumed
    run_name, run_dir = make_run_dir(args.exp_name, args.seed)
    log = RunLog(args, run_name, run_dir, x_axis="step")
    tokenizer_path = tok.save(run_dir)

    # ids the model must never produce as a token: the specials and embedding rows past the tokenizer
    n_rows = model_info["n_rows"]
    banned = torch.zeros(n_rows, dtype=torch.bool, device=device)
    banned[list(tok.special_ids.values())] = True
    banned[tok.n_vocab:] = True
    banned_ids = banned.nonzero().squeeze(-1).tolist()

    data_gen = torch.Generator().manual_seed(args.seed)                 # training windows
    eval_batch = sample_windows(val_ids, args.eval_windows, args.block_size + 1, torch.Generator().manual_seed(0))
    val_x, val_y = eval_batch[:, :-1], eval_batch[:, 1:]
    prompts = eval_batch[:args.sample_prompts, :PROMPT_LEN]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    tokens_per_step = args.batch_size * args.block_size                  # LM tokens (the critic reads 3x)

    rows, status, step = [], "ok", 0
    samples = {}

    def train_batch():
        batch = sample_windows(train_ids, args.batch_size, args.block_size + 1, data_gen)
        return batch[:, :-1], batch[:, 1:]

    def optimizer_step(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()

    def meta_step():
        x, y = train_batch()
        loss, lm, crit, adv = meta_loss(model, x, y, args.loss_id, banned, args.adversarial, args.adv_random,
                                        args.adv_temperature)
        optimizer_step(loss)
        return torch.stack([loss.detach(), lm.detach(), crit.detach(), adv.detach()])

    def record(phase: int, self_step: int, critic, ref, train_row: dict, t_steps: float, n_steps: int) -> dict:
        """Evaluate, sample, log one row and print a progress line; returns the row."""
        row = {"phase": phase, "self_step": self_step, **train_row,
               **evaluate(model, critic, ref, val_x, val_y, args.loss_id, banned)}
        if n_steps:
            row["perf/train_tokens_per_s"] = n_steps * tokens_per_step / max(t_steps, 1e-9)
            row["perf/ms_per_step"] = 1000 * t_steps / n_steps
        if args.sample_prompts:
            gen, gen_tps = greedy_samples(model, prompts, args.sample_tokens, banned_ids)
            row.update({"gen/distinct_1": distinct_n(gen, 1), "gen/distinct_2": distinct_n(gen, 2),
                        "gen/repetition_rate": repetition_rate(gen), "perf/gen_tokens_per_s": gen_tps})
            row["_sample"] = tok.decode(prompts[0].tolist()) + " ||| " + tok.decode(gen[0])
        log.log(step, {k: v for k, v in row.items() if k != "_sample"})
        row = {"step": step, **row}
        rows.append(row)
        print(f"phase {phase} step {step:5d} self {self_step:4d}  val CE {row['val/ce']:.3f}  self loss "
              f"{row['val/self_loss']:.3f}  agree {row['val/critic_agreement']:.3f}"
              + (f"  {row['perf/train_tokens_per_s']:.0f} tok/s" if n_steps else ""), flush=True)
        return row

    def finite(values: torch.Tensor) -> bool:
        return bool(torch.isfinite(values).all())

    def run_meta(n: int, phase: int) -> bool:
        """n meta steps; phase 1 evaluates every --eval-every steps. False on a non-finite loss."""
        global step, status
        acc, count, t0 = torch.zeros(4, device=device), 0, time.time()
        for i in range(1, n + 1):
            acc += meta_step()
            step, count = step + 1, count + 1
            if i == n or (phase == 1 and i % args.eval_every == 0):
                m = (acc / count).tolist()
                if not finite(acc):
                    status = f"non-finite loss at step {step} (meta loss {m[0]})"
                    return False
                if phase == 1:
                    record(1, 0, model, None, {"train/meta_loss": m[0], "train/lm_ce": m[1], "train/critic_ce": m[2],
                                               "train/adv_critic_ce": m[3]}, time.time() - t0, count)
                acc, count, t0 = torch.zeros(4, device=device), 0, time.time()
        return True

    start = time.time()

    # ---- phase 1: meta training (LM CE + critic CE on true tokens) ----
    print(f"{run_name}: {args.n_params:,} params, vocab {args.n_vocab}, corpus {args.corpus}, "
          f"{args.train_tokens:,} train / {args.val_tokens:,} val tokens; critic {args.critic}", flush=True)
    record(1, 0, model, None, {}, 0.0, 0)
    ok = run_meta(args.meta_steps, 1)
    meta_end = step
    phase1_ce = rows[-1]["val/ce"]

    # ---- phase 2: self training against the critic's argmax targets ----
    guard_steps, hack_rows, segment = [], [], []     # segment: phase-2 evals since the last guard restore
    self_time, self_count = 0.0, 0
    if ok and args.self_steps > 0:
        for group in optimizer.param_groups:
            group["lr"] = args.self_learning_rate
        ref = copy.deepcopy(model).eval().requires_grad_(False)          # the phase-2 starting model (KL)
        critic = model if args.critic == "online" else copy.deepcopy(ref)  # frozen/ema: a copy of the start
        eval_at = set(phase2_eval_steps(args.self_steps, args.eval_every))
        best_state = None
        acc, count, t0 = torch.zeros(2, device=device), 0, time.time()
        for self_step in range(0, args.self_steps + 1):
            if self_step > 0:
                x, y = train_batch()
                loss, agree = self_loss(model, critic, x, y, args.loss_id, banned)
                optimizer_step(loss)
                if args.critic == "ema":
                    ema_update_(critic, model, args.ema_decay)
                acc += torch.stack([loss.detach(), agree])
                step, count = step + 1, count + 1
            if self_step not in eval_at:
                continue
            dt = time.time() - t0
            self_time, self_count = self_time + dt, self_count + count
            m = (acc / max(count, 1)).tolist()
            if not finite(acc):
                status = f"non-finite loss at step {step} (self loss {m[0]})"
                break
            train_row = {"train/self_loss": m[0], "train/critic_agreement": m[1]} if count else {}
            row = record(2, self_step, critic, ref, {**train_row, "guard/restores": len(guard_steps)}, dt, count)
            samples.setdefault("phase2_start", row.get("_sample"))
            hack_rows.append(row)
            segment.append(row)
            if args.hack_guard and (len(segment) == 1 or row["val/ce"] <= min(r["val/ce"] for r in segment[:-1])):
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
            if args.hack_guard and self_step < args.self_steps and detect_hack(
                    [r["val/ce"] for r in segment], [r["val/self_loss"] for r in segment], args.hack_delta,
                    args.hack_patience) is not None:
                # restore the best weights of this segment, re-learn from true labels, re-take the critic
                guard_steps.append(step)
                model.load_state_dict(best_state[0])
                optimizer.load_state_dict(best_state[1])
                for group in optimizer.param_groups:
                    group["lr"] = args.learning_rate
                if not run_meta(args.guard_meta_steps, 2):
                    break
                for group in optimizer.param_groups:
                    group["lr"] = args.self_learning_rate
                if args.critic != "online":
                    critic.load_state_dict(model.state_dict())
                print(f"  hack guard: restored the best weights, {args.guard_meta_steps} meta steps, critic re-taken",
                      flush=True)
                segment = [record(2, self_step, critic, ref, {"guard/restores": len(guard_steps)}, 0.0, 0)]
                hack_rows.append(segment[0])
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
            acc, count, t0 = torch.zeros(2, device=device), 0, time.time()
    wall_time = time.time() - start

    # ---- hack detection on the whole phase-2 curve, summary, plot ----
    ce_curve = [(r["self_step"], r["step"], r["val/ce"], r["val/self_loss"]) for r in hack_rows]
    j = detect_hack([c[2] for c in ce_curve], [c[3] for c in ce_curve], args.hack_delta, args.hack_patience)
    hack_self_step = None if j is None else ce_curve[j][0]
    hack_global = None if j is None else ce_curve[j][1]
    if j is not None:
        samples["at_hack"] = hack_rows[j].get("_sample")
    samples["end"] = rows[-1].get("_sample") if rows else None
    samples["phase1_start"] = rows[0].get("_sample") if rows else None
    p2 = [c[2] for c in ce_curve]
    summary = {
        "status": status, "critic": args.critic, "ema_decay": args.ema_decay, "adversarial": args.adversarial,
        "hack_guard": args.hack_guard, "meta_steps": args.meta_steps, "self_steps": args.self_steps,
        "seed": args.seed, "n_params": args.n_params, "n_vocab": args.n_vocab, "corpus": args.corpus,
        "tokenizer": tok.kind, "tokenizer_path": tokenizer_path, "model_resized_from": model_info["resized_from"],
        "hack_step": hack_self_step, "hack_global_step": hack_global,
        "hack_rule": f"val CE > best + {args.hack_delta} for {args.hack_patience} evals while self loss < at best",
        "val_ce_start": rows[0]["val/ce"] if rows else None, "val_ce_end_phase1": phase1_ce if rows else None,
        "val_ce_phase2_best": min(p2) if p2 else None, "val_ce_end": p2[-1] if p2 else None,
        "val_ce_end_minus_phase1": (p2[-1] - phase1_ce) if p2 else None,
        "critic_agreement_end": hack_rows[-1]["val/critic_agreement"] if hack_rows else None,
        "kl_from_start_end": hack_rows[-1].get("val/kl_from_start") if hack_rows else None,
        "guard_restores": len(guard_steps), "guard_steps": guard_steps,
        "ce_curve": [{"self_step": s, "step": g, "val_ce": c, "self_loss": sl} for s, g, c, sl in ce_curve],
        "train_tokens_per_s_phase1": median_of(rows, 1, "perf/train_tokens_per_s"),
        "train_tokens_per_s_phase2": median_of(rows, 2, "perf/train_tokens_per_s"),
        "ms_per_meta_step": median_of(rows, 1, "perf/ms_per_step"),
        "ms_per_self_step": median_of(rows, 2, "perf/ms_per_step"),
        "gen_tokens_per_s": median_of(rows, None, "perf/gen_tokens_per_s"),
        "samples": samples, "wall_time_s": wall_time,
    }
    log.summary(summary)
    plot_run(rows, meta_end, hack_global, guard_steps, f"{run_name} (critic {args.critic})",
             os.path.join(run_dir, "self_critic.png"))
    log.close()
    for name in ("phase2_start", "at_hack", "end"):
        if samples.get(name):
            print(f"sample {name}: {samples[name]!r}")
    print(f"{run_name}: val CE {summary['val_ce_start']:.3f} -> {phase1_ce:.3f} (phase 1) -> "
          f"{summary['val_ce_end'] if p2 else float('nan'):.3f} (phase 2), hack step {hack_self_step}, "
          f"{wall_time:.1f} s -> {run_dir}")
    if status != "ok":
        sys.exit(f"self_critic_lm.py: stopped: {status}; metrics so far are in {run_dir}/metrics.jsonl")
