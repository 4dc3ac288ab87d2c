"""order_parameter.py: the corridor, the batched DQN against plain torch, the order parameters
against the original's formulas, the statistics, whole runs (in process, and one through the
CLI), bad input and the NaN stop."""

import math

import numpy as np
import pytest
import torch
import tyro
from conftest import assert_bad_input, read_json, read_metrics, run_in_process
from dqn_reference import member_net, reference_lockstep

import order_parameter as op

SCRIPT = "order_parameter.py"
TINY = ("--env-sizes", "4", "6", "--hidden-dims", "4", "8", "--num-seeds", "2", "--episodes", "12",
        "--prefill", "40", "--batch-size", "16", "--buffer-size", "200", "--order-every", "4",
        "--num-probe-states", "50", "--final-window", "4", "--max-steps", "20")


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
    seen = []                                                # the q_rows handed to weight_fn
    grad = op.td_loss_and_grad(theta, target, layout, batch, 0.9, active,
                               weight_fn=lambda q: (seen.append(q), w if weighted else torch.ones_like(w))[1])
    for m, hidden in enumerate((3, 5)):
        net, tgt = member_net(theta[m], layout, hidden), member_net(target[m], layout, hidden)
        q = net(batch["obs"][m]).gather(1, batch["action"][m][:, None]).squeeze(1)
        y = batch["reward"][m] + 0.9 * tgt(batch["next_obs"][m]).max(1).values * (1 - batch["done"][m])
        ref = ((w[m] if weighted else 1.0) * (q - y.detach()) ** 2).mean()
        ref.backward()
        assert torch.allclose(seen[0][m], net(batch["obs"][m]), atol=1e-6)
        g = op.unflatten(grad[m:m + 1], layout)
        for lin, wn, bn in ((net[0], "W1", "b1"), (net[2], "W2", "b2"), (net[4], "W3", "b3")):
            assert torch.allclose(g[wn][0, :lin.in_features, :lin.out_features], lin.weight.grad.T, atol=1e-5)
            assert torch.allclose(g[bn][0, :lin.out_features], lin.bias.grad, atol=1e-5)
    padded = op.unflatten(grad, layout)
    assert padded["W2"][0, 3:].abs().sum() == 0 and padded["W2"][0, :, 3:].abs().sum() == 0   # padding gets 0
    frozen = op.td_loss_and_grad(theta, target, layout, batch, 0.9, torch.tensor([True, False]))
    assert frozen[1].abs().sum() == 0 and torch.equal(frozen[0], op.td_loss_and_grad(
        theta, target, layout, batch, 0.9, active)[0])


def test_state_table_path_is_the_same_loss_and_gradient():
    gen, layout, theta = _setup(d=1)
    table = torch.rand(2, 5, 1, generator=gen)
    batch = _batch(2, 9, 1, 5, gen)
    batch["obs"] = table.gather(1, batch["key"].unsqueeze(-1))
    batch["next_obs"] = table.gather(1, batch["next_key"].unsqueeze(-1))
    active = torch.tensor([True, True])
    qa, qb = [], []
    a = op.td_loss_and_grad(theta, theta.clone(), layout, batch, 0.99, active,
                            weight_fn=lambda q: (qa.append(q), torch.ones(2, 9))[1])
    b = op.td_loss_and_grad(theta, theta.clone(), layout, batch, 0.99, active, table=table,
                            weight_fn=lambda q: (qb.append(q), torch.ones(2, 9))[1])
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(qa[0], qb[0], atol=1e-6) and a.abs().sum() > 0


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


def test_replay_is_fifo_and_samples_each_members_own_rows():
    buf = op.ReplayBuffers(2, 3, 1, torch.device("cpu"))
    for t in range(5):                                                  # 5 rows into capacity 3
        v = torch.tensor([[t], [100 + t]], dtype=torch.float32)
        buf.add(v, torch.tensor([0, 1]), v.squeeze(1), v, torch.tensor([False, True]), torch.tensor([t, t]), 0)
    assert buf.size == 3 and sorted(buf.obs[0, :, 0].tolist()) == [2, 3, 4]
    s = buf.sample(50, torch.Generator().manual_seed(0))
    assert set(s["obs"][0, :, 0].tolist()) <= {2, 3, 4} and set(s["obs"][1, :, 0].tolist()) <= {102, 103, 104}
    assert torch.equal(s["reward"], s["obs"][..., 0]) and s["done"][1].eq(1).all() and s["action"][1].eq(1).all()


