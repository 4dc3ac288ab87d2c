"""self_critic_lm.py: oracle tests of the critic input, EMA, hack detector, metrics and shared LM blocks;
in-process smoke runs of every critic mode and mitigation with a tiny model (one through the real CLI with
--track offline); the bad-input table; a non-finite loss in either phase."""


import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_bad_input, read_json, read_metrics, run_in_process

import self_critic_lm as S

SCRIPT = "self_critic_lm.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = ("--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--n-kv-head", "1", "--block-size", "16",
        "--batch-size", "4", "--meta-steps", "10", "--self-steps", "12", "--eval-every", "5", "--eval-windows", "4",
        "--sample-prompts", "1", "--sample-tokens", "8", "--learning-rate", "3e-3", "--torch-threads", "1")


def tiny_args(**kw) -> S.Args:
    args = S.Args(**{"n_embd": 32, "n_layer": 1, "n_head": 2, "n_kv_head": 1, "block_size": 16, **kw})
    return S.finalize_args(args)


def save_byte_checkpoint(path) -> None:
    """A tiny Llama with a 256-row (byte) vocabulary and a 64-token context, saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(path)


class ShiftCopy(nn.Module):
    """A fake causal LM whose logits at position t are a one-hot of the input token at t - 1 (a perfect
    copy critic: at a [LOSS] position it outputs the true token y_i that sits just before it)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, use_cache=False):
        prev = torch.cat([input_ids[:, :1], input_ids[:, :-1]], dim=1)
        return type("Out", (), {"logits": 10.0 * F.one_hot(prev, self.vocab).float()})


# ------------------------------------------------------------------------------------------------
# Critic input and losses
# ------------------------------------------------------------------------------------------------
def test_critic_input_interleaves_triples_and_loss_positions_line_up():
    pred = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    true = torch.tensor([[30, 31, 32, 33], [40, 41, 42, 43]])
    seq = S.critic_input(pred, true, loss_id=99)
    assert seq.shape == (2, 12)
    assert seq[0].tolist() == [10, 30, 99, 11, 31, 99, 12, 32, 99, 13, 33, 99]
    pos = S.loss_positions(4)
    assert pos.tolist() == [2, 5, 8, 11]
    assert (seq[:, pos] == 99).all() and (seq == 99).sum() == 8
    torch.testing.assert_close(seq[:, pos - 1], true)            # the true token sits right before each [LOSS]
    torch.testing.assert_close(seq[:, pos - 2], pred)
    # a perfect copy critic returns exactly the true tokens as targets, in order
    targets = S.critic_logits(ShiftCopy(100), pred, true, 99).argmax(-1)
    torch.testing.assert_close(targets, true)


def test_self_loss_with_a_perfect_critic_is_the_true_ce():
    torch.manual_seed(0)
    vocab, banned = 50, torch.zeros(50, dtype=torch.bool)
    banned[49] = True                                              # [LOSS]

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, vocab)

        def forward(self, input_ids, use_cache=False):
            return type("Out", (), {"logits": self.emb(input_ids)})

    lm, x, y = LM(), torch.randint(0, 49, (3, 7)), torch.randint(0, 49, (3, 7))
    loss, agree = S.self_loss(lm, ShiftCopy(vocab), x, y, 49, banned)
    assert agree.item() == 1.0
    ref = F.cross_entropy(lm.emb(x).reshape(-1, vocab), y.reshape(-1))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert lm.emb.weight.grad is not None                         # gradient reaches the LM, not the critic


def test_masked_argmax_and_adversarial_tokens_never_pick_banned_ids():
    torch.manual_seed(0)
    logits = torch.zeros(2, 50, 10)
    logits[..., 3] = 100.0                                         # a banned id with the highest logit
    banned = torch.zeros(10, dtype=torch.bool)
    banned[[3, 9]] = True
    assert not banned[S.masked_argmax(logits, banned)].any()
    for p_random in (0.0, 0.5, 1.0):
        drifted = S.adversarial_predictions(logits, banned, p_random, temperature=2.0)
        assert drifted.shape == (2, 50) and not banned[drifted].any()
    uniform = S.adversarial_predictions(torch.zeros(4, 20000, 10), banned, 1.0, 1.0)
    freq = torch.bincount(uniform.flatten(), minlength=10).float() / uniform.numel()
    np.testing.assert_allclose(freq[~banned].numpy(), 1 / 8, atol=0.01)


def test_ema_update_matches_the_formula():
    torch.manual_seed(0)
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in target.parameters()]
    S.ema_update_(target, source, 0.9)
    for p, p0, q in zip(target.parameters(), t0, source.parameters()):
        torch.testing.assert_close(p, 0.9 * p0 + 0.1 * q)
    S.ema_update_(target, source, 0.0)                             # decay 0: a copy
    for p, q in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(p, q)
    before = [p.detach().clone() for p in source.parameters()]
    S.ema_update_(source, nn.Linear(3, 2), 1.0)                    # decay 1: frozen
    for p, b in zip(source.parameters(), before):
        torch.testing.assert_close(p, b)


# ------------------------------------------------------------------------------------------------
# Hack detector and text metrics
# ------------------------------------------------------------------------------------------------
def test_hack_detector_fires_on_a_real_rise_and_not_on_noise():
    rng = np.random.default_rng(0)
    falling_self = list(np.linspace(2.0, 0.1, 40))
    rise = [3.0 - 0.02 * i for i in range(15)] + [2.72 + 0.03 * i for i in range(1, 26)]   # best 2.72 at 14
    j = S.detect_hack(rise, falling_self, delta=0.05, k=3)
    assert j is not None and rise[j] > min(rise[:j]) + 0.05 and all(r > min(rise[:j]) + 0.05 for r in rise[j:j + 3])
    assert j == 16                                                 # 2.78 is the first value above 2.72 + 0.05
    for seed in range(20):                                         # flat and slowly falling CE with noise << delta
        noise = np.random.default_rng(seed).normal(0, 0.01, 40)
        assert S.detect_hack(list(2.5 + noise), falling_self, 0.05, 3) is None
        assert S.detect_hack(list(np.linspace(3, 2, 40) + noise), falling_self, 0.05, 3) is None
    # a single spike is not a rise that "stays"
    spiky = [2.5] * 40
    spiky[20] = 4.0
    assert S.detect_hack(spiky, falling_self, 0.05, 3) is None
    # CE rises but the proxy rises too: that is divergence, not hacking
    assert S.detect_hack(rise, list(np.linspace(0.1, 2.0, 40)), 0.05, 3) is None
    assert S.detect_hack(rise[:16], falling_self, 0.05, 3) is None   # too short to confirm
    assert S.detect_hack(list(rng.normal(0, 1, 2)), [0, 0], 0.05, 3) is None


