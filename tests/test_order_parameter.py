"""order_parameter.py: the corridor, the batched DQN against plain torch, the order parameters
against the original's formulas, the statistics, whole runs (in process, and one through the
CLI), bad input and the NaN stop."""

import math

import numpy as np
import pytest
import torch
import tyro
import torch.nn as nn
from conftest import assert_bad_input, read_json, read_metrics, run_in_process
from dqn_reference import member_net, reference_dqn

import order_parameter as op

SCRIPT = "order_parameter.py"
TINY = ("--env-sizes", "4", "6", "--hidden-dims", "4", "8", "--num-seeds", "2", "--episodes", "12",
        "--prefill", "40", "--batch-size", "16", "--buffer-size", "200", "--order-every", "4",
        "--num-probe-states", "50", "--final-window", "4", "--bootstrap", "200", "--max-steps", "20")


# ---- corridor --------------------------------------------------------------------------------
def test_corridor_rewards_termination_and_reset_by_hand():
    env = op.Corridor(torch.tensor([4, 4]), max_steps=3)
    assert env.reset().squeeze(1).tolist() == [0.0, 0.0]
    # member 0 walks right to the goal (cell 3); member 1 bumps the left wall until the time limit
    rewards, terms, truncs = [], [], []
    for t in range(3):
        next_obs, r, term, trunc, after = env.step(torch.tensor([1, 0]))
        rewards.append(r.tolist()), terms.append(term.tolist()), truncs.append(trunc.tolist())
        if t == 0:
            assert next_obs.squeeze(1).tolist() == [0.25, 0.0]        # p / N, and the wall holds
    assert rewards == [[-1, -1], [-1, -1], [10, -1]]
    assert terms == [[False, False], [False, False], [True, False]]
    assert truncs == [[False, False], [False, False], [False, True]]
    assert next_obs.squeeze(1).tolist() == [0.75, 0.0]                 # the true last state, (N-1)/N
    assert after.squeeze(1).tolist() == [0.0, 0.0] and env.steps.tolist() == [0, 0]   # both restarted
    assert env.next_keys.tolist() == [3, 0]


def test_goal_is_checked_before_the_time_limit():
    env = op.Corridor(torch.tensor([3]), max_steps=2)
    env.reset()
    env.step(torch.tensor([1]))
    _, r, term, trunc, _ = env.step(torch.tensor([1]))                 # reaches the goal on the last step
    assert r.item() == 10 and term.item() and not trunc.item()