def test_one_tick_batched_pieces_give_the_one_by_one_numbers_exactly():
    """The training loop draws a tick's grad_steps minibatches at once (ReplayBuffers.sample(steps=)),
    prepares their TD targets together (td_prepare) and plans Adam's coefficients per tick
    (BatchedAdam.plan): every piece must give bit for bit the numbers of doing it step by step."""
    M, S, steps, B = 4, 6, 3, 16
    gen, layout, theta = _setup(hidden=(3, 5, 8, 8), d=1)
    buf = op.ReplayBuffers(M, 50, 1, torch.device("cpu"))
    for t in range(40):
        k = torch.randint(0, S, (M,), generator=gen)
        buf.add(k[:, None].float(), torch.randint(0, 2, (M,), generator=gen), torch.randn(M, generator=gen),
                k[:, None].float(), torch.rand(M, generator=gen) < 0.2, k, torch.randint(0, S, (M,), generator=gen))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    one = [buf.sample(B, g1, with_obs=False) for _ in range(steps)]
    together = buf.sample(B, g2, with_obs=False, steps=steps)
    for j in range(steps):
        for name, x in one[j].items():
            assert torch.equal(x, together[name][:, j * B:(j + 1) * B]), name
    table = torch.linspace(0, 1, S).view(1, S, 1).expand(M, S, 1)
    target = theta + 0.05 * torch.randn(theta.shape, generator=gen) * (theta != 0)
    v_tab = op.target_values(target, layout, table)
    active = torch.tensor([True, True, False, True])
    prepared = op.td_prepare(together, 0.9, v_tab, 2, active, steps)
    th_a, th_b = theta.clone(), theta.clone()
    adam_a, adam_b = op.BatchedAdam(th_a, 0.01), op.BatchedAdam(th_b, 0.01)
    for tick in range(2):
        adam_b.plan(active, steps)
        p_b = op.unflatten(th_b, layout)
        for j in range(steps):
            ga = op.td_loss_and_grad(th_a, target, layout, one[j], 0.9, active, table=table, v_next_table=v_tab)
            gb = op.td_loss_and_grad(th_b, target, layout, prepared[j], 0.9, active, table=table,
                                     v_next_table=v_tab, params=p_b)
            assert torch.equal(ga, gb) and ga.abs().sum() > 0 and ga[2].abs().sum() == 0
            adam_a.step(th_a, ga, active)
            adam_b.step_planned(th_b, gb, j)
            assert torch.equal(th_a, th_b)
    assert torch.equal(adam_a.t, adam_b.t) and not torch.equal(th_a, theta)


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


def _residual_r(a, b, groups):
    """Partial r by regression on group indicators: the definition the centring must equal."""
    dummies = (groups[:, None] == np.unique(groups)[None]).astype(float)
    res = lambda v: v - dummies @ np.linalg.lstsq(dummies, v, rcond=None)[0]
    return np.corrcoef(res(a), res(b))[0, 1]


def test_pearson_partial_and_within_group_correlations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert op.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(op.pearson(x, np.ones(30)))
    # a confounder: both variables are driven by the group N, with a within-config link of their own
    size = np.repeat([5, 15, 30], 10)
    config = np.repeat(np.arange(6), 5)                                 # 2 configs per N, 5 seeds each
    shared = rng.normal(size=30)
    a, b = size + rng.normal(size=30) + shared, -size + rng.normal(size=30) + shared
    rep = op.correlation_report(a, b, size, config)
    assert rep["r"] < -0.9 and rep["partial_r_given_size"] > 0.2
    assert rep["partial_r_given_size"] == pytest.approx(_residual_r(a, b, size))
    assert rep["within_config"]["r"] == pytest.approx(_residual_r(a, b, config))
    assert rep["within_config"]["groups"] == 6 and rep["partial_ci"] == op.fisher_ci(rep["partial_r_given_size"], 30, 2)
    for n in (5, 15, 30):
        sel = size == n
        assert rep["within_size"][n]["r"] == pytest.approx(np.corrcoef(a[sel], b[sel])[0, 1])
    assert rep["r_config_means"] == pytest.approx(np.corrcoef([a[config == c].mean() for c in range(6)],
                                                              [b[config == c].mean() for c in range(6)])[0, 1])


