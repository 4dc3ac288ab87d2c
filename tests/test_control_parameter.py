"""control_parameter.py: beta, V, U and C against hand values and the original's per-sample
loop, the batched script against an unbatched reference (in process), bad input, the NaN stop,
and one subprocess run of the real CLI."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_bad_input, read_json, read_metrics, run_in_process
from dqn_reference import member_net, reference_lockstep

import control_parameter as cp

SCRIPT = "control_parameter.py"
TINY = ("--env-size", "6", "--hidden-dim", "8", "--num-seeds", "2", "--episodes", "16", "--prefill", "40",
        "--batch-size", "16", "--buffer-size", "200", "--max-steps", "20")


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
    # improvements: none the first time, (-20 + 40) / 40 = 0.5, (-5 + 10) / 10 = 0.5, 3 / 1e-8
    c = cp.crystallization_update(torch.tensor([0.5, 0.5, 1.9, 0.5, 0.5]),
                                  torch.tensor([-50.0, -40.0, -10.0, 0.0, -40.0]),
                                  torch.tensor([False, True, True, True, True]),
                                  torch.tensor([-30.0, -20.0, -5.0, 3.0, -20.0]),
                                  torch.tensor([0.01, 0.02, 1.0, 0.01, 0.1]), 0.1, 2.0)
    assert c.tolist() == pytest.approx([0.5, 0.51, 2.0, 2.0, 0.55])      # kappa scales it; clipped at 2


def test_t_quantile_and_intervals_by_hand():
    for df, q in ((1, 12.7062), (4, 2.7764), (9, 2.2622), (29, 2.0452), (7.5, 2.3332)):
        assert cp.t_quantile(0.975, df) == pytest.approx(q, abs=2e-4), df
    m, lo, hi = cp.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))             # s = 1.291, t_3 = 3.1824
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - 3.18245 * 1.29099 / 2, 2.5 + 3.18245 * 1.29099 / 2), abs=1e-4)
    d, lo, hi = cp.diff_ci(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0, 4.0, 9.0]))
    vx, vy = 1.0 / 3, np.var([1.0, 2.0, 4.0, 9.0], ddof=1) / 4
    df = (vx + vy) ** 2 / (vx ** 2 / 2 + vy ** 2 / 3)                   # Welch-Satterthwaite
    h = cp.t_quantile(0.975, df) * math.sqrt(vx + vy)
    assert (d, lo, hi) == pytest.approx((2.0, 2.0 - h, 2.0 + h))
    assert all(math.isnan(v) for v in cp.mean_ci(np.array([3.0]))[1:] + cp.diff_ci(np.ones(3), np.ones(1))[1:])


@pytest.mark.parametrize("n, m", [(5, 5), (10, 10)])
def test_intervals_cover_at_the_scripts_sample_sizes(n, m):
    """Coverage by simulation at this script's seed counts (5 by default, 10 in the benchmark): the
    t-interval of a mean and Welch's interval of a difference with unequal variances (sd 1 vs 3). 2000 draws: a valid interval lands in [0.93, 0.97]; the
    percentile bootstrap did not (0.84 at n = 5)."""
    rng = np.random.default_rng(n * m)
    hit_mean = hit_diff = 0
    for _ in range(2000):
        x, y = rng.normal(1.0, 1.0, size=n), rng.normal(-2.0, 3.0, size=m)
        _, lo, hi = cp.mean_ci(x)
        hit_mean += lo <= 1.0 <= hi
        _, lo, hi = cp.diff_ci(x, y)
        hit_diff += lo <= 3.0 <= hi
    assert 0.93 <= hit_mean / 2000 <= 0.97 and 0.93 <= hit_diff / 2000 <= 0.97, (hit_mean, hit_diff)


def test_clip_per_member_matches_clip_grad_norm_and_flags_the_clipped():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    clipped_grad, clipped = cp.clip_per_member(g, 1.0)
    assert clipped.tolist() == [True, False]
    for m in range(2):
        p = torch.zeros(2, requires_grad=True)
        p.grad = g[m].clone()
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        assert torch.allclose(clipped_grad[m], p.grad)


# ------------------------------------------------------------------------------------------------
# Whole runs, in process (parse_args + run_experiment + train), and one subprocess run of the CLI
# ------------------------------------------------------------------------------------------------
def run_cp(tmp_path, *argv):
    """(exit status, run folder) of one in-process run in a fresh folder under tmp_path."""
    cwd = tmp_path / f"call{len(list(tmp_path.iterdir()))}"
    cwd.mkdir()
    return run_in_process(cp, SCRIPT, "episode", cwd, *argv)


@pytest.mark.parametrize("uncertainty", ["variance", "constant"])
def test_batched_script_matches_an_unbatched_reference_with_a_baseline_in_the_batch(tmp_path, uncertainty):
    """Three members in one batch, the Baseline (weights 1) between two weighted configurations,
    against three plain-torch DQNs with the original's per-sample pressure loop (U read before its
    update), drawing the same numbers: the same returns, C(t), mean beta, clip fraction per episode
    and final parameters. Members finish at different ticks and keep stepping (masked) until the
    last one is done, so a finished member that kept training would end with other parameters."""
    configs = ("ValueFocus", "Baseline", "UncertaintyFocus")
    code, run_dir = run_cp(tmp_path, "--configs", *configs, "--num-seeds", "1", "--env-size", "5",
                           "--hidden-dim", "6", "--episodes", "14", "--prefill", "30", "--batch-size", "8",
                           "--buffer-size", "60", "--max-steps", "12", "--seed", "4", "--uncertainty", uncertainty)
    assert code == 0
    members = [dict(N=5, H=6, pressure=dict(alpha=cp.CONFIGS[c][1], gamma_u=cp.CONFIGS[c][2], kappa=cp.CONFIGS[c][3],
                                            weighted=cp.CONFIGS[c][0], uncertainty=uncertainty)) for c in configs]
    want = reference_lockstep(members, episodes=14, prefill=30, batch=8, buffer=60, seed=4, max_steps=12, lr=1e-3,
                              grad_steps=1, clip=1.0)
    rows = read_metrics(run_dir)
    saved = torch.load(run_dir / "final_theta.pt")
    s = read_json(run_dir / "summary.json")
    for m, (c, ref) in enumerate(zip(configs, want)):
        name = f"{c}_s0"
        assert saved["names"][m] == name
        assert [r[f"return/{name}"] for r in rows] == ref["returns"], name
        assert np.allclose([r[f"crystallization/{name}"] for r in rows], ref["crystallization"], atol=1e-6), name
        assert np.allclose([r[f"beta_mean/{name}"] for r in rows], ref["beta_mean"], rtol=1e-4), name
        assert np.allclose([r[f"clip_fraction/{name}"] for r in rows], ref["clip_fraction"]), name
        assert s["configs"][c]["clip_fraction"][0] == pytest.approx(ref["clip_total"] / ref["step_total"])
        net = member_net(saved["theta"][m], cp.mlp_layout(1, 6, 2), 6)
        for mine, theirs in zip(net.parameters(), ref["final"].parameters()):
            assert (mine - theirs).abs().max() < 1e-4, (name, (mine - theirs).abs().max())
    assert len(set(want[2]["crystallization"])) > 1                    # C actually moved
    assert 0 < want[0]["clip_total"] < want[0]["step_total"]           # the clip acted on some steps, not all
    assert len({len(r["returns"]) for r in want}) == 1 and len({sum(r["returns"]) for r in want}) > 1


def test_smoke_run_writes_every_output_with_sane_values(run):
    """The real CLI path, with --track offline."""
    proc, run_dir = run(SCRIPT, *TINY, "--track=True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "metrics.jsonl", "summary.json", "control_parameter_analysis.png",
                 "crystallization_evolution.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "wandb").glob("offline-run-*"))
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["num_runs"] == 10 and set(s["configs"]) == set(cp.CONFIGS)
    assert s["last_episode"] == 15 and s["rows_logged"] == 16
    for name, c in s["configs"].items():
        if name == "Baseline":
            assert c["C_final"] is None and c["return_minus_baseline"] is None
        else:
            assert c["C_final"][0] == pytest.approx(np.mean(c["C_final_runs"]))
            assert c["return_minus_baseline"][0] == pytest.approx(
                np.mean(c["final_return_runs"]) - np.mean(s["configs"]["Baseline"]["final_return_runs"]))
    rows = read_metrics(run_dir)
    assert [r["episode"] for r in rows] == list(range(16))
    assert all(r["crystallization/SelectivePressure_s0"] == 0.5 for r in rows[:10])    # C moves from episode 10
    assert "C(T)" in proc.stdout


def test_crystallization_in_the_log_follows_the_logged_returns(tmp_path):
    """Recompute C(t) from the logged returns with the original's rule, for every member."""
    code, run_dir = run_cp(tmp_path, *TINY, "--episodes", "30", "--configs", "UncertaintyFocus", "SelectivePressure")
    assert code == 0
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