# ---- batched network, loss, gradient and Adam against plain torch -------------------------------
def _setup(hidden=(3, 5), d=2, A=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = op.mlp_layout(d, max(hidden), A)
    theta = op.init_theta(torch.tensor(hidden), d, max(hidden), A, gen)
    return gen, layout, theta


def test_init_matches_nn_linear_bounds_and_zeroes_the_padding():
    gen, layout, theta = _setup(hidden=(3, 8), d=1)
    p = op.unflatten(theta, layout)
    assert p["W1"][0, :, 3:].abs().sum() == 0 and p["W2"][0, 3:].abs().sum() == 0 and p["W3"][0, 3:].abs().sum() == 0
    assert p["W2"][0, :, 3:].abs().sum() == 0 and p["b1"][0, 3:].abs().sum() == 0
    assert p["W1"].abs().max() <= 1.0 and p["W2"][0].abs().max() <= 1 / math.sqrt(3)
    assert p["W3"][1].abs().max() <= 1 / math.sqrt(8) and p["b3"][0].abs().max() <= 1 / math.sqrt(3)
    assert p["W2"][1].abs().max() > 0.5 / math.sqrt(8)                # spread over the full range


def _batch(M, B, d, S, gen):
    return {"obs": torch.rand(M, B, d, generator=gen), "next_obs": torch.rand(M, B, d, generator=gen),
            "action": torch.randint(0, 2, (M, B), generator=gen), "reward": torch.randn(M, B, generator=gen),
            "done": (torch.rand(M, B, generator=gen) < 0.3).float(),
            "key": torch.randint(0, S, (M, B), generator=gen), "next_key": torch.randint(0, S, (M, B), generator=gen)}


@pytest.mark.parametrize("weighted", [False, True])
def test_td_loss_and_grad_match_autograd_per_member(weighted):
    gen, layout, theta = _setup()
    target = theta + 0.1 * torch.randn(theta.shape, generator=gen) * (theta != 0)
    batch = _batch(2, 7, 2, 4, gen)
    w = torch.rand(2, 7, generator=gen) + 0.5
    active = torch.tensor([True, True])
    loss, grad, q_rows = op.td_loss_and_grad(theta, target, layout, batch, 0.9, active,
                                             weight_fn=(lambda q: w) if weighted else None)
    for m, hidden in enumerate((3, 5)):
        net, tgt = member_net(theta[m], layout, hidden), member_net(target[m], layout, hidden)
        q = net(batch["obs"][m]).gather(1, batch["action"][m][:, None]).squeeze(1)
        y = batch["reward"][m] + 0.9 * tgt(batch["next_obs"][m]).max(1).values * (1 - batch["done"][m])
        ref = ((w[m] if weighted else 1.0) * (q - y.detach()) ** 2).mean()
        ref.backward()
        assert torch.allclose(loss[m], ref, atol=1e-6)
        assert torch.allclose(q_rows[m], net(batch["obs"][m]), atol=1e-6)
        g = op.unflatten(grad[m:m + 1], layout)
        for lin, wn, bn in ((net[0], "W1", "b1"), (net[2], "W2", "b2"), (net[4], "W3", "b3")):
            assert torch.allclose(g[wn][0, :lin.in_features, :lin.out_features], lin.weight.grad.T, atol=1e-5)
            assert torch.allclose(g[bn][0, :lin.out_features], lin.bias.grad, atol=1e-5)
    padded = op.unflatten(grad, layout)
    assert padded["W2"][0, 3:].abs().sum() == 0 and padded["W2"][0, :, 3:].abs().sum() == 0   # padding gets 0
    _, frozen, _ = op.td_loss_and_grad(theta, target, layout, batch, 0.9, torch.tensor([True, False]))
    assert frozen[1].abs().sum() == 0 and torch.equal(frozen[0], op.td_loss_and_grad(
        theta, target, layout, batch, 0.9, active)[1][0])


def test_state_table_path_is_the_same_loss_and_gradient():
    gen, layout, theta = _setup(d=1)
    table = torch.rand(2, 5, 1, generator=gen)
    batch = _batch(2, 9, 1, 5, gen)
    batch["obs"] = table.gather(1, batch["key"].unsqueeze(-1))
    batch["next_obs"] = table.gather(1, batch["next_key"].unsqueeze(-1))
    active = torch.tensor([True, True])
    a = op.td_loss_and_grad(theta, theta.clone(), layout, batch, 0.99, active)
    b = op.td_loss_and_grad(theta, theta.clone(), layout, batch, 0.99, active, table=table)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5)


def test_batched_adam_is_torch_adam_per_member_and_skips_inactive():
    gen, layout, theta = _setup()
    theta0 = theta.clone()
    adam = op.BatchedAdam(theta, lr=0.01)
    ref = [theta0[m].clone().requires_grad_(True) for m in range(2)]
    opts = [torch.optim.Adam([r], lr=0.01) for r in ref]
    for step in range(5):
        g = torch.randn(theta.shape, generator=gen)
        active = torch.tensor([True, step % 2 == 0])
        adam.step(theta, g * active[:, None], active)
        for m in range(2):
            if active[m]:
                ref[m].grad = g[m].clone()
                opts[m].step()
    for m in range(2):
        assert torch.allclose(theta[m], ref[m].detach(), atol=1e-6)


def test_clip_per_member_matches_clip_grad_norm():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    for m in range(2):
        p = torch.zeros(2, requires_grad=True)
        p.grad = g[m].clone()
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        assert torch.allclose(op.clip_per_member(g, 1.0)[m], p.grad)


def test_replay_is_fifo_and_samples_each_members_own_rows():
    buf = op.ReplayBuffers(2, 3, 1, torch.device("cpu"))
    for t in range(5):                                                  # 5 rows into capacity 3
        v = torch.tensor([[t], [100 + t]], dtype=torch.float32)
        buf.add(v, torch.tensor([0, 1]), v.squeeze(1), v, torch.tensor([False, True]), torch.tensor([t, t]), 0)
    assert buf.size == 3 and sorted(buf.obs[0, :, 0].tolist()) == [2, 3, 4]
    s = buf.sample(50, torch.Generator().manual_seed(0))
    assert set(s["obs"][0, :, 0].tolist()) <= {2, 3, 4} and set(s["obs"][1, :, 0].tolist()) <= {102, 103, 104}
    assert torch.equal(s["reward"], s["obs"][..., 0]) and s["done"][1].eq(1).all() and s["action"][1].eq(1).all()