def test_distinct_and_repetition_by_hand():
    assert S.distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert S.distinct_n([[1, 1, 1, 1]], 1) == 0.25
    assert S.distinct_n([[1, 2, 1, 2, 1]], 2) == pytest.approx(2 / 4)
    assert S.distinct_n([[1, 2], [3, 3]], 1) == pytest.approx((1 + 0.5) / 2)
    assert S.repetition_rate([[5, 6, 7, 8, 9]], 4) == 0.0
    assert S.repetition_rate([[1, 2, 3, 4] * 5], 4) == pytest.approx(1 - 4 / 17)


def test_kl_from_reference():
    logits = torch.randn(2, 3, 7)
    assert S.kl_from_reference(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    p, q = torch.softmax(logits, -1), torch.softmax(logits.flip(-1), -1)
    ref = (p * (p.log() - q.log())).sum(-1).mean()
    assert S.kl_from_reference(logits, logits.flip(-1)).item() == pytest.approx(ref.item(), rel=1e-5)


def test_phase2_eval_schedule_is_dense_first():
    assert S.phase2_eval_steps(100, 25) == [0, 1, 2, 4, 8, 16, 25, 50, 75, 100]
    assert S.phase2_eval_steps(30, 25) == [0, 1, 2, 4, 8, 16, 25, 30]
    assert S.phase2_eval_steps(3, 25) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------
# Shared LM blocks: corpus, tokenizer, model
# ------------------------------------------------------------------------------------------------
def test_corpus_split_and_byte_tokenizer_with_loss_token():
    args = tiny_args()
    train_text, val_text, source = S.load_corpus(args)
    assert "pydoc_data" in source and len(val_text) == int((len(train_text) + len(val_text)) * 0.1)
    tok = S.build_tokenizer(args, train_text, S.SPECIALS)
    assert tok.n_vocab == 257 and tok.special_ids == {"[LOSS]": 256}
    ids = tok.encode(val_text[:500])
    assert max(ids) < 256 and tok.decode(ids) == val_text[:500]
    assert tok.decode([104, 105, 256]) == "hi[LOSS]"
    g = torch.Generator().manual_seed(0)
    data = torch.arange(100)
    w = S.sample_windows(data, 5, 7, g)
    assert w.shape == (5, 7) and ((w[:, 1:] - w[:, :-1]) == 1).all()


def test_bpe_tokenizer_trains_saves_and_reloads(tmp_path):
    args = tiny_args(tokenizer="bpe", vocab_size=300)
    train_text, val_text, _ = S.load_corpus(args)
    tok = S.build_tokenizer(args, train_text, S.SPECIALS)
    assert tok.n_vocab == 300 and "[LOSS]" in tok.special_ids
    ids = tok.encode(val_text[:1000])
    assert tok.decode(ids) == val_text[:1000] and len(ids) < 1000       # round trip, and it compresses
    path = tok.save(str(tmp_path))
    again = S.build_tokenizer(tiny_args(tokenizer=path), "unused", S.SPECIALS)
    assert again.encode(val_text[:1000]) == ids and again.special_ids == tok.special_ids
    loss_id = tok.special_ids["[LOSS]"]
    assert tok.encode("[LOSS]") == [loss_id]


def test_loss_token_is_added_and_pretrained_embeddings_resized(tmp_path):
    save_byte_checkpoint(tmp_path / "ckpt")
    args = tiny_args(model_name_or_path=str(tmp_path / "ckpt"), sample_tokens=8)
    model, info = S.build_lm(args, 257, 48)
    assert info["resized_from"] == 256 and info["n_rows"] == 257
    assert model.get_input_embeddings().weight.shape[0] == 257
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model(torch.tensor([[1, 256, 2]])).logits.shape == (1, 3, 257)
    with pytest.raises(ValueError, match="has a context of 64"):
        S.build_lm(args, 257, 96)
    scratch, info = S.build_lm(tiny_args(), 257, 48, attn_implementation="eager")
    assert info["resized_from"] is None and scratch.config.num_key_value_heads == 1
    assert scratch.config.tie_word_embeddings and scratch.config._attn_implementation == "eager"


def test_scratch_model_on_the_meta_device_has_the_real_parameter_count():
    """finalize_args counts parameters on the meta device (nothing allocated): the count must be the real one."""
    for kw in ({}, {"n_embd": 48, "n_layer": 2, "n_head": 4, "n_kv_head": 2}):
        args = tiny_args(**kw)
        model, info = S.build_lm(args, args.n_vocab, max(args.critic_len, S.PROMPT_LEN + args.sample_tokens))
        assert args.n_params == info["n_params"] == sum(p.numel() for p in model.parameters())
        assert args.n_vocab == 257 and args.loss_id == 256 and args.train_tokens > args.val_tokens > 0


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, no traceback, no run folder
# ------------------------------------------------------------------------------------------------
def input_files(tmp_path) -> dict:
    """Placeholder -> path of a malformed or too-short input file or folder under tmp_path."""
    files = {"EMPTY": ("empty.txt", "  \n"), "SHORT": ("short.txt", "x" * 30), "NOTOK": ("notok.json", '{"a": 1}'),
             "EMPTYJSON": ("empty.json", ""), "GARBAGE": ("garbage.json", "garbage{")}
    out = {}
    for key, (name, text) in files.items():
        (tmp_path / name).write_text(text)
        out[key] = str(tmp_path / name)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "badckpt").mkdir()
    (tmp_path / "badckpt" / "config.json").write_text('{"model_type": "nonsense"}')
    out.update(DIR=str(tmp_path / "emptydir"), BADCKPT=str(tmp_path / "badckpt"))
    return out