def test_same_seed_same_numbers(tmp_path):
    _, a = run_cp(tmp_path, *TINY, "--configs", "Baseline", "UncertaintyFocus")
    _, b = run_cp(tmp_path, *TINY, "--configs", "Baseline", "UncertaintyFocus")
    assert read_metrics(a) == read_metrics(b)


def test_cartpole_runs(tmp_path):
    code, run_dir = run_cp(tmp_path, "--env", "CartPole-v1", "--configs", "Baseline", "ValueFocus", "--num-seeds",
                           "1", "--episodes", "5", "--c-window", "2", "--target-every", "2", "--prefill", "100",
                           "--success-return", "20")
    assert code == 0
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["env"] == "CartPole-v1"
    rows = read_metrics(run_dir)
    assert len(rows) == 5
    assert len({r["crystallization/ValueFocus_s0"] for r in rows}) > 1             # C moved from episode 3 on
    assert s["configs"]["ValueFocus"]["C_final"][0] == rows[-1]["crystallization/ValueFocus_s0"]
    assert s["configs"]["ValueFocus"]["C_final"][1] is None                        # one seed: no CI, null not NaN


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, no run folder
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (("--configs",), "needs at least one configuration"),
    (("--configs", "Nope"), "unknown --configs ['Nope']"),
    (("--configs", "Baseline", "Baseline"), "lists a configuration twice"),
    (("--uncertainty", "maybe"), "unknown --uncertainty 'maybe'"),
    (("--seed", "-1"), "--seed must lie in [0, 2**32)"),
    (("--env-size", "0"), "--env-size must be >= 2"),
    (("--env-size", "1"), "--env-size must be >= 2"),
    (("--env", "NoSuchEnv-v0"), "unknown --env 'NoSuchEnv-v0'"),
    (("--env", "Pendulum-v1"), "needs discrete actions"),
    (("--episodes", "-1"), "--episodes must be positive"),
    (("--hidden-dim", "0"), "--hidden-dim must be positive"),
    (("--num-seeds", "0"), "--num-seeds must be positive"),
    (("--max-steps", "0"), "--max-steps must be positive"),
    (("--batch-size", "0"), "--batch-size must be positive"),
    (("--buffer-size", "-5"), "--buffer-size must be positive"),
    (("--grad-steps", "0"), "--grad-steps must be positive"),
    (("--target-every", "0"), "--target-every must be positive"),
    (("--c-window", "0"), "--c-window must be positive"),
    (("--table-size", "0"), "--table-size must be positive"),
    (("--torch-threads", "0"), "--torch-threads must be positive"),
    (("--learning-rate", "0"), "--learning-rate must be a finite number > 0"),
    (("--learning-rate", "nan"), "--learning-rate must be a finite number > 0"),
    (("--max-grad-norm", "inf"), "--max-grad-norm must be a finite number > 0"),
    (("--beta0", "-1"), "--beta0 must be a finite number > 0"),
    (("--discount", "1.01"), "--discount must lie in [0, 1]"),
    (("--eps-start", "1.5"), "--eps-start must lie in [0, 1]"),
    (("--eps-end", "-0.1"), "--eps-end must lie in [0, 1]"),
    (("--eps-decay", "nan"), "--eps-decay is a per-episode factor and must lie in (0, 1]"),
    (("--eps-decay", "0"), "--eps-decay is a per-episode factor and must lie in (0, 1]"),
    (("--eps-start", "0.1", "--eps-end", "0.5"), "--eps-end 0.5 exceeds --eps-start 0.1"),
    (("--u-ema", "1"), "--u-ema must lie in [0, 1)"),
    (("--c-min", "0"), "need 0 < --c-min <= --c0 <= --c-max"),
    (("--c0", "3"), "need 0 < --c-min <= --c0 <= --c-max"),
    (("--c-max", "inf"), "need 0 < --c-min <= --c0 <= --c-max"),
    (("--success-return", "nan"), "--success-return must be a finite number"),
    (("--c-window", "100", "--episodes", "6"), "--c-window 100 does not fit in --episodes 6"),
    (("--c-window", "6", "--episodes", "6"), "--c-window 6 does not fit in --episodes 6"),
    (("--c-window", "2", "--episodes", "6", "--target-every", "7"), "--target-every 7 is longer than the run"),
    (("--prefill", "64"), "need --batch-size < --prefill <= --buffer-size"),
    (("--prefill", "20000"), "need --batch-size < --prefill <= --buffer-size"),
    (("--max-steps", "10"), "--max-steps 10 cannot reach the goal"),
    (("--buffer-size", "100000000000", "--prefill", "1000"), "GiB"),
    (("--hidden-dim", "2000000"), "GiB"),
    (("--episodes", "abc"), None),                                     # tyro's parse box
    (("--no-such-flag", "1"), None),
])
def test_bad_input_fails_fast_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    assert_bad_input(cp, SCRIPT, args, message, capsys, tmp_path, monkeypatch)