def test_keep_rows_drops_members_everywhere():
    env = op.Corridor(torch.tensor([4, 5, 6]), 10)
    env.step(torch.tensor([1, 1, 0]))
    op.keep_rows(env, torch.tensor([0, 2]))
    assert env.sizes.tolist() == [4, 6] and env.pos.tolist() == [1, 0] and env.steps.tolist() == [1, 1]


# ---- order parameters ---------------------------------------------------------------------------
def test_order_parameters_match_the_original_formulas():
    gen, layout, theta = _setup(hidden=(3, 5), d=1)
    states = torch.linspace(0, 1, 11).view(-1, 1)
    got = op.order_parameters(theta, layout, states.expand(2, 11, 1))
    for m, hidden in enumerate((3, 5)):
        net = member_net(theta[m], layout, hidden)
        q = net(states).detach()
        s = states.clone().requires_grad_(True)
        net(s).sum().backward()
        pi = torch.softmax(q, 1)
        want = [q.max() - q.min(), (q.max(1).values - q.min(1).values).mean(),
                -(pi * torch.log(pi + 1e-10)).sum(1).mean(), s.grad.norm()]
        assert torch.allclose(got[m], torch.stack(want), atol=1e-5)


def test_pearson_partial_and_within_group_correlations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert op.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(op.pearson(x, np.ones(30)))
    # a confounder: both variables are driven by the group, and unrelated inside it
    group = np.repeat([5, 15, 30], 10)
    a, b = group + rng.normal(size=30), -group + rng.normal(size=30)
    rep = op.correlation_report(a, b, group, np.arange(30), 300, rng)
    assert rep["r"] < -0.95 and abs(rep["partial_r_given_size"]) < 0.5
    dummies = (group[:, None] == np.unique(group)[None]).astype(float)  # partial r by regression
    res = lambda v: v - dummies @ np.linalg.lstsq(dummies, v, rcond=None)[0]
    assert rep["partial_r_given_size"] == pytest.approx(np.corrcoef(res(a), res(b))[0, 1])
    for n in (5, 15, 30):
        sel = group == n
        assert rep["within_size"][n]["r"] == pytest.approx(np.corrcoef(a[sel], b[sel])[0, 1])
    lo, hi = rep["ci"]
    assert lo <= rep["r"] <= hi and rep["partial_ci"][0] <= rep["partial_r_given_size"] <= rep["partial_ci"][1]


def test_over_training_correlation_by_hand():
    returns = np.array([[0.0, 2, 4, 6, 8, 10]])
    series = np.array([[1.0, 3.0, 2.0]])
    ckpts = np.array([0, 2, 4])
    trailing = [0.0, 3.0, 7.0]                                          # window 2: means of (0), (2,4), (6,8)
    got = op.over_training_r(series, returns, ckpts, 2)
    assert got[0] == pytest.approx(np.corrcoef(series[0], trailing)[0, 1])


# ---- batched training against an unbatched reference ------------------------------------------
def test_batched_script_matches_an_unbatched_reference(tmp_path):
    """One configuration, so the batch has one member: same draws, same returns, same order params.
    The FIFO buffer is small enough to wrap, which checks the ring buffer against a python list."""
    args = ("--env-sizes", "5", "--hidden-dims", "6", "--num-seeds", "1", "--episodes", "8", "--prefill", "30",
            "--batch-size", "8", "--buffer-size", "60", "--order-every", "2", "--num-probe-states", "50",
            "--final-window", "2", "--bootstrap", "50", "--max-steps", "12", "--seed", "3")
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, *args)
    assert code == 0
    rows = read_metrics(run_dir)
    got_returns = [r["return/N5_H6_s0"] for r in rows]
    got_order = [r["gradient_magnitude/N5_H6_s0"] for r in rows if "gradient_magnitude/N5_H6_s0" in r]
    want = reference_dqn(N=5, H=6, episodes=8, prefill=30, batch=8, buffer=60, seed=3, max_steps=12, lr=0.01,
                         grad_steps=4, order_every=2, probes=50)
    want_returns, want_order = want["returns"], want["order"]
    assert got_returns == want_returns
    assert np.allclose(got_order, want_order, rtol=1e-4)


# ---- whole runs: one through the real CLI, the rest in process ----------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The TINY sweep, run in process once for the tests below: (exit status, run folder)."""
    return run_in_process(op, SCRIPT, "episode", tmp_path_factory.mktemp("tiny"), *TINY)