@pytest.mark.parametrize("args, message", [
    (("--critic", "greedy"), "unknown --critic 'greedy'"),
    (("--torch-threads", "0"), "--torch-threads must be positive"),
    (("--learning-rate", "-1"), "--learning-rate must be a finite number > 0"),
    (("--learning-rate", "inf"), "--learning-rate must be a finite number > 0"),
    (("--self-learning-rate", "0"), "--self-learning-rate must be a finite number > 0"),
    (("--max-grad-norm", "0"), "--max-grad-norm must be a finite number > 0"),
    (("--weight-decay", "-0.1"), "--weight-decay must be a finite number >= 0"),
    (("--weight-decay", "2000"), "x --weight-decay must be below 1"),
    (("--n-embd", "0"), "--n-embd must be positive"),
    (("--n-layer", "0"), "--n-layer must be positive"),
    (("--n-head", "3"), "--n-kv-head 2 does not divide --n-head 3"),
    (("--n-head", "4", "--n-kv-head", "3"), "does not divide"),
    (("--n-embd", "100", "--n-head", "8", "--n-kv-head", "2"), "--n-head 8 does not divide --n-embd 100"),
    (("--n-embd", "6", "--n-head", "2", "--n-kv-head", "1"), "must be even"),
    (("--block-size", "0"), "--block-size must be positive"),
    (("--batch-size", "0"), "--batch-size must be positive"),
    (("--meta-steps", "0"), "--meta-steps must be positive"),
    (("--self-steps", "-1"), "--self-steps must be non-negative"),
    (("--guard-meta-steps", "-1"), "--guard-meta-steps must be non-negative"),
    (("--vocab-size", "0"), "--vocab-size must be positive"),
    (("--seed", "-1"), "--seed must lie in [0, 2**32)"),
    (("--ema-decay", "1.5"), "--ema-decay must lie in [0, 1)"),
    (("--adversarial", "True"), "unknown --adversarial 'True'"),
    (("--guard-signal", "labels"), "unknown --guard-signal 'labels'"),
    (("--critic", "truth", "--hack-guard", "True"), "--hack-guard needs a critic"),
    (("--hack-agree-drop", "0"), "--hack-agree-drop must be a finite number > 0"),
    (("--lf-entropy-drop", "-1"), "--lf-entropy-drop must be a finite number > 0"),
    (("--lf-echo-rise", "1"), "--lf-echo-rise must be a finite number in (0, 1)"),
    (("--save-meta-at", "0"), "--save-meta-at 0 must lie in [1, --meta-steps 50]"),
    (("--save-meta-at", "51"), "--save-meta-at 51 must lie in [1, --meta-steps 50]"),
    (("--init-meta", "/no/such.pt"), "could not be loaded"),
    (("--init-meta", "NOTOK"), "could not be loaded"),
    (("--ema-decay", "1"), "--ema-decay must lie in [0, 1)"),
    (("--adv-random", "-0.1"), "--adv-random must lie in [0, 1]"),
    (("--adv-temperature", "0"), "--adv-temperature must be a finite number > 0"),
    (("--val-fraction", "1"), "--val-fraction must lie in (0, 1)"),
    (("--hack-delta", "-1"), "--hack-delta must be a finite number >= 0"),
    (("--hack-patience", "0"), "--hack-patience must be positive"),
    (("--hack-patience", "20"), "needs at least 21 phase-2 evaluations"),          # the detector could never fire
    (("--eval-every", "0"), "--eval-every must be positive"),
    (("--eval-windows", "0"), "--eval-windows must be positive"),
    (("--sample-prompts", "40"), "--sample-prompts 40 exceeds --eval-windows 32"),
    (("--sample-tokens", "0"), "--sample-tokens must be positive"),
    (("--text-path", "a", "--hf-dataset", "b"), "at most one of --text-path and --hf-dataset"),
    (("--hf-dataset", "roneneldan/TinyStories"), "needs the `datasets` package"),
    (("--text-path", "/no/such.txt"), "is not a file"),
    (("--text-path", "DIR"), "is not a file"),
    (("--text-path", "EMPTY"), "is empty"),
    (("--text-path", "SHORT"), "too short for --block-size 32"),
    (("--text-path", "SHORT", "--block-size", "16"), "27 train / 3 validation tokens"),
    (("--tokenizer", "nosuch"), "is neither byte, bpe nor an existing file or folder"),
    (("--tokenizer", "NOTOK"), "could not be loaded"),                             # JSON, not a tokenizer
    (("--tokenizer", "EMPTYJSON"), "could not be loaded"),
    (("--tokenizer", "GARBAGE"), "could not be loaded"),
    (("--tokenizer", "DIR"), "could not be loaded"),
    (("--tokenizer", "bpe", "--vocab-size", "100"), "--vocab-size 100 must be at least 257"),
    (("--model-name-or-path", "/no/such/model"), "is not a folder"),
    (("--model-name-or-path", "EMPTY"), "is not a folder"),
    (("--model-name-or-path", "DIR"), "could not be loaded"),
    (("--model-name-or-path", "BADCKPT"), "could not be loaded"),
    (("--n-embd", "32768", "--n-layer", "8", "--n-head", "64", "--n-kv-head", "64"), "GiB"),   # the weights
    (("--batch-size", "100000", "--block-size", "1024"), "GiB"),                                # the logits
    (("--batch-size", "abc"), None),                                            # tyro's parse box
    (("--no-such-flag", "1"), None),
])
def test_bad_input_fails_fast_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    files = input_files(tmp_path)
    args = tuple(files.get(a, a) for a in args)
    assert_bad_input(S, SCRIPT, args, message, capsys, tmp_path, monkeypatch)


def test_a_checkpoint_with_a_short_context_is_refused(capsys, tmp_path, monkeypatch):
    save_byte_checkpoint(tmp_path / "ckpt")                                      # context 64 < 3 * 32
    err = assert_bad_input(S, SCRIPT, ("--model-name-or-path", str(tmp_path / "ckpt")), "has a context of 64",
                           capsys, tmp_path, monkeypatch)
    assert "the run needs 96 positions" in err


def test_bad_input_in_a_subprocess_leaves_no_folder(run):
    proc, run_dir = run(SCRIPT, "--learning-rate", "-1", extra_env=OFFLINE)
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "self_critic_lm.py: error: --learning-rate must be a finite number > 0, got -1.0"