def test_bad_input_in_a_subprocess_leaves_no_folder(run):
    proc, run_dir = run(SCRIPT, "--c-window", "100", "--episodes", "6")
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("control_parameter.py: error: --c-window 100 does not fit in --episodes 6: C is "
                                   "first updated at episode c_window, so the window must be shorter than the run")


# ------------------------------------------------------------------------------------------------
# NaN: the run stops at the next check with every finished episode logged; strict JSON
# ------------------------------------------------------------------------------------------------
def test_non_finite_training_stops_and_keeps_the_log(tmp_path, monkeypatch, capsys):
    real_clip = cp.clip_per_member
    calls = {"n": 0}

    def poisoned(grad, max_norm):                 # finite for 150 gradient steps, NaN from then on
        calls["n"] += 1
        g, clipped = real_clip(grad, max_norm)
        return g * (float("nan") if calls["n"] > 150 else 1.0), clipped

    monkeypatch.setattr(cp, "clip_per_member", poisoned)
    code, run_dir = run_cp(tmp_path, *TINY, "--episodes", "300", "--configs", "Baseline", "ValueFocus")
    assert code == 1 and "non-finite Q-network parameters at tick 500" in capsys.readouterr().err
    rows = read_metrics(run_dir)
    assert len(rows) > 0 and [r["episode"] for r in rows] == list(range(len(rows)))
    assert rows[0]["beta_mean/ValueFocus_s0"] is not None
    assert rows[-1]["beta_mean/ValueFocus_s0"] is None                             # NaN became null
    text = (run_dir / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["status"].startswith("non-finite") and summary["rows_logged"] == len(rows)
    assert summary["last_episode"] == rows[-1]["episode"]
    assert summary["configs"]["ValueFocus"]["C_final"][0] is None                  # episode 299 never reached
    assert (run_dir / "control_parameter_analysis.png").exists()