def test_smoke_sweep_writes_every_output_with_sane_values(run):
    proc, run_dir = run(SCRIPT, *TINY, "--track=True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "metrics.jsonl", "summary.json", "learning_curves.png", "phase_diagram.png",
                 "transition_analysis.png", "order_over_training.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "wandb").glob("offline-run-*"))
    text = (run_dir / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text                      # strict JSON
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["num_runs"] == 8 and s["best_order_parameter"] in op.ORDER_PARAMS
    for name, c in s["correlations"].items():
        for v in (c["r"], c["r_config_means"], c["partial_r_given_size"]):
            assert v is None or -1 <= v <= 1, (name, v)
        assert set(c["within_size"]) == {"4", "6"}
    rows = read_metrics(run_dir)
    assert [r["episode"] for r in rows] == list(range(12))
    assert s["rows_logged"] == 12 and s["last_episode"] == 11
    for r in rows:
        for k, v in r.items():
            if k.startswith("return/") and k != "return/mean":
                assert -20 <= v <= 12 - int(k.split("/")[1][1:].split("_")[0])
    assert "phase diagram" in proc.stdout


def test_same_seed_same_numbers(tiny_run, tmp_path):
    code_a, a = tiny_run
    code_b, b = run_in_process(op, SCRIPT, "episode", tmp_path, *TINY)
    assert code_a == code_b == 0
    rows = read_metrics(a)
    assert rows == read_metrics(b)
    assert [r["return/N6_H8_s0"] for r in rows] != [r["return/N6_H8_s1"] for r in rows]     # seeds differ
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    assert sa["correlations"] == sb["correlations"]


def test_corridor_learning_happens(tmp_path):
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, "--env-sizes", "6", "--hidden-dims", "16",
                                   "--num-seeds", "2", "--episodes", "40", "--bootstrap", "50", "--prefill", "200",
                                   "--order-every", "10")
    assert code == 0
    rows = read_metrics(run_dir)
    first, last = np.mean([r["return/mean"] for r in rows[:5]]), np.mean([r["return/mean"] for r in rows[-5:]])
    assert last > first + 10                            # eps is still 0.67 at episode 40; optimum 6


def test_cartpole_sweep_runs(tmp_path):
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, "--env", "CartPole-v1", "--env-sizes", "0",
                                   "--hidden-dims", "8", "16", "--num-seeds", "2", "--episodes", "6", "--prefill",
                                   "100", "--num-probe-states", "100", "--batch-size", "32", "--order-every", "2",
                                   "--final-window", "2", "--bootstrap", "50")
    assert code == 0
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["env"] == "CartPole-v1" and s["num_runs"] == 4
    assert all(r["return/mean"] >= 1 for r in read_metrics(run_dir))


# ---- bad input: one line on stderr, exit status 2, no traceback, no run folder ------------------
@pytest.mark.parametrize("args, message", [
    # the example, one value at a time
    (("--eps-decay", "5"), "--eps-decay is a per-episode factor and must lie in (0, 1]"),
    (("--discount", "-3"), "--discount must lie in [0, 1]"),
    (("--learning-rate", "-1"), "--learning-rate must be a finite number > 0"),
    # ranges
    (("--eps-decay", "0"), "--eps-decay is a per-episode factor and must lie in (0, 1]"),
    (("--discount", "1.5"), "--discount must lie in [0, 1]"),
    (("--learning-rate", "0"), "--learning-rate must be a finite number > 0"),
    (("--learning-rate", "nan"), "--learning-rate must be a finite number > 0"),
    (("--learning-rate", "inf"), "--learning-rate must be a finite number > 0"),
    (("--eps-start", "1.5"), "--eps-start must lie in [0, 1]"),
    (("--eps-end", "-0.1"), "--eps-end must lie in [0, 1]"),
    (("--eps-start", "0.1", "--eps-end", "0.5"), "--eps-end 0.5 exceeds --eps-start 0.1"),
    (("--seed", "-1"), "--seed must lie in [0, 2**32)"),
    # sizes
    (("--num-seeds", "0"), "--num-seeds must be positive"),
    (("--episodes", "0"), "--episodes must be positive"),
    (("--max-steps", "0"), "--max-steps must be positive"),
    (("--batch-size", "0"), "--batch-size must be positive"),
    (("--buffer-size", "-5"), "--buffer-size must be positive"),
    (("--prefill", "0"), "--prefill must be positive"),
    (("--grad-steps", "0"), "--grad-steps must be positive"),
    (("--target-every", "0"), "--target-every must be positive"),
    (("--order-every", "0"), "--order-every must be positive"),
    (("--num-probe-states", "0"), "--num-probe-states must be positive"),
    (("--final-window", "0"), "--final-window must be positive"),
    (("--bootstrap", "0"), "--bootstrap must be positive"),
    (("--torch-threads", "0"), "--torch-threads must be positive"),
    (("--hidden-dims", "0"), "--hidden-dims must be positive"),
    (("--hidden-dims", "8", "-1"), "--hidden-dims must be positive"),
    (("--env-sizes",), "need at least one value"),
    (("--env-sizes", "1"), "must be >= 2"),
    (("--env-sizes", "5", "5"), "--env-sizes has a repeated value"),
    (("--hidden-dims", "8", "8"), "--hidden-dims has a repeated value"),
    (("--env-sizes", "60"), "needs 59 steps to reach the goal, more than --max-steps 50"),
    # relations between sizes; windows longer than the run
    (("--prefill", "50"), "need --batch-size < --prefill"),
    (("--prefill", "20000"), "need --batch-size < --prefill <= --buffer-size"),
    (("--final-window", "301"), "--final-window 301 exceeds --episodes 300"),
    (("--order-every", "300"), "the analysis needs at least two"),
    # gymnasium envs
    (("--env", "Pong-v99"), "unknown --env 'Pong-v99'"),
    (("--env", "Pendulum-v1", "--env-sizes", "0"), "needs discrete actions"),
    (("--env", "CartPole-v1"), "has no size axis"),
    (("--env", "CartPole-v1", "--env-sizes", "0", "--num-probe-states", "2000"), "exceeds --prefill 1000"),
    # buffers that cannot fit: replay x members, a huge sweep, a huge width
    (("--buffer-size", "1000000000000"), "GiB"),
    (("--num-seeds", "1000000000"), "GiB"),
    (("--hidden-dims", "8", "10000000"), "GiB"),
    # tyro's own parse box
    (("--episodes", "abc"), None),
    (("--no-such-flag", "1"), None),
])
def test_bad_input_fails_fast_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    assert_bad_input(op, SCRIPT, args, message, capsys, tmp_path, monkeypatch)