# ------------------------------------------------------------------------------------------------
# Smoke runs (in process, and one through the real CLI; temporary directory)
# ------------------------------------------------------------------------------------------------
def comparable(rows):
    """Metric rows without the wall-clock-dependent columns."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_online_run_outputs_phase1_learns_and_is_deterministic(tmp_path, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    code, run_dir = run_in_process(S, SCRIPT, "step", tmp_path / "a", *TINY, "--critic", "online")
    out = capsys.readouterr().out
    assert code == 0
    rows, summary = read_metrics(run_dir), read_json(run_dir / "summary.json")
    assert (run_dir / "self_critic.png").stat().st_size > 1000 and (run_dir / "config.json").exists()
    config = read_json(run_dir / "config.json")
    assert config["x_axis"] == "step" and config["args"]["n_params"] == summary["n_params"] > 0
    assert config["args"]["n_vocab"] == 257 and config["args"]["train_tokens"] > 0
    phase1 = [r for r in rows if r["phase"] == 1]
    assert phase1[-1]["val/ce"] < phase1[0]["val/ce"] - 0.3          # a tiny phase 1 lowers validation CE
    assert summary["val_ce_end_phase1"] < summary["val_ce_start"]
    phase2 = [r for r in rows if r["phase"] == 2]
    assert [r["self_step"] for r in phase2] == S.phase2_eval_steps(12, 5)
    for key in ("val/ce", "val/self_loss", "val/critic_agreement", "val/kl_from_start", "gen/distinct_1",
                "gen/distinct_2", "gen/repetition_rate", "perf/gen_tokens_per_s"):
        assert key in phase2[-1], key
    assert phase2[0]["val/kl_from_start"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["step"] == 10 + 12 and len(summary["ce_curve"]) == len(phase2)
    assert summary["status"] == "ok" and summary["rows_logged"] == len(rows) and summary["last_step"] == 22
    assert "sample phase2_start" in out and "sample end" in out
    code2, run_dir2 = run_in_process(S, SCRIPT, "step", tmp_path / "b", *TINY, "--critic", "online")
    assert code2 == 0
    assert comparable(read_metrics(run_dir2)) == comparable(rows)


def test_frozen_adversarial_guard_with_bpe_and_tracking(run):
    """The real CLI path, with --track offline."""
    proc, run_dir = run(SCRIPT, *TINY, "--critic", "frozen", "--adversarial", "noise", "--hack-guard", "True",
                        "--guard-meta-steps", "3", "--self-steps", "40", "--learning-rate", "1e-2",
                        "--tokenizer", "bpe", "--vocab-size", "300", "--track=True", "--wandb-project-name", "test",
                        extra_env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    rows, summary = read_metrics(run_dir), read_json(run_dir / "summary.json")
    assert all(r["train/adv_critic_ce"] > 0 for r in rows if "train/adv_critic_ce" in r)
    assert summary["n_vocab"] == 300 and (run_dir / "tokenizer.json").exists()
    assert summary["guard_restores"] >= 1 and "hack guard: restored" in proc.stdout
    # each restore adds its meta steps to the global step count, not to the self steps
    assert rows[-1]["step"] == 10 + 40 + 3 * summary["guard_restores"] and rows[-1]["self_step"] == 40
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_ema_critic_on_a_local_pretrained_checkpoint_and_text_file(tmp_path, capsys):
    save_byte_checkpoint(tmp_path / "ckpt")
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    (tmp_path / "cwd").mkdir()
    code, run_dir = run_in_process(S, SCRIPT, "step", tmp_path / "cwd", *TINY, "--critic", "ema", "--ema-decay", "0.9",
                                   "--model-name-or-path", str(tmp_path / "ckpt"), "--text-path", str(text))
    assert code == 0, capsys.readouterr().err
    summary = read_json(run_dir / "summary.json")
    assert summary["model_resized_from"] == 256 and summary["n_vocab"] == 257 and "corpus.txt" in summary["corpus"]
    assert summary["val_ce_end_phase1"] < summary["val_ce_start"]


# ------------------------------------------------------------------------------------------------
# A non-finite loss stops the run; every finished row stays, summary.json is strict JSON
# ------------------------------------------------------------------------------------------------
def poison_after(real, n_good: int):
    """real(...) for the first n_good calls, then the same with a NaN total loss."""
    calls = {"n": 0}

    def poisoned(*a, **kw):
        out = list(real(*a, **kw))
        calls["n"] += 1
        if calls["n"] > n_good:
            out[0] = out[0] * float("nan")
        return tuple(out)

    return poisoned


@pytest.mark.parametrize("phase, fn, n_good, stop_step, phase_rows", [
    (1, "meta_loss", 7, 10, (2, 0)),        # meta steps 1-7 fine: rows at steps 0 and 5; step 10's window has NaN
    (2, "self_loss", 5, 10 + 10, (3, 5)),   # self steps 1-5 fine: rows at self steps 0, 1, 2, 4, 5; stops at 10
])
def test_non_finite_loss_stops_and_keeps_the_log(phase, fn, n_good, stop_step, phase_rows, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.setattr(S, fn, poison_after(getattr(S, fn), n_good))
    code, run_dir = run_in_process(S, SCRIPT, "step", tmp_path, *TINY)
    err = capsys.readouterr().err
    assert code == 1 and "stopped: non-finite loss" in err and "Traceback" not in err, err
    rows = read_metrics(run_dir)
    assert [sum(r["phase"] == p for r in rows) for p in (1, 2)] == list(phase_rows)
    assert all(r["val/ce"] is not None for r in rows)                  # only finished, finite rows were logged
    text = (run_dir / "summary.json").read_text()
    assert "NaN" not in text
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == f"non-finite loss at step {stop_step} ({'meta' if phase == 1 else 'self'} loss nan)"
    assert summary["rows_logged"] == len(rows) and summary["last_step"] == rows[-1]["step"]
    assert (run_dir / "self_critic.png").exists()


# ------------------------------------------------------------------------------------------------
# Issue 12: the self loss's targets, adversarial inputs, critic modes, the guard's restore, the
# detector's extra rules, meta checkpoints and save_pretrained snapshots
# ------------------------------------------------------------------------------------------------
class ShiftPlusOne(ShiftCopy):
    """A fake critic that names y_i + 1 at each [LOSS] position (wrong on purpose)."""

    def forward(self, input_ids, use_cache=False):
        prev = torch.cat([input_ids[:, :1], input_ids[:, :-1]], dim=1)
        return type("Out", (), {"logits": 10.0 * F.one_hot((prev + 1) % self.vocab, self.vocab).float()})


def test_self_loss_trains_on_the_critics_targets_and_truth_control_on_y():
    torch.manual_seed(0)
    vocab, banned = 50, torch.zeros(50, dtype=torch.bool)
    banned[49] = True
    emb = nn.Embedding(vocab, vocab)
    lm = type("LM", (nn.Module,), {"forward": lambda self, input_ids, use_cache=False:
                                   type("Out", (), {"logits": emb(input_ids)})})()
    x, y = torch.randint(0, 48, (3, 7)), torch.randint(0, 48, (3, 7))
    loss, agree = S.self_loss(lm, ShiftPlusOne(vocab), x, y, 49, banned)
    assert agree.item() == 0.0
    assert loss.item() == pytest.approx(F.cross_entropy(emb(x).reshape(-1, vocab), (y + 1).reshape(-1)).item(), rel=1e-6)
    loss, agree = S.self_loss(lm, None, x, y, 49, banned)                       # --critic truth
    assert agree.item() == 1.0
    assert loss.item() == pytest.approx(F.cross_entropy(emb(x).reshape(-1, vocab), y.reshape(-1)).item(), rel=1e-6)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    args = tiny_args()
    model, _ = S.build_lm(args, 257, 48)
    banned = torch.zeros(257, dtype=torch.bool)
    banned[[256, 7]] = True
    return model, banned


def test_hotflip_tokens_maximise_the_first_order_critic_loss():
    """Oracle by a different route: the gradient of the critic CE with respect to a one-hot input,
    whose entry (slot 3i, v) is E_v . G_i; the chosen token maximises it over allowed v != y_i."""
    model, banned = tiny_model()
    g = torch.Generator().manual_seed(1)
    y, pred = torch.randint(0, 200, (3, 5), generator=g), torch.randint(0, 200, (3, 5), generator=g)
    flip = S.hotflip_predictions(model, pred, y, 256, banned)
    assert all(p.grad is None for p in model.parameters())                     # no parameter gradients left
    seq = S.critic_input(pred, y, 256)
    onehot = F.one_hot(seq, 257).float().requires_grad_(True)
    logits = model(inputs_embeds=onehot @ model.get_input_embeddings().weight, use_cache=False).logits
    F.cross_entropy(logits[:, S.loss_positions(5)].reshape(-1, 257), y.reshape(-1)).backward()
    d = onehot.grad[:, 0::3]                                                    # (B, L, V) at the p_i slots
    score = d - d.gather(-1, pred.unsqueeze(-1))
    score[..., banned] = -float("inf")
    score.scatter_(-1, y.unsqueeze(-1), -float("inf"))
    torch.testing.assert_close(flip, score.argmax(-1))
    assert not (flip == y).any() and not banned[flip].any() and (flip != pred).any()


@pytest.mark.parametrize("mode", ["noise", "hotflip"])
def test_meta_loss_adversarial_term_uses_the_named_inputs_with_the_true_target(mode):
    model, banned = tiny_model()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 200, (2, 6), generator=g), torch.randint(0, 200, (2, 6), generator=g)
    torch.manual_seed(5)
    total, lm, crit, adv = S.meta_loss(model, x, y, 256, banned, mode, 0.5, 2.0)
    torch.manual_seed(5)
    logits = S.lm_logits(model, x)
    pred = S.masked_argmax(logits.detach(), banned)
    drifted = (S.adversarial_predictions(logits, banned, 0.5, 2.0) if mode == "noise"
               else S.hotflip_predictions(model, pred, y, 256, banned))
    assert not (drifted == pred).all()
    expected = S.cross_entropy(S.critic_logits(model, drifted, y, 256), y)
    assert adv.item() == pytest.approx(expected.item(), rel=1e-5)
    assert crit.item() == pytest.approx(S.cross_entropy(S.critic_logits(model, pred, y, 256), y).item(), rel=1e-5)
    assert total.item() == pytest.approx((lm + crit + adv).item(), rel=1e-6)
    assert S.meta_loss(model, x, y, 256, banned, "none")[3].item() == 0.0


def test_noise_tokens_without_random_follow_the_tempered_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0]).expand(1, 40000, 5)
    banned = torch.tensor([False, False, False, False, True])
    drawn = S.adversarial_predictions(logits, banned, 0.0, 2.0)
    freq = torch.bincount(drawn.flatten(), minlength=5).float() / drawn.numel()
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]) / 2.0, -1)
    np.testing.assert_allclose(freq[:4].numpy(), expected.numpy(), atol=0.01)


def test_detector_agreement_rule_and_label_free_rule_by_hand():
    flat, falling = [2.0] * 10, list(np.linspace(2, 1, 10))
    agree = [0.9, 0.9, 0.88, 0.7, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9]
    assert S.detect_hack(flat, falling, 0.05, 3) is None
    assert S.detect_hack(flat, falling, 0.05, 3, agree, 0.1) == 3                # 0.7, 0.6, 0.6 < 0.9 - 0.1
    assert S.detect_hack(flat, falling, 0.05, 3, agree, 0.25) is None            # 0.7 is not < 0.65
    assert S.detect_hack(flat, falling, 0.05, 4, agree, 0.1) is None             # the drop lasts 3 evals only
    ent = [3.0, 2.9, 2.4, 2.3, 2.4, 2.6, 2.1]
    assert S.detect_label_free(ent, 0.5, 3) == 2 and S.detect_label_free(ent, 0.5, 4) is None
    assert S.detect_label_free(ent, 0.85, 1) == 6
    echo = [0.4, 0.45, 0.52, 0.55, 0.6, 0.45, 0.7]                               # flat entropy, rising echo rate
    assert S.detect_label_free([3.0] * 7, 0.5, 3, echo) is None                   # echo rule off by default
    assert S.detect_label_free([3.0] * 7, 0.5, 3, echo, 0.1) == 2                 # 0.52, 0.55, 0.6 > 0.4 + 0.1
    assert S.detect_label_free([3.0] * 7, 0.5, 3, echo, 0.13) is None            # 0.52 is not > 0.53
    assert S.detect_label_free(ent, 0.5, 3, echo, 0.1) == 2                       # either rule; the first j
    assert S.histogram_entropy(torch.tensor([1, 1, 2, 3]), 5).item() == pytest.approx(
        -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)), rel=1e-6)
    assert S.histogram_entropy(torch.tensor([4, 4, 4]), 5).item() == pytest.approx(0.0, abs=1e-6)


def param_ptrs(m):
    return {p.data_ptr() for p in m.parameters()}


@pytest.mark.parametrize("critic, decay", [("frozen", None), ("ema", 0.9), ("online", None), ("truth", None)])
def test_phase2_critic_is_what_its_mode_says(critic, decay, tmp_path, monkeypatch):
    """Every self step's critic: online is the live model; frozen is a separate copy that never moves
    (while the LM does); ema is a separate copy updated once per self step by theta' = d theta' + (1-d) theta
    with d = --ema-decay (checked against the formula at each call); truth has no critic."""
    calls, emas = [], []
    real_self, real_ema = S.self_loss, S.ema_update_

    def self_spy(model, crit, *a, **kw):
        calls.append((model, crit, None if crit is None or crit is model else
                      [p.detach().clone() for p in crit.parameters()], [p.detach().clone() for p in model.parameters()]))
        return real_self(model, crit, *a, **kw)

    def ema_spy(target, source, d):
        expected = [decay * t.detach() + (1 - decay) * s.detach() for t, s in zip(target.parameters(), source.parameters())]
        real_ema(target, source, d)
        emas.append((target, source, d))
        for t, e in zip(target.parameters(), expected):
            torch.testing.assert_close(t.detach(), e)

    monkeypatch.setattr(S, "self_loss", self_spy)
    monkeypatch.setattr(S, "ema_update_", ema_spy)
    extra = ("--ema-decay", str(decay)) if decay else ()
    code, run_dir = run_in_process(S, SCRIPT, "step", tmp_path, *TINY, "--critic", critic, *extra,
                                   "--self-steps", "6", "--sample-prompts", "0")
    assert code == 0 and len(calls) == 6
    model = calls[0][0]
    assert all(c[0] is model for c in calls)
    assert any((a - b).abs().max() > 0 for a, b in zip(calls[0][3], calls[-1][3]))       # the LM moved
    if critic == "online":
        assert all(c[1] is model for c in calls) and not emas
    elif critic == "truth":
        assert all(c[1] is None for c in calls) and not emas
        assert read_json(run_dir / "summary.json")["critic"] == "truth"
    else:
        crit = calls[0][1]
        assert all(c[1] is crit for c in calls) and not (param_ptrs(crit) & param_ptrs(model))
        for a, b in zip(calls[0][2], calls[0][3]):                                   # the copy of the start
            torch.testing.assert_close(a, b)
        moved = any((a - b).abs().max() > 0 for a, b in zip(calls[0][2], calls[-1][2]))
        if critic == "frozen":
            assert not moved and not emas
        else:
            assert moved and len(emas) == 6 and all(t is crit and s is model and d == decay for t, s, d in emas)


@pytest.mark.parametrize("signal", ["oracle", "label_free"])
def test_guard_restores_its_rollback_weights_picked_on_the_guard_windows(signal, tmp_path, monkeypatch):
    """A guard detector forced to fire at the first evaluation where the guard CE is above the segment's
    best; with 0 guard meta steps the row after the restore must show exactly the rollback weights' guard
    CE: the segment's best guard CE (oracle) or its start (label_free)."""
    fired = []

    def fake_detect(args, segment):
        if not fired and len(segment) >= 3 and segment[-1]["guard/ce"] > min(r["guard/ce"] for r in segment[:-1]):
            fired.append([dict(r) for r in segment])
            return len(segment) - 1
        return None

    monkeypatch.setattr(S, "guard_detect", fake_detect)
    code, run_dir = run_in_process(S, SCRIPT, "step", tmp_path, *TINY, "--critic", "online", "--hack-guard", "True",
                                   "--guard-signal", signal, "--guard-meta-steps", "0", "--self-steps", "40",
                                   "--eval-every", "2", "--self-learning-rate", "0.03", "--sample-prompts", "0")
    assert code == 0 and len(fired) == 1
    rows = [r for r in read_metrics(run_dir) if r["phase"] == 2]
    seg = fired[0]
    after = next(r for r in rows if r["guard/restores"] == 1)
    assert after["self_step"] == seg[-1]["self_step"]
    want = min(r["guard/ce"] for r in seg) if signal == "oracle" else seg[0]["guard/ce"]
    assert after["guard/ce"] == pytest.approx(want, abs=1e-6) and abs(after["guard/ce"] - seg[-1]["guard/ce"]) > 1e-4
    assert "val/ce" in after and all(r["guard/ce"] != r["val/ce"] for r in rows)    # two different window sets


