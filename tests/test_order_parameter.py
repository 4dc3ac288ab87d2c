"""order_parameter.py: the corridor, the batched DQN against plain torch, the order parameters
against the original's formulas, the statistics, and subprocess runs of the script."""

import math
import re

import numpy as np
import pytest
import torch
import tyro
import torch.nn as nn
from conftest import read_json, read_metrics
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
def test_batched_script_matches_an_unbatched_reference(run):
    """One configuration, so the batch has one member: same draws, same returns, same order params.
    The FIFO buffer is small enough to wrap, which checks the ring buffer against a python list."""
    args = ("--env-sizes", "5", "--hidden-dims", "6", "--num-seeds", "1", "--episodes", "8", "--prefill", "30",
            "--batch-size", "8", "--buffer-size", "60", "--order-every", "2", "--num-probe-states", "50",
            "--final-window", "2", "--bootstrap", "50", "--max-steps", "12", "--seed", "3")
    proc, run_dir = run(SCRIPT, *args)
    assert proc.returncode == 0, proc.stderr
    rows = read_metrics(run_dir)
    got_returns = [r["return/N5_H6_s0"] for r in rows]
    got_order = [r["gradient_magnitude/N5_H6_s0"] for r in rows if "gradient_magnitude/N5_H6_s0" in r]
    want = reference_dqn(N=5, H=6, episodes=8, prefill=30, batch=8, buffer=60, seed=3, max_steps=12, lr=0.01,
                         grad_steps=4, order_every=2, probes=50)
    want_returns, want_order = want["returns"], want["order"]
    assert got_returns == want_returns
    assert np.allclose(got_order, want_order, rtol=1e-4)


# ---- subprocess runs ----------------------------------------------------------------------------
def test_smoke_sweep_writes_every_output_with_sane_values(run):
    proc, run_dir = run(SCRIPT, *TINY, "--track=True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "metrics.jsonl", "summary.json", "learning_curves.png", "phase_diagram.png",
                 "transition_analysis.png", "order_over_training.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "wandb").glob("offline-run-*"))
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["num_runs"] == 8 and s["best_order_parameter"] in op.ORDER_PARAMS
    for name, c in s["correlations"].items():
        for v in (c["r"], c["r_config_means"], c["partial_r_given_size"]):
            assert math.isnan(v) or -1 <= v <= 1, (name, v)
        assert set(c["within_size"]) == {"4", "6"}
    rows = read_metrics(run_dir)
    assert [r["episode"] for r in rows] == list(range(12))
    for r in rows:
        for k, v in r.items():
            if k.startswith("return/") and k != "return/mean":
                assert -20 <= v <= 12 - int(k.split("/")[1][1:].split("_")[0])
    assert "table" in proc.stdout or "phase diagram" in proc.stdout


def test_same_seed_same_numbers(run):
    _, a = run(SCRIPT, *TINY)
    _, b = run(SCRIPT, *TINY)
    rows = read_metrics(a)
    assert rows == read_metrics(b)
    assert [r["return/N6_H8_s0"] for r in rows] != [r["return/N6_H8_s1"] for r in rows]     # seeds differ
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    assert sa["correlations"] == sb["correlations"]


def test_corridor_learning_happens(run):
    proc, run_dir = run(SCRIPT, "--env-sizes", "6", "--hidden-dims", "16", "--num-seeds", "2", "--episodes", "40",
                        "--bootstrap", "50", "--prefill", "200", "--order-every", "10")
    assert proc.returncode == 0, proc.stderr
    rows = read_metrics(run_dir)
    first, last = np.mean([r["return/mean"] for r in rows[:5]]), np.mean([r["return/mean"] for r in rows[-5:]])
    assert last > first + 10                            # eps is still 0.67 at episode 40; optimum 6


def test_cartpole_sweep_runs(run):
    proc, run_dir = run(SCRIPT, "--env", "CartPole-v1", "--env-sizes", "0", "--hidden-dims", "8", "16",
                        "--num-seeds", "2", "--episodes", "6", "--prefill", "100", "--num-probe-states", "100",
                        "--batch-size", "32", "--order-every", "2", "--final-window", "2", "--bootstrap", "50")
    assert proc.returncode == 0, proc.stderr
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["env"] == "CartPole-v1" and s["num_runs"] == 4
    assert all(r["return/mean"] >= 1 for r in read_metrics(run_dir))


@pytest.mark.parametrize("args, message", [
    (("--env-sizes",), "need at least one value"),
    (("--hidden-dims", "0"), "--hidden-dims must be positive"),
    (("--env-sizes", "1"), "must be >= 2"),
    (("--episodes", "0"), "--episodes must be positive"),
    (("--env", "Pong-v99"), "unknown --env 'Pong-v99'"),
    (("--prefill", "50"), "need --batch-size < --prefill"),
])
def test_bad_input_is_rejected_with_a_one_line_reason(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        op.finalize_args(tyro.cli(op.Args, args=list(args), config=(tyro.conf.FlagConversionOff,)))


def test_bad_input_fails_fast_with_one_line(run):
    proc, run_dir = run(SCRIPT, "--env-sizes", "--episodes", "0")
    assert proc.returncode != 0 and run_dir is None
    assert "need at least one value" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_non_finite_training_stops_and_keeps_the_log(run):
    proc, run_dir = run(SCRIPT, *TINY, "--learning-rate", "1e38", "--episodes", "400")
    assert proc.returncode != 0 and "non-finite" in proc.stderr
    assert read_json(run_dir / "summary.json")["status"].startswith("non-finite")
    assert (run_dir / "metrics.jsonl").exists()