def test_memory_refusal_states_the_estimate():
    args = tyro.cli(op.Args, args=["--buffer-size", "1000000000000"], config=(tyro.conf.FlagConversionOff,))
    with pytest.raises(ValueError, match=r"a sweep of 27 members .* needs about [0-9.e+]+ GiB, more than 80%"):
        op.finalize_args(args)
    default = op.finalize_args(tyro.cli(op.Args, args=[], config=(tyro.conf.FlagConversionOff,)))
    assert op.memory_estimate(default, 1, 2) < 2**30                  # the default sweep is far below a GiB


def test_bad_input_in_a_subprocess_leaves_no_folder(run):
    proc, run_dir = run(SCRIPT, "--eps-decay", "5", "--discount", "-3", "--learning-rate", "-1")
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "order_parameter.py: error: --learning-rate must be a finite number > 0, got -1.0"


# ---- NaN: the run stops, every episode finished before it stays logged ----------------------------
def test_non_finite_training_stops_and_keeps_the_finished_rows(tiny_run, tmp_path, monkeypatch, capsys):
    real = op.td_loss_and_grad
    calls = {"n": 0}

    def poisoned(*a, **kw):                   # member 0's gradient turns NaN at the 41st training tick
        loss, grad, q_rows = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] > 4 * 40:
            grad = grad.clone()
            grad[0] = float("nan")
        return loss, grad, q_rows

    monkeypatch.setattr(op, "td_loss_and_grad", poisoned)
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, *TINY)
    err = capsys.readouterr().err
    assert code == 1 and "stopped: non-finite Q-network parameters at tick 41" in err and "Traceback" not in err
    rows = read_metrics(run_dir)
    clean = read_metrics(tiny_run[1])
    assert 0 < len(rows) < len(clean)
    assert rows == clean[:len(rows)]          # exactly the episodes every member finished before the NaN
    text = (run_dir / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = read_json(run_dir / "summary.json")
    assert summary["status"].startswith("non-finite") and f"after {len(rows)} episodes" in summary["status"]
    assert summary["rows_logged"] == len(rows) and summary["last_episode"] == rows[-1]["episode"]
    assert not (run_dir / "phase_diagram.png").exists()            # no analysis of a broken sweep


def test_diverging_learning_rate_stops_with_rows(tmp_path, capsys):
    """The real thing, no monkeypatch: lr 1e38 overflows the parameters within a few ticks."""
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, *TINY, "--learning-rate", "1e38")
    assert code == 1 and "non-finite" in capsys.readouterr().err
    summary = read_json(run_dir / "summary.json")
    assert summary["status"].startswith("non-finite") and summary["rows_logged"] == len(read_metrics(run_dir))