def test_meta_checkpoint_resumes_exactly_and_snapshots_load_with_from_pretrained(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    code, run_a = run_in_process(S, SCRIPT, "step", tmp_path / "a", *TINY, "--save-meta-at", "5", "10",
                                 "--save-models", "True")
    assert code == 0 and (run_a / "meta_5.pt").exists()
    code, run_b = run_in_process(S, SCRIPT, "step", tmp_path / "b", *TINY, "--init-meta", str(run_a / "meta_10.pt"),
                                 "--meta-steps", "3")
    assert code == 0
    ra, rb = read_metrics(run_a), read_metrics(run_b)
    assert read_json(run_b / "summary.json")["meta_steps"] == 10                  # the checkpoint's
    assert comparable(rb) == comparable(ra)
    summary = read_json(run_a / "summary.json")
    snap = summary["snapshots"]["model_phase2_start"]
    assert snap["self_step"] == 0 and snap["step"] == 10 and abs(sum(f for _, f in snap["true_tokens_top"])) <= 1
    path = snap["path"]
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    text = "def f(x):\n    return x  # é"
    assert tok.encode(text) == list(text.encode()) and tok.convert_tokens_to_ids("[LOSS]") == 256
    ids = torch.tensor([tok.encode(text)])
    report = read_json(run_a / "model_phase2_start" / "report.json")
    assert report["target_entropy"] == pytest.approx(rows_at(ra, 10)["val/target_entropy"], abs=1e-5)
    assert len(report["samples"]) == 1 and " ||| " in report["samples"][0]
    state = torch.load(run_a / "meta_10.pt", weights_only=True)["model"]
    ref, _ = S.build_lm(tiny_args(), 257, 48)
    ref.load_state_dict(state)
    torch.testing.assert_close(model(ids).logits, ref(ids).logits)              # the phase-2 start = meta step 10


def rows_at(rows, step):
    return next(r for r in rows if r["step"] == step and r["phase"] == 2)


def test_init_meta_from_another_configuration_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "c").mkdir()
    code, run_a = run_in_process(S, SCRIPT, "step", tmp_path / "a", *TINY, "--save-meta-at", "10", "--self-steps", "0")
    assert code == 0
    assert_bad_input(S, SCRIPT, (*TINY, "--init-meta", str(run_a / "meta_10.pt"), "--n-embd", "64"),
                     "was made with --n-embd 32, this run has 64", capsys, tmp_path / "c", monkeypatch)