def test_r_config_means_is_not_reported_below_three_configurations():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8), rng.normal(size=8)
    two = op.correlation_report(a, b, np.repeat([4, 6], 4), np.repeat([0, 1], 4))
    assert math.isnan(two["r_config_means"]) and two["n_configs"] == 2       # it would print +-1.00
    three = op.correlation_report(a[:6], b[:6], np.repeat([4, 6, 8], 2), np.repeat([0, 1, 2], 2))
    assert math.isfinite(three["r_config_means"])


def test_fisher_ci_by_hand():
    lo, hi = op.fisher_ci(0.5, 28)                                      # z = 0.5493, se = 1/5
    assert lo == pytest.approx(math.tanh(0.549306 - 1.959964 / 5), abs=1e-5)
    assert hi == pytest.approx(math.tanh(0.549306 + 1.959964 / 5), abs=1e-5)
    assert op.fisher_ci(0.5, 28, k=8) == op.fisher_ci(0.5, 20)          # k covariates cost k pairs
    assert all(math.isnan(v) for v in op.fisher_ci(0.3, 3) + op.fisher_ci(float("nan"), 50))


@pytest.mark.parametrize("n, groups, rho", [(27, 1, 0.0), (9, 1, 0.5), (27, 3, -0.6), (27, 9, 0.4), (90, 9, 0.3)])
def test_fisher_intervals_cover_at_the_scripts_sample_sizes(n, groups, rho):
    """Coverage by simulation of the 95% CIs the analysis prints, at its sample sizes: across the 27
    runs of the default sweep, within one N (9 runs), the partial r given N (27 runs, 3 groups) and
    within (N, H) over seeds (27 runs in 9 configs; 90 runs with 10 seeds). Group means are shifted
    strongly, so a partial r that is not centred within the groups misses. 2000 draws: a valid
    interval lands in [0.93, 0.97] (3 standard errors), the percentile bootstrap did not (0.84-0.91)."""
    rng = np.random.default_rng(n + groups)
    g = np.repeat(np.arange(groups), n // groups)
    hits = 0
    for _ in range(2000):
        x = rng.normal(size=n)
        y = rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=n)
        x, y = x + 5 * g, y - 5 * g                                     # the group effect (N) is large
        r = op.partial_r(x, y, g)["ci"] if groups > 1 else op.fisher_ci(op.pearson(x, y), n)
        hits += r[0] <= rho <= r[1]
    assert 0.93 <= hits / 2000 <= 0.97, hits / 2000


def test_policy_progress_by_hand():
    """Two corridors of N = 4 (3 decision cells): member 0 goes right everywhere (optimal, return
    12 - 4 = 8); member 1 goes left in cell 1, so it bounces between cells 0 and 1 until the limit."""
    layout = op.mlp_layout(1, 2, 2)
    theta = torch.zeros(2, sum(math.prod(sh) for _, sh in layout))
    p = op.unflatten(theta, layout)
    p["b3"][0] = torch.tensor([0.0, 1.0])                               # Q(right) > Q(left) everywhere
    # member 1: Q(s) = relu(s W1 + b1) W3 + b3 with hidden unit 0 ~ 1[s near 0.25]: left there
    p["W1"][1, 0] = torch.tensor([1.0, 1.0])
    p["b1"][1] = torch.tensor([-0.2, -0.3])
    p["W2"][1] = torch.eye(2)
    p["W3"][1] = torch.tensor([[10.0, 0.0], [-20.0, 0.0]])              # +10 s in (0.2, 0.3], then falls
    p["b3"][1] = torch.tensor([0.0, 0.1])
    cells = op.Corridor(torch.tensor([4, 4]), 20).all_states()
    got = op.policy_progress(theta, layout, cells, torch.tensor([4, 4]), max_steps=20)
    assert got[0].tolist() == [1.0, 8.0]
    assert got[1, 0].item() == pytest.approx(2 / 3) and got[1, 1].item() == -20.0


def test_over_training_correlation_by_hand():
    returns = np.array([[0.0, 2, 4, 6, 8, 10]])
    series = np.array([[1.0, 3.0, 2.0]])
    ckpts = np.array([0, 2, 4])
    trailing = [0.0, 3.0, 7.0]                                          # window 2: means of (0), (2,4), (6,8)
    got = op.over_training_r(series, returns, ckpts, 2)
    assert got[0] == pytest.approx(np.corrcoef(series[0], trailing)[0, 1])


