"""control_parameter.py: beta, V, U and C against hand values and the original's per-sample
loop, the batched script against an unbatched reference, and subprocess runs."""

import math
import re

import numpy as np
import pytest
import torch
import tyro
from conftest import read_json, read_metrics
from dqn_reference import reference_dqn

import control_parameter as cp

SCRIPT = "control_parameter.py"
TINY = ("--env-size", "6", "--hidden-dim", "8", "--num-seeds", "2", "--episodes", "16", "--prefill", "40",
        "--batch-size", "16", "--buffer-size", "200", "--bootstrap", "200", "--max-steps", "20")


def test_value_table_is_a_running_mean_of_max_q():
    t = cp.PressureTables(2, 4, torch.device("cpu"))
    for key, q in (([1, 0], [2.0, 5.0]), ([1, 3], [4.0, 1.0]), ([2, 3], [9.0, 3.0])):
        t.update_value(torch.tensor(key), torch.tensor(q), torch.tensor([True, True]))
    t.update_value(torch.tensor([1, 3]), torch.tensor([100.0, 100.0]), torch.tensor([False, False]))   # inactive
    got = t.value(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    assert got.tolist() == [[0.0, 3.0, 9.0, 0.0], [5.0, 0.0, 0.0, 2.0]]


def _sequential_uncertainty(U: dict, keys, u_new, ema):
    """The original's loop: read U(s) (default 1), then update it, sample by sample."""
    read = []
    for k, u in zip(keys, u_new):
        read.append(U.get(k, 1.0))
        U[k] = u if k not in U else ema * U[k] + (1 - ema) * u
    return read


def test_uncertainty_matches_the_original_per_sample_loop_with_duplicates():
    gen = torch.Generator().manual_seed(0)
    S, B = 5, 12
    t = cp.PressureTables(1, S, torch.device("cpu"))
    U = {}
    for _ in range(4):                                    # several minibatches, so seen and unseen states mix
        keys = torch.randint(0, S - 1, (1, B), generator=gen)          # state 4 is never seen
        per_state = torch.rand(S, generator=gen)
        u_new = per_state[keys]                                        # one value per state, as with one net
        read = cp.uncertainty_read_and_update(t, keys, u_new, 0.8, torch.tensor([True]))
        want = _sequential_uncertainty(U, keys[0].tolist(), u_new[0].tolist(), 0.8)
        assert torch.allclose(read[0], torch.tensor(want), atol=1e-6)
        for k in range(S):
            assert math.isclose(t.u[0, k].item(), U.get(k, 1.0), abs_tol=1e-6)
            assert t.u_seen[0, k].item() == (k in U)


def test_constant_uncertainty_is_always_one():
    t = cp.PressureTables(1, 3, torch.device("cpu"))
    keys = torch.tensor([[0, 0, 2, 1]])
    for _ in range(3):
        read = cp.uncertainty_read_and_update(t, keys, torch.ones(1, 4), 0.8, torch.tensor([True]))
        assert read.eq(1).all() and t.u.eq(1).all()


def test_selective_pressure_by_hand():
    beta = cp.selective_pressure(1.0, torch.tensor([0.3]), torch.tensor([0.1]), torch.tensor([0.5]),
                                 torch.tensor([[0.0, 10.0]]), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(beta, torch.tensor([[0.5 * math.exp(-0.1), 0.5 * math.exp(3.0 - 0.2)]]))


def test_crystallization_update_by_hand():
    c, imp = cp.crystallization_update(torch.tensor([0.5, 0.5, 1.9, 0.5]), torch.tensor([-50.0, -40.0, -10.0, 0.0]),
                                       torch.tensor([False, True, True, True]),
                                       torch.tensor([-30.0, -20.0, -5.0, 3.0]), torch.tensor([0.01, 0.02, 1.0, 0.01]),
                                       0.1, 2.0)
    assert imp[0] == 0 and imp[1] == pytest.approx(0.5) and imp[2] == pytest.approx(0.5)
    assert imp[3] == pytest.approx(3e8, rel=1e-5)                         # |m_prev + 1e-8| guards only 0
    assert c.tolist() == pytest.approx([0.5, 0.51, 2.0, 2.0])             # clipped at 2


def test_mean_and_difference_cis_cover_the_estimate():
    rng = np.random.default_rng(0)
    m, lo, hi = cp.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]), 500, rng)
    assert m == 2.5 and lo < m < hi
    d, lo, hi = cp.diff_ci(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0]), 500, rng)
    assert d == 4.5 and lo < d < hi and lo > 0