@pytest.mark.parametrize("fresh", [False, True])
def test_phase2_optimizer_is_fresh_only_with_the_original_option(fresh, tmp_path, monkeypatch):
    """--fresh-optimizer True (the original's optimisation): phase 2's first step uses a new AdamW with no
    moments at --self-learning-rate; False carries phase 1's AdamW (its moments) over."""
    seen, real = [], S.optimizer_step

    def spy(rs, loss):
        seen.append((rs.optimizer, len(rs.optimizer.state), rs.optimizer.param_groups[0]["lr"]))
        real(rs, loss)

    monkeypatch.setattr(S, "optimizer_step", spy)
    code, _ = run_in_process(S, SCRIPT, "step", tmp_path, *TINY, "--self-steps", "4", "--sample-prompts", "0",
                             "--self-learning-rate", "1e-4", "--fresh-optimizer", str(fresh))
    assert code == 0 and len(seen) == 10 + 4
    meta_opt, first_self = seen[9], seen[10]
    assert meta_opt[2] == 3e-3 and first_self[2] == 1e-4 and all(s[2] == 1e-4 for s in seen[10:])
    if fresh:
        assert first_self[0] is not meta_opt[0] and first_self[1] == 0
    else:
        assert first_self[0] is meta_opt[0] and first_self[1] > 0


