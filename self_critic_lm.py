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
    phase 1 (meta, --meta-steps):   loss = CE(f(x), y) + CE(g, y)    [+ CE(g~, y) with --adversarial noise|hotflip]
    phase 2 (self, --self-steps):   t_i = argmax_v g_i,v under no_grad, critic f' in {online, frozen, ema}
                                    loss = CE(f(x), t)       (y enters only through the critic's input)
    control (--critic truth):       loss = CE(f(x), y) on the same batches (its critic numbers: a frozen copy)
The causal critic sees y_i one position before it must output the target, so a perfect critic
just copies it; the seed calls the task "trivial" for that reason. The question is whether the
self-produced target stays anchored to the truth while the LM moves away from the data the
critic was trained on.
    online  the critic is the live model (same weights as the LM being updated)
    frozen  a copy taken at the start of phase 2, never updated
    ema     theta' <- d * theta' + (1 - d) * theta after every self step, d = --ema-decay
Mitigations (seed's list): --adversarial noise adds critic triples g~ whose predicted tokens are
uniform random tokens (probability --adv-random) or else samples of the LM at temperature
--adv-temperature (noise augmentation); --adversarial hotflip chooses them against the critic,
p~_i = argmax_{v != y_i, allowed} (E_v - E_{p_i}) . dCE(g, y)/de_{p_i} (first-order HotFlip on the
input embeddings E); target y in both. A longer meta phase is --meta-steps. --hack-guard True runs
a detector on its own guard windows (never the reported ones) and, when it fires, restores the
rollback weights, runs --guard-meta-steps meta steps (true labels), re-takes the critic copy and
resumes; --guard-signal oracle (detect_hack on the guard windows' CE; rollback = best guard CE) or
label_free (detect_label_free on the critic-target entropy; rollback = the segment's start).
Optimisation: by default phase 1's AdamW (moments) carries over into phase 2; --fresh-optimizer True
makes a new AdamW for phase 2 and each guard meta phase, as the original does (with lr 1e-4 there).

Hack detector (detect_hack): phase-2 evaluations j = 0, 1, ... (self step s_j, s_0 = 0 is the
model phase 1 produced) give the held-out CE c_j and the held-out self loss l_j (CE of the LM
against the critic's targets on the same validation windows). The hack step is s_j for the first
j >= 1 such that c_j, ..., c_{j+k-1} are ALL above min(c_0..c_{j-1}) + delta AND l_{j+k-1} is
below l_b, b = argmin(c_0..c_{j-1}): the true CE left its best and stayed up for k evaluations
while the proxy kept improving past where it was at the best; or, with --hack-agree-drop a, the
first j from which the critic-truth agreement stays below agreement_0 - a for k evaluations.
delta = --hack-delta (nats), k = --hack-patience. None when that never happens. The label-free
detector (detect_label_free) fires at the first j from which H(t), the entropy of the histogram
of the critic's targets on the validation windows, stays below H_0 - --lf-entropy-drop for k
evaluations, or (with --lf-echo-rise r) the echo rate, the fraction of targets equal to the LM's own
prediction, stays above echo_0 + r for k evaluations. benchmark/self_critic_long_table.py calibrates
both on the truth control. benchmark/self_critic_strength_table.py calibrates delta and a on the truth control.
The model and tokenizer are saved with save_pretrained (--save-models True) at the start of phase 2,
when the detector first fires and at the end, with the target/prediction histograms and samples;
--save-meta-at N.. saves meta checkpoints from which --init-meta starts phase 2 exactly.

Model: a Llama-style causal LM (GQA, RoPE, RMSNorm, SwiGLU, tied embeddings) built from a config
with Hugging Face transformers, or any local checkpoint (--model-name-or-path); one [LOSS] token
is added to the vocabulary. Data: pydoc_data.topics from the standard library by default
(always offline), or --text-path / --hf-dataset; the text is split into train and validation.
Byte-level tokenizer by default, or --tokenizer bpe (trained on the train split, saved to the
run folder) or a tokenizer.json / pretrained tokenizer folder. Nothing is downloaded.

Run:      python self_critic_lm.py --critic frozen          (online | frozen | ema | truth)
          seed scale (one GPU; about 24.9M params, 4,097 ids): see docs/self_critic_lm.md
Outputs:  runs/{run_name}/config.json, metrics.jsonl (x-axis: step = optimizer steps of both
          phases), summary.json (hack step, CE curve, samples), self_critic.png, tokenizer.json (BPE)
Runtime:  defaults (1.0M params, byte vocab + [LOSS], batch 16 x 32 tokens, 50 meta + 200 self
          steps, frozen critic) took 190-275 s wall on one thread of the shared 2-core CPU, two runs
          at a time (benchmark/self_critic.sh). A self step costs 2.3x a plain LM step on the same
          batch (benchmark/self_critic_speed.py).
Result:   (issue 12, docs/self_critic_lm.md; 140k-param model, 80 self steps, 3 seeds per cell) critic
          strength decides it: after 50-100 meta steps (agreement 0.28-0.75) every critic mode is
          hacked within 1-16 self steps; after 200 (agreement 0.95) online is hacked in 8-16, EMA 0.9
          in 16-24, frozen never within 80 (0/3), with a detector calibrated on the true-label control
          (1/12 false positives). The hack: LM and critic collapse onto one token (the critic copies p).
"""

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
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
    fresh_optimizer: bool = False
    """a fresh AdamW (no moments) for phase 2 and for each guard meta phase, as the original does; False carries phase 1's AdamW state over"""
    save_meta_at: tuple[int, ...] = ()
    """meta steps at which phase 1 saves a checkpoint runs/{run}/meta_{step}.pt (model, optimizer, data stream) for --init-meta"""
    init_meta: Optional[str] = None
    """skip phase 1: start phase 2 from this meta checkpoint (--meta-steps is set to the checkpoint's)"""

    # ---- critic and mitigations ----
    critic: str = "frozen"
    """phase-2 critic: online (the live model), frozen (copy at the start of phase 2), ema (EMA copy), truth (control: CE on the true tokens, no critic)"""
    ema_decay: float = 0.99
    """d in theta' <- d theta' + (1 - d) theta (--critic ema)"""
    adversarial: str = "none"
    """phase 1 also trains the critic, target y, on triples with other predicted tokens: none, noise (random / hot samples), hotflip (tokens chosen against the critic)"""
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
    hack_agree_drop: Optional[float] = None
    """the detector also fires when critic-truth agreement stays this far below its phase-2 start for k evaluations; None: off"""
    guard_signal: str = "oracle"
    """what the guard watches: oracle (detect_hack on held-out CE, true labels) or label_free (collapse of the critic-target entropy; with --lf-echo-rise also a rise of the echo rate)"""
    lf_entropy_drop: float = 0.5
    """label-free detector: nats the entropy of the critic-target histogram must stay below its segment start for k evaluations"""
    lf_echo_rise: Optional[float] = None
    """label-free detector: it also fires when the echo rate (critic targets equal to the LM's prediction) stays this far above its segment start for k evaluations; None: off"""
    save_models: bool = False
    """save_pretrained model + tokenizer at the start of phase 2 (model_phase2_start/) and when the detector first fires (model_at_detection/)"""

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


CRITICS = ("online", "frozen", "ema", "truth")
ADVERSARIAL = ("none", "noise", "hotflip")
GUARD_SIGNALS = ("oracle", "label_free")
SPECIALS = ("[LOSS]",)
PROMPT_LEN = 16


def finalize_args(args: Args) -> Args:
    """Check every argument and the input files, and fill the derived fields; a ValueError carries a
    one-line reason, raised before any run folder exists."""
    if args.critic not in CRITICS:
        raise ValueError(f"unknown --critic {args.critic!r}; choose one of {', '.join(CRITICS)}")
    if args.adversarial not in ADVERSARIAL:
        raise ValueError(f"unknown --adversarial {args.adversarial!r}; choose one of {', '.join(ADVERSARIAL)}")
    if args.guard_signal not in GUARD_SIGNALS:
        raise ValueError(f"unknown --guard-signal {args.guard_signal!r}; choose one of {', '.join(GUARD_SIGNALS)}")
    if args.hack_guard and args.critic == "truth":
        raise ValueError("--hack-guard needs a critic; --critic truth is the true-label control")
    if args.hack_agree_drop is not None and not (math.isfinite(args.hack_agree_drop) and args.hack_agree_drop > 0):
        raise ValueError(f"--hack-agree-drop must be a finite number > 0 or None, got {args.hack_agree_drop}")
    if not (math.isfinite(args.lf_entropy_drop) and args.lf_entropy_drop > 0):
        raise ValueError(f"--lf-entropy-drop must be a finite number > 0, got {args.lf_entropy_drop}")
    if args.lf_echo_rise is not None and not (math.isfinite(args.lf_echo_rise) and 0 < args.lf_echo_rise < 1):
        raise ValueError(f"--lf-echo-rise must be a finite number in (0, 1) or None, got {args.lf_echo_rise}")
    flag = lambda name: "--" + name.replace("_", "-")
    for name in ("block_size", "batch_size", "meta_steps", "eval_every", "eval_windows", "torch_threads",
                 "hack_patience", "sample_tokens", "n_embd", "n_layer", "n_head", "n_kv_head", "vocab_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ("self_steps", "guard_meta_steps", "sample_prompts"):
        if getattr(args, name) < 0:
            raise ValueError(f"{flag(name)} must be non-negative, got {getattr(args, name)}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must lie in [0, 2**32), got {args.seed}")
    if args.self_learning_rate is None:
        args.self_learning_rate = args.learning_rate
    for name in ("learning_rate", "self_learning_rate", "max_grad_norm", "adv_temperature"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"{flag(name)} must be a finite number > 0, got {getattr(args, name)}")
    for name in ("weight_decay", "hack_delta"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {getattr(args, name)}")
    for name in ("learning_rate", "self_learning_rate"):              # AdamW scales weights by 1 - lr * wd
        if getattr(args, name) * args.weight_decay >= 1:
            raise ValueError(f"{flag(name)} x --weight-decay must be below 1 (AdamW multiplies the weights by "
                             f"1 - lr * wd), got {getattr(args, name) * args.weight_decay}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must lie in [0, 1) (1 never updates: that is --critic frozen), "
                         f"got {args.ema_decay}")
    if not 0.0 <= args.adv_random <= 1.0:
        raise ValueError(f"--adv-random must lie in [0, 1], got {args.adv_random}")
    if args.n_head % args.n_kv_head:
        raise ValueError(f"--n-kv-head {args.n_kv_head} does not divide --n-head {args.n_head}")
    if args.n_embd % args.n_head:
        raise ValueError(f"--n-head {args.n_head} does not divide --n-embd {args.n_embd}")
    if (args.n_embd // args.n_head) % 2:
        raise ValueError(f"the head width --n-embd / --n-head = {args.n_embd // args.n_head} must be even (RoPE "
                         "rotates pairs of channels)")
    for m in args.save_meta_at:
        if not 1 <= m <= args.meta_steps:
            raise ValueError(f"--save-meta-at {m} must lie in [1, --meta-steps {args.meta_steps}]")
    if args.init_meta is not None and args.save_meta_at:
        raise ValueError("--init-meta skips phase 1, so --save-meta-at has nothing to save")
    if args.sample_prompts > args.eval_windows:
        raise ValueError(f"--sample-prompts {args.sample_prompts} exceeds --eval-windows {args.eval_windows} "
                         "(the prompts are the first validation windows)")
    n_evals = len(phase2_eval_steps(args.self_steps, args.eval_every))
    if args.self_steps > 0 and n_evals < args.hack_patience + 1:
        raise ValueError(f"--hack-patience {args.hack_patience} needs at least {args.hack_patience + 1} phase-2 "
                         f"evaluations; --self-steps {args.self_steps} with --eval-every {args.eval_every} gives "
                         f"{n_evals}")
    if args.text_path is not None and args.hf_dataset is not None:
        raise ValueError("give at most one of --text-path and --hf-dataset")
    if args.tokenizer == "bpe" and args.vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"--vocab-size {args.vocab_size} must be at least {256 + len(SPECIALS)} for byte-level BPE")
    if args.tokenizer not in ("byte", "bpe") and not os.path.exists(args.tokenizer):
        raise ValueError(f"--tokenizer {args.tokenizer!r} is neither byte, bpe nor an existing file or folder")
    if args.model_name_or_path is not None and not os.path.isdir(args.model_name_or_path):
        raise ValueError(f"--model-name-or-path {args.model_name_or_path!r} is not a folder (only local "
                         "checkpoints are loaded)")
    if args.init_meta is not None:
        ckpt = load_meta_checkpoint(args.init_meta)
        for k, v in ckpt["fields"].items():
            if getattr(args, k) != v:
                raise ValueError(f"--init-meta {args.init_meta!r} was made with --{k.replace('_', '-')} {v}, "
                                 f"this run has {getattr(args, k)}")
        args.meta_steps, args.adversarial = ckpt["meta_steps"], ckpt["adversarial"]
    args.critic_len = 3 * args.block_size
    check_inputs(args)
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


def hotflip_predictions(model, pred: torch.Tensor, true: torch.Tensor, loss_id: int, banned) -> torch.Tensor:
    """Predicted tokens chosen against the critic (HotFlip, first order): with e the input embeddings of
    the critic sequence c(pred, true) and G = dCE(g, y)/de at the predicted-token slots, each slot i
    gets the allowed token v != y_i that most increases the critic's loss to first order,
    argmax_v (E_v - E_{p_i}) . G_i. One critic forward and backward (no parameter gradients)."""
    emb = model.get_input_embeddings().weight
    seq = critic_input(pred, true, loss_id)
    e = emb.detach()[seq].requires_grad_(True)
    logits = model(inputs_embeds=e, use_cache=False).logits[:, loss_positions(true.shape[1], true.device)]
    (grad,) = torch.autograd.grad(cross_entropy(logits, true), e)
    g = grad[:, 0::3]                                                   # (B, L, d) at the p_i slots
    scores = g @ emb.detach().T - (g * emb.detach()[pred]).sum(-1, keepdim=True)
    scores = scores.masked_fill(banned, float("-inf")).scatter(-1, true.unsqueeze(-1), float("-inf"))
    return scores.argmax(-1)


def meta_loss(model, x, y, loss_id: int, banned, adversarial: str = "none", adv_random: float = 0.5,
              adv_temperature: float = 2.0):
    """Phase 1: (total, LM CE, critic CE, adversarial critic CE or 0) on windows x -> y, (B, L) each.
    adversarial: none; noise (adversarial_predictions: random tokens / hot samples of the LM); hotflip
    (hotflip_predictions on the LM's argmax: tokens chosen against the critic). Target y in every case."""
    logits = lm_logits(model, x)
    lm = cross_entropy(logits, y)
    pred = masked_argmax(logits.detach(), banned)
    critic = cross_entropy(critic_logits(model, pred, y, loss_id), y)
    adv = torch.zeros((), device=x.device)
    if adversarial != "none":
        if adversarial == "noise":
            drifted = adversarial_predictions(logits, banned, adv_random, adv_temperature)
        elif adversarial == "hotflip":
            drifted = hotflip_predictions(model, pred, y, loss_id, banned)
        else:
            raise ValueError(f"unknown adversarial mode {adversarial!r}")
        adv = cross_entropy(critic_logits(model, drifted, y, loss_id), y)
    return lm + critic + adv, lm, critic, adv


def self_loss(model, critic, x, y, loss_id: int, banned):
    """Phase 2: (CE(f(x), t), fraction t == y), t = the critic's argmax targets computed without gradient.
    `critic` may be `model` itself (online critic): the targets then come from the current weights.
    critic None is the true-label control: t = y (plain LM training on the same batches)."""
    logits = lm_logits(model, x)
    if critic is None:
        return cross_entropy(logits, y), torch.ones((), device=x.device)
    with torch.no_grad():
        targets = masked_argmax(critic_logits(critic, masked_argmax(logits.detach(), banned), y, loss_id), banned)
    return cross_entropy(logits, targets), (targets == y).float().mean()


def make_critic(model: nn.Module, mode: str) -> Optional[nn.Module]:
    """The phase-2 critic: the live model (online), an independent copy of it (frozen, ema; no shared
    storage), or None (truth: no critic)."""
    if mode == "online":
        return model
    if mode == "truth":
        return None
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter (float buffers copied)."""
    tp, sp = list(target.parameters()), list(source.parameters())
    torch._foreach_lerp_(tp, sp, 1.0 - decay)
    for tb, sb in zip(target.buffers(), source.buffers()):
        tb.copy_(sb)


def detect_hack(val_ce, self_losses, delta: float, k: int, agreement=None, agree_drop: Optional[float] = None
                ) -> Optional[int]:
    """Index j of the first evaluation (j >= 1) after which validation CE stays more than delta above
    its best so far for k evaluations (c_j..c_{j+k-1} > min(c_0..c_{j-1}) + delta) while the self
    loss fell below its value at that best (l_{j+k-1} < l_b, b = argmin c_0..c_{j-1}); or, with
    agree_drop, after which the critic-truth agreement stays below a_0 - agree_drop for k
    evaluations. None if neither ever happens."""
    for j in range(1, len(val_ce) - k + 1):
        b = int(np.argmin(val_ce[:j]))
        if all(c > val_ce[b] + delta for c in val_ce[j:j + k]) and self_losses[j + k - 1] < self_losses[b]:
            return j
        if agree_drop is not None and all(a < agreement[0] - agree_drop for a in agreement[j:j + k]):
            return j
    return None


def detect_label_free(target_entropy, drop: float, k: int, echo_rate=None, echo_rise: Optional[float] = None
                      ) -> Optional[int]:
    """Label-free detector: index j of the first evaluation (j >= 1) from which the entropy of the
    critic-target histogram stays more than `drop` nats below its value at evaluation 0 for k
    evaluations (the targets collapse onto a few tokens); or, with echo_rise, from which the echo rate
    (critic-LM agreement: targets equal to the LM's own prediction) stays more than echo_rise above its
    value at evaluation 0 for k evaluations. None if neither ever happens."""
    for j in range(1, len(target_entropy) - k + 1):
        if all(h < target_entropy[0] - drop for h in target_entropy[j:j + k]):
            return j
        if echo_rise is not None and all(e > echo_rate[0] + echo_rise for e in echo_rate[j:j + k]):
            return j
    return None


def histogram_entropy(tokens: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Entropy (nats) of the empirical distribution of the token ids in `tokens`."""
    p = torch.bincount(tokens.flatten(), minlength=n_rows).float() / tokens.numel()
    return -(p * torch.log(p.clamp_min(1e-30))).sum()


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
# Evaluation and plots
# ==================================================================================================
@torch.no_grad()
def critic_targets(model, critic, x, y, loss_id: int, banned):
    """(LM logits, the LM's argmax p, the critic's argmax targets t) on windows x -> y; critic None is
    read as the live model."""
    logits = lm_logits(model, x)
    pred = masked_argmax(logits, banned)
    return logits, pred, masked_argmax(critic_logits(model if critic is None else critic, pred, y, loss_id), banned)


@torch.no_grad()
def evaluate(model, critic, ref, val_x, val_y, loss_id: int, banned, prefix: str = "val/") -> dict:
    """Held-out numbers on fixed validation windows (one host sync): true CE, the self loss (CE of
    the LM against `critic`'s targets), the critic's agreement with the true token, the label-free
    signals (entropy of the critic-target histogram, echo rate: fraction of targets equal to the
    LM's own prediction p), and the KL of the LM from `ref` (the phase-2 starting model; None in
    phase 1)."""
    was_training = model.training
    model.eval()
    logits, pred, targets = critic_targets(model, critic, val_x, val_y, loss_id, banned)
    vals = [cross_entropy(logits, val_y), cross_entropy(logits, targets), (targets == val_y).float().mean(),
            histogram_entropy(targets, banned.shape[0]), (targets == pred).float().mean()]
    if ref is not None:
        vals.append(kl_from_reference(logits, lm_logits(ref, val_x)))
    vals = torch.stack(vals).tolist()
    model.train(was_training)
    out = {f"{prefix}ce": vals[0], f"{prefix}self_loss": vals[1], f"{prefix}critic_agreement": vals[2],
           f"{prefix}target_entropy": vals[3], f"{prefix}echo_rate": vals[4]}
    if ref is not None:
        out[f"{prefix}kl_from_start"] = vals[5]
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
# Inputs: corpus, tokenizer and model, checked in finalize_args before any run folder exists
# ==================================================================================================
def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 200 characters."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def quiet_transformers() -> None:
    """Nothing is ever downloaded (HF_HUB_OFFLINE=1 unless set); no progress bars, only errors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def load_tokens(args: Args):
    """(tokenizer, train ids, validation ids) on the host; sets args.corpus. An unreadable corpus, a
    tokenizer file or folder that does not load, or a split shorter than one window is a one-line
    ValueError (the shared lm-corpus / lm-tokenizer loaders' other errors are converted here)."""
    try:
        train_text, val_text, args.corpus = load_corpus(args)
    except OSError as e:
        raise ValueError(f"--text-path {args.text_path!r} could not be read: {e.strerror or first_line(e)}") from None
    try:
        tok = build_tokenizer(args, train_text, SPECIALS)
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for a malformed file
        if isinstance(e, ValueError) and str(e).startswith("--"):
            raise
        raise ValueError(f"--tokenizer {args.tokenizer!r} could not be loaded: {first_line(e)}") from None
    train_ids = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text), dtype=torch.long)
    check_token_counts(train_ids, val_ids, max(args.block_size + 1, PROMPT_LEN), f"--block-size {args.block_size}")
    return tok, train_ids, val_ids


def load_model(args: Args, n_vocab: int):
    """build_lm with a context for the critic sequence and the greedy samples; a checkpoint that does not
    load (any error of from_pretrained) is a one-line ValueError."""
    n_positions = max(args.critic_len, PROMPT_LEN + args.sample_tokens)
    try:
        return build_lm(args, n_vocab, n_positions)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- a corrupt weights file, an unknown model type, ...
        if args.model_name_or_path is None:
            raise
        raise ValueError(f"--model-name-or-path {args.model_name_or_path!r} could not be loaded: "
                         f"{type(e).__name__}: {first_line(e)}") from None


def estimate_memory(args: Args, n_params: int, n_rows: int, width: int, layers: int, heads: int) -> float:
    """Bytes of a run's large float32 allocations: the weights with their gradients and two AdamW
    moments, the phase-2 reference and critic copies (and the guard's saved weights and moments); per
    step the logits of the LM pass (L positions) and of each critic pass (3L) with their softmax and
    gradient, the activations kept for backward (about 20 floats per position, unit of width and
    layer) and the attention scores of one layer; the evaluation's logits. Defaults at --block-size
    512: 2.2 GiB estimated, 2.1 GiB measured (peak RSS of one meta step)."""
    L, B, V = args.block_size, args.batch_size, n_rows
    critic_passes = {"none": 1, "noise": 2, "hotflip": 3}[args.adversarial]
    positions = B * (L + 3 * L * critic_passes)
    weights = (6 + (3 if args.hack_guard else 0)) * n_params
    logits = 3 * positions * V
    activations = 20 * positions * width * layers
    attention = B * heads * (L ** 2 + critic_passes * (3 * L) ** 2)
    evaluation = 3 * args.eval_windows * 4 * L * V
    return 4.0 * (weights + logits + activations + attention + evaluation)


def check_inputs(args: Args) -> None:
    """Read the corpus, load or train the tokenizer and tokenize, and load the checkpoint (a model from
    scratch is built on the meta device: shapes only, nothing allocated), as train() will; refuse a run
    whose allocations cannot fit; fill the derived fields config.json records."""
    quiet_transformers()
    tok, train_ids, val_ids = load_tokens(args)
    with torch.device("meta") if args.model_name_or_path is None else contextlib.nullcontext():
        model, info = load_model(args, tok.n_vocab)
    cfg = model.config
    width = getattr(cfg, "hidden_size", args.n_embd)
    layers = getattr(cfg, "num_hidden_layers", args.n_layer)
    heads = getattr(cfg, "num_attention_heads", args.n_head)
    del model
    check_memory(estimate_memory(args, info["n_params"], info["n_rows"], width, layers, heads),
                 f"a {info['n_params']:,}-parameter model ({info['n_rows']} vocabulary rows) on batches of "
                 f"{args.batch_size} x {args.block_size} tokens (critic {args.critic_len})", pick_device(args.cuda))
    args.n_vocab, args.loss_id, args.n_params = tok.n_vocab, tok.special_ids["[LOSS]"], info["n_params"]
    args.train_tokens, args.val_tokens = len(train_ids), len(val_ids)


def prepare(args: Args, device: torch.device):
    """Corpus, tokenizer, token tensors and model on `device` (the same loaders finalize_args checked)."""
    tok, train_ids, val_ids = load_tokens(args)
    model, info = load_model(args, tok.n_vocab)
    args.n_vocab, args.loss_id, args.n_params = tok.n_vocab, tok.special_ids["[LOSS]"], info["n_params"]
    args.train_tokens, args.val_tokens = len(train_ids), len(val_ids)
    return tok, train_ids.to(device), val_ids.to(device), model.to(device), info


# ==================================================================================================
# Stages: meta phase, self phase, evaluation
# ==================================================================================================
@dataclass
class RunState:
    """What the phases share, passed explicitly: the model and its optimizer, the training tokens and
    their generator, the fixed validation windows (reported) and the guard's own windows (the guard
    detects and picks its rollback point on these, never on the reported ones), the prompts, the
    ids never produced, the log, the optimizer steps taken so far (`step`, both phases), the
    evaluation rows, and the snapshots written (save_pretrained folders and target histograms)."""
    args: Args
    log: RunLog
    tok: LMTokenizer
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_ids: torch.Tensor
    data_gen: torch.Generator
    val_x: torch.Tensor
    val_y: torch.Tensor
    guard_x: torch.Tensor
    guard_y: torch.Tensor
    prompts: torch.Tensor
    banned: torch.Tensor
    banned_ids: list
    device: torch.device
    step: int = 0
    rows: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)


def all_finite(values: torch.Tensor) -> bool:
    return bool(torch.isfinite(values).all())


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def new_optimizer(model: nn.Module, args: Args, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)


def train_batch(rs: RunState):
    """(x, y) of --batch-size random training windows."""
    batch = sample_windows(rs.train_ids, rs.args.batch_size, rs.args.block_size + 1, rs.data_gen)
    return batch[:, :-1], batch[:, 1:]


def optimizer_step(rs: RunState, loss: torch.Tensor) -> None:
    rs.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(rs.model.parameters(), rs.args.max_grad_norm)
    rs.optimizer.step()


def record(rs: RunState, phase: int, self_step: int, critic, ref, train_row: dict, t_steps: float,
           n_steps: int) -> dict:
    """Evaluation: held-out numbers (and, with --hack-guard, the same on the guard's windows as guard/*)
    and greedy samples; logs one row at rs.step, prints a progress line, and returns the row (with the
    step and a decoded sample) after appending it to rs.rows."""
    args = rs.args
    eval_critic = rs.model if phase == 1 else critic
    row = {"phase": phase, "self_step": self_step, **train_row,
           **evaluate(rs.model, eval_critic, ref, rs.val_x, rs.val_y, args.loss_id, rs.banned)}
    if args.hack_guard and phase == 2:
        row.update(evaluate(rs.model, eval_critic, None, rs.guard_x, rs.guard_y, args.loss_id, rs.banned, "guard/"))
    if n_steps:
        row["perf/train_tokens_per_s"] = n_steps * args.batch_size * args.block_size / max(t_steps, 1e-9)
        row["perf/ms_per_step"] = 1000 * t_steps / n_steps
    if args.sample_prompts:
        gen, gen_tps = greedy_samples(rs.model, rs.prompts, args.sample_tokens, rs.banned_ids)
        row.update({"gen/distinct_1": distinct_n(gen, 1), "gen/distinct_2": distinct_n(gen, 2),
                    "gen/repetition_rate": repetition_rate(gen), "perf/gen_tokens_per_s": gen_tps})
        row["_sample"] = rs.tok.decode(rs.prompts[0].tolist()) + " ||| " + rs.tok.decode(gen[0])
    rs.log.log(rs.step, {k: v for k, v in row.items() if k != "_sample"})
    row = {"step": rs.step, **row}
    rs.rows.append(row)
    print(f"phase {phase} step {rs.step:5d} self {self_step:4d}  val CE {row['val/ce']:.3f}  self loss "
          f"{row['val/self_loss']:.3f}  agree {row['val/critic_agreement']:.3f}  target H "
          f"{row['val/target_entropy']:.2f}" + (f"  {row['perf/train_tokens_per_s']:.0f} tok/s" if n_steps else ""),
          flush=True)
    return row


META_FIELDS = ("n_embd", "n_layer", "n_head", "n_kv_head", "block_size", "tokenizer", "vocab_size",
               "model_name_or_path", "text_path", "hf_dataset", "val_fraction", "seed")


def save_meta_checkpoint(rs: RunState, meta_step: int) -> str:
    """runs/{run}/meta_{step}.pt: weights, AdamW state, the data and torch RNG streams and the phase-1
    rows, so that --init-meta continues exactly as the uninterrupted run would."""
    path = os.path.join(rs.log.run_dir, f"meta_{meta_step}.pt")
    torch.save({"meta_steps": meta_step, "adversarial": rs.args.adversarial,
                "fields": {k: getattr(rs.args, k) for k in META_FIELDS},
                "model": rs.model.state_dict(), "optimizer": rs.optimizer.state_dict(),
                "data_gen": rs.data_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "rows": [{k: v for k, v in r.items()} for r in rs.rows]}, path)
    return path


def load_meta_checkpoint(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file becomes one line
        raise ValueError(f"--init-meta {path!r} could not be loaded: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or not {"meta_steps", "fields", "model", "optimizer", "data_gen"} <= set(ckpt):
        raise ValueError(f"--init-meta {path!r} is not a meta checkpoint of self_critic_lm.py")
    return ckpt


def run_meta(rs: RunState, n: int, phase: int) -> str:
    """n meta steps (LM CE + critic CE on true tokens); phase 1 evaluates every --eval-every steps and
    at each --save-meta-at step (where it also saves a meta checkpoint). Returns "ok", or the status of
    a non-finite loss (the rows before it are logged)."""
    args = rs.args
    acc, count, t0 = torch.zeros(4, device=rs.device), 0, time.time()
    for i in range(1, n + 1):
        x, y = train_batch(rs)
        loss, lm, crit, adv = meta_loss(rs.model, x, y, args.loss_id, rs.banned, args.adversarial, args.adv_random,
                                        args.adv_temperature)
        optimizer_step(rs, loss)
        acc += torch.stack([loss.detach(), lm.detach(), crit.detach(), adv.detach()])
        rs.step, count = rs.step + 1, count + 1
        save_here = phase == 1 and i in args.save_meta_at
        if i == n or save_here or (phase == 1 and i % args.eval_every == 0):
            m = (acc / count).tolist()
            if not all_finite(acc):
                return f"non-finite loss at step {rs.step} (meta loss {m[0]})"
            if phase == 1:
                record(rs, 1, 0, rs.model, None, {"train/meta_loss": m[0], "train/lm_ce": m[1],
                                                  "train/critic_ce": m[2], "train/adv_critic_ce": m[3]},
                       time.time() - t0, count)
                if save_here:
                    print(f"  meta checkpoint {save_meta_checkpoint(rs, i)}", flush=True)
            acc, count, t0 = torch.zeros(4, device=rs.device), 0, time.time()
    return "ok"


def meta_phase(rs: RunState) -> str:
    """Phase 1: the step-0 evaluation, then --meta-steps meta steps. Returns the status."""
    record(rs, 1, 0, rs.model, None, {}, 0.0, 0)
    return run_meta(rs, rs.args.meta_steps, 1)


def byte_backend():
    """A `tokenizers` Tokenizer whose ids are the bytes 0-255 (byte-level alphabet, no merges), so the
    byte tokenizer can be saved with save_pretrained; the specials are added after it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    byte_to_char, extra = {}, 0
    for b in range(256):                              # GPT-2's bytes_to_unicode
        if b in chars:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b], extra = chr(256 + extra), extra + 1
    backend = Tokenizer(models.BPE(vocab={byte_to_char[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def save_pretrained_snapshot(rs: RunState, name: str, self_step: int, critic) -> str:
    """runs/{run}/{name}/: the model and the tokenizer with save_pretrained (AutoModelForCausalLM and
    AutoTokenizer load them with from_pretrained), and report.json with the greedy samples of every
    prompt and the critic-target / LM-prediction histograms on the validation windows."""
    from transformers import PreTrainedTokenizerFast

    path = os.path.join(rs.log.run_dir, name)
    rs.model.save_pretrained(path)
    backend = rs.tok.backend
    if backend is None:
        backend = byte_backend()
        backend.add_special_tokens(list(SPECIALS))
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(path)
    report = {"self_step": self_step, "step": rs.step, **token_histograms(rs, critic)}
    if rs.args.sample_prompts:
        gen, _ = greedy_samples(rs.model, rs.prompts, rs.args.sample_tokens, rs.banned_ids)
        report["samples"] = [rs.tok.decode(p.tolist()) + " ||| " + rs.tok.decode(g) for p, g in zip(rs.prompts, gen)]
    write_json(os.path.join(path, "report.json"), report)
    return path


@torch.no_grad()
def token_histograms(rs: RunState, critic, top: int = 12) -> dict:
    """The most frequent critic targets, LM predictions and true tokens on the validation windows, as
    [decoded token, fraction], and the entropy of the target histogram."""
    was_training = rs.model.training
    rs.model.eval()
    _, pred, targets = critic_targets(rs.model, critic, rs.val_x, rs.val_y, rs.args.loss_id, rs.banned)
    rs.model.train(was_training)
    out = {}
    for name, t in (("targets", targets), ("lm_predictions", pred), ("true_tokens", rs.val_y)):
        counts = torch.bincount(t.flatten(), minlength=rs.banned.shape[0])
        order = counts.argsort(descending=True)[:top].tolist()
        out[f"{name}_top"] = [[rs.tok.decode([i]), counts[i].item() / t.numel()] for i in order if counts[i] > 0]
    out["target_entropy"] = histogram_entropy(targets, rs.banned.shape[0]).item()
    return out


def snapshot(rs: RunState, name: str, self_step: int, critic) -> None:
    """Histograms (always) and, with --save-models, the save_pretrained folder, kept in rs.snapshots."""
    snap = {"self_step": self_step, "step": rs.step, **token_histograms(rs, critic)}
    if rs.args.save_models:
        snap["path"] = save_pretrained_snapshot(rs, name, self_step, critic)
    rs.snapshots[name] = snap


def guard_detect(args: Args, segment: list[dict]) -> Optional[int]:
    """The guard's detector on the guard windows of the current segment: oracle (detect_hack on guard
    CE, self loss and agreement) or label_free (detect_label_free on the critic-target entropy)."""
    if args.guard_signal == "label_free":
        return detect_label_free([r["guard/target_entropy"] for r in segment], args.lf_entropy_drop,
                                 args.hack_patience, [r["guard/echo_rate"] for r in segment], args.lf_echo_rise)
    return detect_hack([r["guard/ce"] for r in segment], [r["guard/self_loss"] for r in segment], args.hack_delta,
                       args.hack_patience, [r["guard/critic_agreement"] for r in segment], args.hack_agree_drop)


def is_rollback_point(args: Args, segment: list[dict]) -> bool:
    """Whether the newest evaluation of the guard's segment becomes its rollback point: the segment's
    first one always; with --guard-signal oracle also any whose guard-window CE is <= every earlier
    one of the segment. The reported windows (val/*) are never read."""
    if len(segment) == 1:
        return True
    return args.guard_signal == "oracle" and segment[-1]["guard/ce"] <= min(r["guard/ce"] for r in segment[:-1])


def guard_restore(rs: RunState, best_state, critic) -> str:
    """The hack guard: restore the rollback weights (and optimizer state, unless --fresh-optimizer makes
    a new AdamW for the meta steps), run --guard-meta-steps meta steps on true labels, re-take the
    critic copy. Returns the status of the meta steps."""
    args = rs.args
    rs.model.load_state_dict(best_state[0])
    if args.fresh_optimizer:
        rs.optimizer = new_optimizer(rs.model, args, args.learning_rate)
    else:
        rs.optimizer.load_state_dict(best_state[1])
        set_lr(rs.optimizer, args.learning_rate)
    status = run_meta(rs, args.guard_meta_steps, 2)
    if status != "ok":
        return status
    if args.fresh_optimizer:
        rs.optimizer = new_optimizer(rs.model, args, args.self_learning_rate)
    set_lr(rs.optimizer, args.self_learning_rate)
    if critic is not None and critic is not rs.model:
        critic.load_state_dict(rs.model.state_dict())
    print(f"  hack guard: restored the rollback weights, {args.guard_meta_steps} meta steps, critic re-taken",
          flush=True)
    return status


def self_phase(rs: RunState) -> tuple[str, list[dict], list[int]]:
    """Phase 2: --self-steps self steps against the critic's argmax targets (or the true tokens with
    --critic truth), evaluated at phase2_eval_steps. The detector runs on the reported windows at every
    evaluation (its first firing is snapshotted); with --hack-guard the guard's detector runs on the
    guard windows. Returns (status, the phase-2 evaluation rows, the steps at which the guard restored)."""
    args, model = rs.args, rs.model
    status = "ok"
    if args.fresh_optimizer:
        rs.optimizer = new_optimizer(model, args, args.self_learning_rate)
    set_lr(rs.optimizer, args.self_learning_rate)
    ref = copy.deepcopy(model).eval().requires_grad_(False)          # the phase-2 starting model (KL)
    critic = make_critic(model, args.critic)                          # frozen/ema: a copy of the start
    if critic is not None and critic is not model:
        critic.eval()
    # the truth control trains on y; its critic numbers (agreement, self loss, target entropy) are those of a
    # frozen copy of the start: how a fixed critic reads an LM that moves under true-label training
    eval_critic = ref if critic is None else critic
    eval_at = set(phase2_eval_steps(args.self_steps, args.eval_every))
    guard_steps, hack_rows, segment = [], [], []     # segment: phase-2 evals since the last guard restore
    best_state, detected = None, False
    acc, count, t0 = torch.zeros(2, device=rs.device), 0, time.time()
    for self_step in range(0, args.self_steps + 1):
        if self_step > 0:
            x, y = train_batch(rs)
            loss, agree = self_loss(model, critic, x, y, args.loss_id, rs.banned)
            optimizer_step(rs, loss)
            if args.critic == "ema":
                ema_update_(critic, model, args.ema_decay)
            acc += torch.stack([loss.detach(), agree])
            rs.step, count = rs.step + 1, count + 1
        if self_step not in eval_at:
            continue
        dt = time.time() - t0
        m = (acc / max(count, 1)).tolist()
        if not all_finite(acc):
            status = f"non-finite loss at step {rs.step} (self loss {m[0]})"
            break
        train_row = {"train/self_loss": m[0], "train/critic_agreement": m[1]} if count else {}
        row = record(rs, 2, self_step, eval_critic, ref, {**train_row, "guard/restores": len(guard_steps)}, dt, count)
        hack_rows.append(row)
        segment.append(row)
        if self_step == 0:
            snapshot(rs, "model_phase2_start", 0, eval_critic)
        if not detected and detect_hack([r["val/ce"] for r in hack_rows], [r["val/self_loss"] for r in hack_rows],
                                        args.hack_delta, args.hack_patience,
                                        [r["val/critic_agreement"] for r in hack_rows], args.hack_agree_drop) is not None:
            detected = True
            snapshot(rs, "model_at_detection", self_step, eval_critic)
        if args.hack_guard and is_rollback_point(args, segment):
            best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(rs.optimizer.state_dict()))
        if args.hack_guard and self_step < args.self_steps and guard_detect(args, segment) is not None:
            guard_steps.append(rs.step)
            status = guard_restore(rs, best_state, critic)
            if status != "ok":
                break
            segment = [record(rs, 2, self_step, critic, ref, {"guard/restores": len(guard_steps)}, 0.0, 0)]
            hack_rows.append(segment[0])
            best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(rs.optimizer.state_dict()))
        acc, count, t0 = torch.zeros(2, device=rs.device), 0, time.time()
    if hack_rows:
        snapshot(rs, "model_end", hack_rows[-1]["self_step"], eval_critic)
    return status, hack_rows, guard_steps


def summarize(rs: RunState, status: str, phase1_ce: float, hack_rows: list[dict], guard_steps: list[int],
              tokenizer_path: Optional[str], model_info: dict, wall_time: float) -> dict:
    """Hack detection on the whole phase-2 curve and the run's summary."""
    args, rows = rs.args, rs.rows
    ce_curve = [(r["self_step"], r["step"], r["val/ce"], r["val/self_loss"]) for r in hack_rows]
    j = detect_hack([c[2] for c in ce_curve], [c[3] for c in ce_curve], args.hack_delta, args.hack_patience,
                    [r["val/critic_agreement"] for r in hack_rows], args.hack_agree_drop)
    lf = detect_label_free([r["val/target_entropy"] for r in hack_rows], args.lf_entropy_drop, args.hack_patience,
                           [r["val/echo_rate"] for r in hack_rows], args.lf_echo_rise)
    hack_self_step = None if j is None else ce_curve[j][0]
    hack_global = None if j is None else ce_curve[j][1]
    samples = {}
    if hack_rows:
        samples["phase2_start"] = hack_rows[0].get("_sample")
    if j is not None:
        samples["at_hack"] = hack_rows[j].get("_sample")
    samples["end"] = rows[-1].get("_sample") if rows else None
    samples["phase1_start"] = rows[0].get("_sample") if rows else None
    p2 = [c[2] for c in ce_curve]
    return {
        "status": status, "critic": args.critic, "ema_decay": args.ema_decay, "adversarial": args.adversarial,
        "hack_guard": args.hack_guard, "guard_signal": args.guard_signal, "meta_steps": args.meta_steps,
        "self_steps": args.self_steps, "init_meta": args.init_meta, "fresh_optimizer": args.fresh_optimizer,
        "learning_rate": args.learning_rate, "self_learning_rate": args.self_learning_rate,
        "seed": args.seed, "n_params": args.n_params, "n_vocab": args.n_vocab, "corpus": args.corpus,
        "tokenizer": rs.tok.kind, "tokenizer_path": tokenizer_path, "model_resized_from": model_info["resized_from"],
        "hack_step": hack_self_step, "hack_global_step": hack_global,
        "hack_rule": f"val CE > best + {args.hack_delta} for {args.hack_patience} evals while self loss < at best"
                     + ("" if args.hack_agree_drop is None else
                        f", or critic agreement < start - {args.hack_agree_drop} for {args.hack_patience} evals"),
        "label_free_step": None if lf is None else ce_curve[lf][0],
        "critic_agreement_start": hack_rows[0]["val/critic_agreement"] if hack_rows else None,
        "target_entropy_start": hack_rows[0]["val/target_entropy"] if hack_rows else None,
        "val_ce_start": rows[0]["val/ce"] if rows else None, "val_ce_end_phase1": phase1_ce if rows else None,
        "val_ce_phase2_best": min(p2) if p2 else None, "val_ce_end": p2[-1] if p2 else None,
        "val_ce_end_minus_phase1": (p2[-1] - phase1_ce) if p2 else None,
        "critic_agreement_end": hack_rows[-1]["val/critic_agreement"] if hack_rows else None,
        "kl_from_start_end": hack_rows[-1].get("val/kl_from_start") if hack_rows else None,
        "guard_restores": len(guard_steps), "guard_steps": guard_steps,
        "ce_curve": [{"self_step": s, "step": g, "val_ce": c, "self_loss": sl, "agreement": r["val/critic_agreement"],
                      "target_entropy": r["val/target_entropy"], "echo_rate": r["val/echo_rate"]}
                     for (s, g, c, sl), r in zip(ce_curve, hack_rows)],
        "snapshots": rs.snapshots,
        "train_tokens_per_s_phase1": median_of(rows, 1, "perf/train_tokens_per_s"),
        "train_tokens_per_s_phase2": median_of(rows, 2, "perf/train_tokens_per_s"),
        "ms_per_meta_step": median_of(rows, 1, "perf/ms_per_step"),
        "ms_per_self_step": median_of(rows, 2, "perf/ms_per_step"),
        "gen_tokens_per_s": median_of(rows, None, "perf/gen_tokens_per_s"),
        "samples": samples, "wall_time_s": wall_time,
    }


def train(args: Args, log: RunLog) -> dict:
    """Phase 1 (meta) then phase 2 (self) with the chosen critic, evaluated along the way; hack detection,
    summary and plot. Writes tokenizer.json (BPE) and self_critic.png into log.run_dir; returns the summary."""
    torch.set_num_threads(args.torch_threads)
    device = pick_device(args.cuda)
    quiet_transformers()
    tok, train_ids, val_ids, model, model_info = prepare(args, device)
    seed_everything(args.seed, args.torch_deterministic)     # same stream whatever prepare() consumed
    tokenizer_path = tok.save(log.run_dir)

    # ids the model must never produce as a token: the specials and embedding rows past the tokenizer
    banned = torch.zeros(model_info["n_rows"], dtype=torch.bool, device=device)
    banned[list(tok.special_ids.values())] = True
    banned[tok.n_vocab:] = True
    eval_batch = sample_windows(val_ids, args.eval_windows, args.block_size + 1, torch.Generator().manual_seed(0))
    guard_batch = sample_windows(val_ids, args.eval_windows, args.block_size + 1, torch.Generator().manual_seed(1))
    model.train()
    optimizer = new_optimizer(model, args, args.learning_rate)
    rs = RunState(args=args, log=log, tok=tok, model=model, optimizer=optimizer, train_ids=train_ids,
                  data_gen=torch.Generator().manual_seed(args.seed), val_x=eval_batch[:, :-1],
                  val_y=eval_batch[:, 1:], guard_x=guard_batch[:, :-1], guard_y=guard_batch[:, 1:],
                  prompts=eval_batch[:args.sample_prompts, :PROMPT_LEN], banned=banned,
                  banned_ids=banned.nonzero().squeeze(-1).tolist(), device=device)
    start = time.time()

    # ---- phase 1: meta training (LM CE + critic CE on true tokens), or its saved checkpoint ----
    print(f"{log.run_name}: {args.n_params:,} params, vocab {args.n_vocab}, corpus {args.corpus}, "
          f"{args.train_tokens:,} train / {args.val_tokens:,} val tokens; critic {args.critic}", flush=True)
    if args.init_meta is None:
        status = meta_phase(rs)
    else:
        ckpt = load_meta_checkpoint(args.init_meta)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        rs.data_gen.set_state(ckpt["data_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        rs.step, status = ckpt["meta_steps"], "ok"
        for row in ckpt["rows"]:                              # phase 1's rows, as the original run logged them
            log.log(row["step"], {k: v for k, v in row.items() if k not in ("step", "_sample")})
            rs.rows.append(row)
        print(f"  phase 1 from {args.init_meta} ({ckpt['meta_steps']} meta steps)", flush=True)
    meta_end, phase1_ce = rs.step, rs.rows[-1]["val/ce"]

    # ---- phase 2: self training against the critic's argmax targets ----
    hack_rows, guard_steps = [], []
    if status == "ok" and args.self_steps > 0:
        status, hack_rows, guard_steps = self_phase(rs)
    wall_time = time.time() - start

    # ---- hack detection on the whole phase-2 curve, summary, plot ----
    summary = summarize(rs, status, phase1_ce, hack_rows, guard_steps, tokenizer_path, model_info, wall_time)
    plot_run(rs.rows, meta_end, summary["hack_global_step"], guard_steps, f"{log.run_name} (critic {args.critic})",
             os.path.join(log.run_dir, "self_critic.png"))
    for name in ("phase2_start", "at_hack", "end"):
        if summary["samples"].get(name):
            print(f"sample {name}: {summary['samples'][name]!r}")
    print(f"{log.run_name}: val CE {summary['val_ce_start']:.3f} -> {phase1_ce:.3f} (phase 1) -> "
          f"{summary['val_ce_end'] if hack_rows else float('nan'):.3f} (phase 2), hack step {summary['hack_step']}, "
          f"{wall_time:.1f} s -> {log.run_dir}")
    return summary


if __name__ == "__main__":
    args = parse_args("self_critic_lm.py", Args, finalize_args)
    sys.exit(run_experiment("self_critic_lm.py", args, train, x_axis="step"))