@pytest.mark.parametrize("uncertainty", ["variance", "constant"])
def test_batched_script_matches_an_unbatched_reference(run, uncertainty):
    """One member (Value Focus, the config with the largest beta spread): same returns, same C(t),
    same mean beta per episode as the original's per-sample loop with python dicts."""
    proc, run_dir = run(SCRIPT, "--configs", "ValueFocus", "--num-seeds", "1", "--env-size", "5", "--hidden-dim", "6",
                        "--episodes", "14", "--prefill", "30", "--batch-size", "8", "--buffer-size", "60",
                        "--max-steps", "12", "--seed", "4", "--bootstrap", "50", "--uncertainty", uncertainty)
    assert proc.returncode == 0, proc.stderr
    rows = read_metrics(run_dir)
    want = reference_dqn(N=5, H=6, episodes=14, prefill=30, batch=8, buffer=60, seed=4, max_steps=12, lr=1e-3,
                         grad_steps=1, clip=1.0,
                         pressure=dict(alpha=0.3, gamma_u=0.1, kappa=0.01, uncertainty=uncertainty))
    assert [r["return/ValueFocus_s0"] for r in rows] == want["returns"]
    assert np.allclose([r["crystallization/ValueFocus_s0"] for r in rows], want["crystallization"], atol=1e-6)
    assert np.allclose([r["beta_mean/ValueFocus_s0"] for r in rows], want["beta_mean"], rtol=1e-4)
    assert len(set(want["crystallization"])) > 1                       # C actually moved


def test_smoke_run_writes_every_output_with_sane_values(run):
    proc, run_dir = run(SCRIPT, *TINY, "--track=True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "metrics.jsonl", "summary.json", "control_parameter_analysis.png",
                 "crystallization_evolution.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "wandb").glob("offline-run-*"))
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["num_runs"] == 10 and set(s["configs"]) == set(cp.CONFIGS)
    for name, c in s["configs"].items():
        assert -20 <= c["final_return_ma10"][0] <= 6
        if name == "Baseline":
            assert c["C_final"] is None and c["return_minus_baseline"] is None
        else:
            assert 0.1 <= c["C_final"][0] <= 2.0
    rows = read_metrics(run_dir)
    assert [r["episode"] for r in rows] == list(range(16))
    assert all(r["crystallization/SelectivePressure_s0"] == 0.5 for r in rows[:10])    # C moves from episode 10
    assert "C(T)" in proc.stdout


def test_crystallization_in_the_log_follows_the_logged_returns(run):
    """Recompute C(t) from the logged returns with the original's rule, for every member."""
    proc, run_dir = run(SCRIPT, *TINY, "--episodes", "30", "--configs", "UncertaintyFocus", "SelectivePressure")
    assert proc.returncode == 0, proc.stderr
    rows = read_metrics(run_dir)
    kappa = {"UncertaintyFocus": 0.02, "SelectivePressure": 0.01}
    for name in [k.split("/")[1] for k in rows[0] if k.startswith("return/")]:
        rets, C, avg = [r[f"return/{name}"] for r in rows], 0.5, []
        for e in range(len(rets)):
            if e >= 10:
                m = float(np.mean(rets[e - 9:e + 1]))
                improvement = (m - avg[-1]) / abs(avg[-1] + 1e-8) if avg else 0.0
                C = max(0.1, min(2.0, C + kappa[name.rsplit("_", 1)[0]] * improvement))
                avg.append(m)
            assert rows[e][f"crystallization/{name}"] == pytest.approx(C, abs=1e-5), (name, e)


def test_same_seed_same_numbers(run):
    _, a = run(SCRIPT, *TINY, "--configs", "Baseline", "UncertaintyFocus")
    _, b = run(SCRIPT, *TINY, "--configs", "Baseline", "UncertaintyFocus")
    assert read_metrics(a) == read_metrics(b)


def test_cartpole_runs(run):
    proc, run_dir = run(SCRIPT, "--env", "CartPole-v1", "--configs", "Baseline", "ValueFocus", "--num-seeds", "1",
                        "--episodes", "5", "--prefill", "100", "--bootstrap", "50", "--success-return", "20")
    assert proc.returncode == 0, proc.stderr
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["env"] == "CartPole-v1"
    rows = read_metrics(run_dir)
    assert len(rows) == 5 and all(1 <= r["return/ValueFocus_s0"] <= 500 for r in rows)
    assert all(0.1 <= r["crystallization/ValueFocus_s0"] <= 2.0 for r in rows)
    assert s["configs"]["ValueFocus"]["C_final"][0] == rows[-1]["crystallization/ValueFocus_s0"]


@pytest.mark.parametrize("args, message", [
    (("--configs",), "needs at least one configuration"),
    (("--configs", "Nope"), "unknown --configs ['Nope']"),
    (("--uncertainty", "maybe"), "unknown --uncertainty 'maybe'"),
    (("--env-size", "0"), "--env-size must be >= 2"),
    (("--episodes", "-1"), "--episodes must be positive"),
    (("--env", "NoSuchEnv-v0"), "unknown --env 'NoSuchEnv-v0'"),
])
def test_bad_input_is_rejected_with_a_one_line_reason(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cp.finalize_args(tyro.cli(cp.Args, args=list(args), config=(tyro.conf.FlagConversionOff,)))


def test_bad_input_fails_fast_with_one_line(run):
    proc, run_dir = run(SCRIPT, "--configs", "--episodes", "0")
    assert proc.returncode != 0 and run_dir is None
    assert "needs at least one configuration" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_non_finite_training_stops_and_keeps_the_log(run):
    proc, run_dir = run(SCRIPT, *TINY, "--learning-rate", "1e38", "--max-grad-norm", "1e38", "--episodes", "300")
    assert proc.returncode != 0 and "non-finite" in proc.stderr
    assert read_json(run_dir / "summary.json")["status"].startswith("non-finite")