SEED_SCALE = ("--tokenizer bpe --vocab-size 4097 --n-embd 512 --n-layer 6 --n-head 8 --n-kv-head 2 --block-size 41 "
              "--batch-size 128 --learning-rate 1e-4 --fresh-optimizer True --meta-steps 1000 --self-steps 1000 "
              "--eval-every 25 --save-meta-at 1000 --save-models True --critic frozen")


def test_seed_scale_command_is_documented_and_runs_at_tiny_sizes(tmp_path, capsys):
    """The documented seed-scale configuration (about 24M parameters, 4,097 ids): its parameter count on the
    meta device, and a CPU smoke run of the same flags with the sizes and step counts shrunk."""
    doc = (S.__file__.replace("self_critic_lm.py", "") + "docs/self_critic_lm.md")
    assert SEED_SCALE in open(doc).read()
    args = S.finalize_args(S.Args(**{"tokenizer": "bpe", "vocab_size": 4097, "n_embd": 512, "n_layer": 6, "n_head": 8,
                                     "n_kv_head": 2, "block_size": 41, "batch_size": 128, "cuda": False}))
    assert args.n_vocab == 4097 and 24e6 < args.n_params < 25e6
    tiny = ("--vocab-size", "300", "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--n-kv-head", "1",
            "--batch-size", "4", "--meta-steps", "4", "--self-steps", "4", "--save-meta-at", "4", "--eval-every", "2",
            "--eval-windows", "4", "--sample-prompts", "1", "--sample-tokens", "4")
    code, run_dir = run_in_process(S, SCRIPT, "step", tmp_path, *SEED_SCALE.split(), *tiny)
    assert code == 0, capsys.readouterr().err
    summary = read_json(run_dir / "summary.json")
    assert summary["fresh_optimizer"] and summary["self_learning_rate"] == 1e-4 and summary["n_vocab"] == 300
    assert (run_dir / "meta_4.pt").exists() and (run_dir / "model_phase2_start" / "tokenizer.json").exists()


def test_rollback_point_is_chosen_on_the_guard_windows_only():
    oracle, label_free = tiny_args(hack_guard=True), tiny_args(hack_guard=True, guard_signal="label_free")
    seg = [{"guard/ce": 3.0, "val/ce": 3.0}, {"guard/ce": 2.9, "val/ce": 3.5}, {"guard/ce": 3.1, "val/ce": 2.0}]
    assert S.is_rollback_point(oracle, seg[:1]) and S.is_rollback_point(label_free, seg[:1])
    assert S.is_rollback_point(oracle, seg[:2])                  # best guard CE, although val CE rose
    assert not S.is_rollback_point(oracle, seg)                  # best val CE, but not the best guard CE
    assert not S.is_rollback_point(label_free, seg[:2])          # label-free: only the segment's start


def test_label_free_guard_reads_entropy_and_echo_on_the_guard_windows():
    seg = [{"guard/target_entropy": 3.0, "guard/echo_rate": 0.4, "val/target_entropy": 0.0, "val/echo_rate": 1.0}
           for _ in range(5)]
    for r, e in zip(seg[1:], (0.5, 0.6, 0.6, 0.6)):
        r["guard/echo_rate"] = e
    assert S.guard_detect(S.Args(hack_guard=True, guard_signal="label_free"), seg) is None
    assert S.guard_detect(S.Args(hack_guard=True, guard_signal="label_free", lf_echo_rise=0.15), seg) == 2
    for r in seg[2:]:
        r["guard/target_entropy"] = 2.0
    assert S.guard_detect(S.Args(hack_guard=True, guard_signal="label_free", lf_entropy_drop=0.9), seg) == 2