# ---- batched training against an unbatched reference ------------------------------------------
def test_batched_script_matches_an_unbatched_reference_with_mixed_widths_and_compaction(tmp_path, monkeypatch):
    """Eight members (two corridor lengths x two widths x two seeds; width 3 is padded to 6) in one
    batch, against eight plain-torch DQNs drawing the same numbers: the same returns, TD gradient
    norms and gradient_magnitude at every checkpoint, and the same final parameters. The N = 4
    members finish first; the first to finish stays in the batch, masked, until a quarter of the
    rows are done, and then the batch is compacted, repeatedly, while the N = 6 members still train.
    A finished member that kept training would end with other parameters. The FIFO buffer is small
    enough to wrap."""
    members = [dict(N=n, H=h, pressure=None) for n in (4, 6) for h in (3, 6) for _ in range(2)]
    kept = []
    real_keep = op.keep_rows
    monkeypatch.setattr(op, "keep_rows", lambda obj, rows: (kept.append(len(rows)), real_keep(obj, rows))[1])
    args = ("--env-sizes", "4", "6", "--hidden-dims", "3", "6", "--num-seeds", "2", "--episodes", "8", "--prefill",
            "30", "--batch-size", "8", "--buffer-size", "60", "--order-every", "2", "--num-probe-states", "50",
            "--final-window", "2", "--max-steps", "12", "--seed", "3")
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, *args)
    assert code == 0
    sizes = kept[::3]                                # keep_rows runs on env, adam and buf per compaction
    assert sizes[0] <= 6 and len(sizes) >= 2 and sizes == sorted(sizes, reverse=True), kept
    want = reference_lockstep(members, episodes=8, prefill=30, batch=8, buffer=60, seed=3, max_steps=12, lr=0.01,
                              grad_steps=4, order_every=2, probes=50, compaction=True)
    rows = read_metrics(run_dir)
    saved = torch.load(run_dir / "final_theta.pt")
    layout = op.mlp_layout(1, 6, 2)
    for m, (spec, ref) in enumerate(zip(members, want)):
        name = f"N{spec['N']}_H{spec['H']}_s{m % 2}"
        assert saved["names"][m] == name
        assert [r[f"return/{name}"] for r in rows] == ref["returns"], name
        assert np.allclose([r[f"td_grad_norm/{name}"] for r in rows], ref["td_norm"], rtol=1e-4), name
        got_order = [r[f"gradient_magnitude/{name}"] for r in rows if f"gradient_magnitude/{name}" in r]
        assert np.allclose(got_order, ref["order"], rtol=1e-4), name
        net = member_net(saved["theta"][m], layout, spec["H"])
        for mine, theirs in zip(net.parameters(), ref["final"].parameters()):
            assert (mine - theirs).abs().max() < 1e-3, (name, (mine - theirs).abs().max())
    assert len({tuple(ref["returns"]) for ref in want}) > 1


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
        assert set(c["within_size"]) == {"4", "6"} and c["n_configs"] == 4
    assert set(s["by_checkpoint"]) == {"0", "4", "8"}
    assert set(s["by_checkpoint"]["4"]["gradient_magnitude"]) == {"trailing_return", "policy_correct", "greedy_return"}
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
                                   "--num-seeds", "2", "--episodes", "40", "--prefill", "200",
                                   "--order-every", "10")
    assert code == 0
    rows = read_metrics(run_dir)
    first, last = np.mean([r["return/mean"] for r in rows[:5]]), np.mean([r["return/mean"] for r in rows[-5:]])
    assert last > first + 10                            # eps is still 0.67 at episode 40; optimum 6


def test_cartpole_sweep_runs(tmp_path):
    code, run_dir = run_in_process(op, SCRIPT, "episode", tmp_path, "--env", "CartPole-v1", "--env-sizes", "0",
                                   "--hidden-dims", "8", "16", "--num-seeds", "2", "--episodes", "6", "--prefill",
                                   "100", "--num-probe-states", "100", "--batch-size", "32", "--order-every", "2",
                                   "--final-window", "2")
    assert code == 0
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["env"] == "CartPole-v1" and s["num_runs"] == 4
    rows = read_metrics(run_dir)
    assert len(rows) == 6 and len({r["return/env0_H8_s0"] for r in rows}) > 1        # episodes really differ
    assert set(s["by_checkpoint"]["2"]["gradient_magnitude"]) == {"trailing_return"}   # no greedy eval on gym


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
        grad = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] > 4 * 40:
            grad = grad.clone()
            grad[0] = float("nan")
        return grad

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