def test_truth_control_reads_its_critic_numbers_from_a_frozen_copy_of_its_start(tmp_path, monkeypatch):
    seen, real = [], S.evaluate

    def spy(model, critic, ref, *a, **kw):
        if ref is not None:                                                    # phase 2 evaluations
            seen.append((model, critic, [p.detach().clone() for p in critic.parameters()]))
        return real(model, critic, ref, *a, **kw)

    monkeypatch.setattr(S, "evaluate", spy)
    code, _ = run_in_process(S, SCRIPT, "step", tmp_path, *TINY, "--critic", "truth", "--self-steps", "4",
                             "--sample-prompts", "0")
    assert code == 0 and len(seen) >= 3
    model, crit = seen[0][0], seen[0][1]
    assert crit is not model and not (param_ptrs(crit) & param_ptrs(model)) and all(s[1] is crit for s in seen)
    for a, b in zip(seen[0][2], seen[-1][2]):
        torch.testing.assert_close(a, b)


def test_hotflip_never_returns_the_true_token_even_where_it_is_the_first_order_best():
    """A fake critic whose logits at the i-th [LOSS] position are -E e_{3i} (minus the embedding matrix
    times the p-slot embedding): the first-order best replacement is then y itself at almost every
    position, so only the exclusion of y keeps HotFlip from returning it."""
    torch.manual_seed(0)

    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, inputs_embeds, use_cache=False):
            out = torch.zeros(*inputs_embeds.shape[:2], 30)
            out[:, 2::3] = -(inputs_embeds[:, 0::3] @ self.emb.weight.T)
            return type("Out", (), {"logits": out})

    model, banned = Fake(), torch.zeros(30, dtype=torch.bool)
    y, pred = torch.randint(0, 30, (4, 16)), torch.randint(0, 30, (4, 16))
    seq = S.critic_input(pred, y, 0)
    e = model.emb.weight.detach()[seq].requires_grad_(True)
    (g,) = torch.autograd.grad(S.cross_entropy(model(inputs_embeds=e).logits[:, S.loss_positions(16)], y), e)
    unmasked = (g[:, 0::3] @ model.emb.weight.detach().T).argmax(-1)
    assert (unmasked == y).float().mean() > 0.5                                 # y is the first-order best here
    flip = S.hotflip_predictions(model, pred, y, 0, banned)
    assert not (flip == y).any()


def _run(ce, ent=None, echo=None, agree=None, critic="truth"):
    """A synthetic summary.json for the benchmark tables: evaluations every 4 self steps."""
    n = len(ce)
    ent, echo, agree = ent or [3.0] * n, echo or [0.4] * n, agree or [0.9] * n
    return {"critic": critic, "ce_curve": [{"self_step": 4 * i, "val_ce": c, "self_loss": 1.0 - 0.01 * i,
                                            "agreement": a, "target_entropy": h, "echo_rate": e}
                                           for i, (c, h, e, a) in enumerate(zip(ce, ent, echo, agree))]}


def test_detector_calibration_on_the_control_by_hand():
    """The benchmark's calibration (benchmark/self_critic_strength_table.py, self_critic_long_table.py): lasting
    excursions, the 3-sigma floor, the label-free thresholds, leave-one-out false positives, Clopper-Pearson."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(S.__file__).parent / "benchmark"))
    T = importlib.import_module("self_critic_long_table")
    ST = importlib.import_module("self_critic_strength_table")
    lo, hi = ST.clopper_pearson(0, 12)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 12), abs=1e-4)
    lo, hi = ST.clopper_pearson(1, 12)
    assert lo == pytest.approx(0.00211, abs=1e-4) and hi == pytest.approx(0.38480, abs=1e-4)
    assert ST.rise_stat([2.0, 1.9, 1.95, 1.96, 1.97, 1.8]) == pytest.approx(0.05)
    assert ST.agree_stat([0.9, 0.8, 0.7, 0.75, 0.95]) == pytest.approx(0.1)
    assert T.echo_rise_stat([0.4, 0.5, 0.6, 0.55, 0.3]) == pytest.approx(0.1)
    # alternating CE: no lasting rise, so delta is the 3-sigma floor (sigma = std of successive differences / sqrt 2)
    alt = [_run([2.0 + 0.1 * (i % 2) for i in range(12)]) for _ in range(3)]
    d, _, sig, _ = ST.thresholds(alt)
    assert sig == pytest.approx(0.1 / np.sqrt(2), rel=0.05) and d == pytest.approx(3 * sig)
    # label-free thresholds: the largest lasting entropy fall / echo rise of the control, or 3 sigma
    ctrl = [_run([2.0] * 12, ent=[3.0] * 4 + [2.9] * 3 + [3.0] * 5), _run([2.0] * 12, echo=[0.4] * 5 + [0.45] * 7),
            _run([2.0] * 12)]
    assert T.lf_thresholds(ctrl) == (pytest.approx(0.1), pytest.approx(0.05))
    assert T.lf_thresholds(ctrl, leave_out=0) == (pytest.approx(0.0), pytest.approx(0.05))
    wobble = [_run([2.0] * 12, ent=[3.0 + 0.1 * (i % 2) for i in range(12)]) for _ in range(3)]
    assert T.lf_thresholds(wobble)[0] == pytest.approx(3 * 0.1 / np.sqrt(2), rel=0.05)     # the 3-sigma floor
    hack = _run([2.0] * 12, echo=[0.4] * 6 + [0.5] * 6, critic="online")
    assert T.lf_step(hack, 0.1, 0.05) == 24 and T.lf_step(hack, 0.1, 0.1) is None
    assert T.lf_step(_run([2.0] * 12, ent=[3.0] * 3 + [2.8] * 9), 0.1, 0.05) == 12
    # leave-one-out: each of the two control runs with an excursion is judged with the others' thresholds, and fires
    assert T.loo_fp(ctrl, T.lf_thresholds, T.lf_step) == 2
    assert T.loo_fp(ctrl[1:], T.lf_thresholds, T.lf_step) == 1
    assert sum(T.lf_step(s, *T.lf_thresholds(ctrl)) is not None for s in ctrl) == 0
