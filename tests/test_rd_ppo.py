"""rd_ppo.py: oracle tests of the RD update, GAE, PPO loss, sampling and env handling; subprocess smoke tests."""

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, assert_bad_input, read_json, read_metrics, run_in_process

import rd_ppo as R

SCRIPT = "rd_ppo.py"
TINY = ("--total-timesteps", "2048", "--num-envs", "4", "--num-steps", "64")
DEFAULT_RD = R.RDParams(dt=0.1, d_a=0.1, d_h=1.0, rho_a=1.0, rho_h=1.0, mu_a=1.0, mu_h=2.0, gamma=0.1,
                        input_gain=1.0, clamp=5.0, h_min=0.1)


# ------------------------------------------------------------------------------------------------
# RD module
# ------------------------------------------------------------------------------------------------
def literal_rd_step(a, h, obs, drive, p: R.RDParams):
    """The docstring's equations, one scalar at a time, in float64."""
    n, k, n_act = a.shape
    a2, h2, out = np.zeros_like(a, dtype=np.float64), np.zeros_like(h, dtype=np.float64), np.zeros((n, n_act))
    for e in range(n):
        z = [math.exp(min(abs(float(x)), 50.0)) for x in obs[e]]
        w = [v / sum(z) for v in z]
        for j in range(n_act):
            a_bar = sum(float(a[e, r, j]) for r in range(k)) / k
            h_bar = sum(float(h[e, r, j]) for r in range(k)) / k
            for r in range(k):
                av, hv = float(a[e, r, j]), float(h[e, r, j])
                drive_in = p.input_gain * w[r] * float(obs[e, r]) * float(drive[r, j])
                da = p.d_a * (a_bar - av) + p.rho_a * av * av / hv - p.mu_a * av + p.gamma * np.sign(av) + drive_in
                dh = p.d_h * (h_bar - hv) + p.rho_h * av * av - p.mu_h * hv + p.gamma * np.sign(hv)
                a2[e, r, j] = min(max(av + p.dt * da, -p.clamp), p.clamp)
                h2[e, r, j] = min(max(hv + p.dt * dh, p.h_min), p.clamp)
            out[e, j] = sum(w[r] * a2[e, r, j] for r in range(k))
    return a2, h2, out


def module_with_state(a, h, p=DEFAULT_RD, rd_seed=0):
    n, k, n_act = a.shape
    m = R.RDModule(n, k, n_act, p, rd_seed)
    m.s[..., :n_act], m.s[..., n_act:] = a, h
    return m


def test_rd_step_matches_literal_equations():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1.5, (3, 4, 2)).astype(np.float32)
    a[0, 0, 0] = 0.0                                          # sign(0) = 0: no guidance on a zero entry
    h = rng.uniform(0.1, 3.0, (3, 4, 2)).astype(np.float32)
    obs = rng.normal(0, 1.0, (3, 4)).astype(np.float32)
    for p in (DEFAULT_RD, R.RDParams(0.3, 0.2, 0.7, 0.5, 1.5, 0.4, 1.1, 0.5, 2.0, 3.0, 0.2)):
        m = module_with_state(a, h, p)
        ref_a, ref_h, ref_out = literal_rd_step(a, h, obs, R.rd_drive_matrix(4, 2, 0), p)
        out = m.step(obs)
        np.testing.assert_allclose(m.a, ref_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.h, ref_h, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)


def test_drive_matrix_is_fixed_and_centred():
    p1, p2 = R.rd_drive_matrix(4, 2, 0), R.rd_drive_matrix(4, 2, 0)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(p1.sum(axis=1), 0.0, atol=1e-6)
    assert not np.array_equal(p1, R.rd_drive_matrix(4, 2, 1))


def test_sign_guidance_alone_grows_abs_a_to_the_clamp():
    only_guidance = R.RDParams(dt=0.1, d_a=0, d_h=0, rho_a=0, rho_h=0, mu_a=0, mu_h=0, gamma=0.5,
                               input_gain=0.0, clamp=2.0, h_min=0.1)
    a0 = np.array([[[0.1, -0.2], [-0.05, 0.0]]], dtype=np.float32)  # (1, 2, 2): mixed signs and a zero
    m = module_with_state(a0, np.ones_like(a0), only_guidance)
    prev = np.abs(m.a).copy()
    for _ in range(100):
        m.step(np.zeros((1, 2), dtype=np.float32))
        cur = np.abs(m.a)
        nonzero = a0 != 0
        assert np.all(cur[nonzero] >= prev[nonzero])              # |a| never shrinks
        assert np.all(cur <= only_guidance.clamp)                  # ...and stays bounded
        prev = cur.copy()
    np.testing.assert_allclose(np.abs(m.a)[a0 != 0], 2.0)         # reached the clamp
    assert m.a[0, 1, 1] == 0.0                                     # sign(0) = 0: a zero entry stays zero
    np.testing.assert_array_equal(np.sign(m.a), np.sign(a0))       # the sign is amplified, never flipped
    # one step grows |a| by exactly dt * gamma
    m2 = module_with_state(a0, np.ones_like(a0), only_guidance)
    m2.step(np.zeros((1, 2), dtype=np.float32))
    np.testing.assert_allclose(np.abs(m2.a)[a0 != 0], np.abs(a0)[a0 != 0] + 0.05, rtol=1e-6)
    # gamma = 0 leaves the state alone
    still = dataclasses.replace(only_guidance, gamma=0.0)
    m3 = module_with_state(a0, np.ones_like(a0), still)
    m3.step(np.zeros((1, 2), dtype=np.float32))
    np.testing.assert_array_equal(m3.a, a0)


def test_rd_state_stays_finite_and_bounded_under_stress():
    strong = R.RDParams(dt=0.5, d_a=1.0, d_h=5.0, rho_a=10.0, rho_h=10.0, mu_a=0.1, mu_h=0.1, gamma=2.0,
                        input_gain=10.0, clamp=5.0, h_min=0.1)
    m = R.RDModule(8, 4, 2, strong, rd_seed=3)
    rng = np.random.default_rng(1)
    for t in range(2000):
        out = m.step(rng.normal(0, 20, (8, 4)).astype(np.float32))
        assert np.isfinite(out).all() and np.isfinite(m.s).all()
        if t % 97 == 0:
            m.reset(rng.random(8) < 0.3)
    assert m.a.min() >= -5.0 and m.a.max() <= 5.0 and m.h.min() >= 0.1 and m.h.max() <= 5.0
    mean_a, mean_h, at_clip = m.diagnostics()
    assert 0 <= at_clip <= 1 and mean_a <= 5 and mean_h <= 5


def test_reset_only_touches_masked_envs():
    m = R.RDModule(3, 2, 2, DEFAULT_RD, 0)
    for _ in range(5):
        m.step(np.ones((3, 2), dtype=np.float32))
    before = m.s.copy()
    m.reset(np.array([False, True, False]))
    np.testing.assert_array_equal(m.a[1], 0.0)
    np.testing.assert_array_equal(m.h[1], 1.0)
    np.testing.assert_array_equal(m.s[[0, 2]], before[[0, 2]])


# ------------------------------------------------------------------------------------------------
# PPO pieces
# ------------------------------------------------------------------------------------------------
def test_gae_matches_plain_loop():
    rng = np.random.default_rng(0)
    T, N, g, lam = 7, 3, 0.9, 0.8
    rewards, values = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    dones, next_value = (rng.random((T, N)) < 0.3).astype(float), rng.normal(size=N)
    ref = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            v_next = next_value[n] if t == T - 1 else values[t + 1, n]
            delta = rewards[t, n] + g * v_next * (1 - dones[t, n]) - values[t, n]
            running = delta + g * lam * (1 - dones[t, n]) * running
            ref[t, n] = running
    t64 = lambda x: torch.tensor(x, dtype=torch.float64)
    adv, ret = R.gae(t64(rewards), t64(values), t64(dones), t64(next_value), g, lam)
    np.testing.assert_allclose(adv.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(ret.numpy(), ref + values, rtol=1e-12)


def test_ppo_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])     # p = (1/2, 1/2) and (3/4, 1/4)
    actions = torch.tensor([0, 0])
    old_logp = torch.log(torch.tensor([0.25, 0.75]))               # ratios 2 and 1
    adv = torch.tensor([1.0, -1.0])
    values, old_values, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0])
    loss, pg, v, ent, kl, clipfrac, ratio = R.ppo_loss(logits, values, actions, old_logp, old_values, adv, returns,
                                                       clip_coef=0.2, clip_vloss=True, ent_coef=0.1, vf_coef=0.5,
                                                       norm_adv=False)
    np.testing.assert_allclose(ratio.numpy(), [2.0, 1.0], rtol=1e-6)
    # sample 0: max(-1*2, -1*1.2) = -1.2; sample 1: max(1*1, 1*1) = 1  -> mean -0.1
    assert pg.item() == pytest.approx(-0.1, abs=1e-6)
    # value 0: clipped 0.2 -> max((1-2)^2, (0.2-2)^2) = 3.24; value 1: 1 -> 0.5 * mean = 1.06
    assert v.item() == pytest.approx(1.06, abs=1e-6)
    h = lambda ps: -sum(q * math.log(q) for q in ps)
    assert ent.item() == pytest.approx((h([0.5, 0.5]) + h([0.75, 0.25])) / 2, abs=1e-6)
    assert kl.item() == pytest.approx(((2 - 1 - math.log(2)) + 0) / 2, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-0.1 - 0.1 * ent.item() + 0.5 * 1.06, abs=1e-6)


def test_gumbel_sampling_matches_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, 0.0, -1.0]]).expand(40_000, 3)
    action, logp = R.sample_actions(logits, R.gumbel_noise((40_000, 3), torch.device("cpu")))
    freq = torch.bincount(action, minlength=3).double() / 40_000
    np.testing.assert_allclose(freq.numpy(), torch.softmax(logits[0], -1).numpy(), atol=0.01)
    np.testing.assert_allclose(logp.numpy(), torch.log_softmax(logits, -1)[torch.arange(40_000), action].numpy())


def test_blend_is_a_weighted_average_and_lambda_zero_is_identity():
    pol, rd = torch.tensor([[1.0, -2.0]]), torch.tensor([[4.0, 0.5]])
    assert R.blend_logits(pol, rd, 0.0) is pol
    np.testing.assert_allclose(R.blend_logits(pol, rd, 0.25).numpy(), (0.75 * pol + 0.25 * rd).numpy(), rtol=1e-6)
    np.testing.assert_allclose(R.blend_logits(pol, rd, 1.0).numpy(), rd.numpy())


def test_stored_rd_output_is_what_makes_the_first_ratio_one():
    """Recomputing log-probs with the stored rd_out reproduces the rollout's; a fresh RD state does not."""
    torch.manual_seed(0)
    agent, lam = R.Agent(4, 2), 0.5
    rd = R.RDModule(4, 4, 2, DEFAULT_RD, 0)
    rng = np.random.default_rng(0)
    obs_seq = rng.normal(0, 1, (6, 4, 4)).astype(np.float32)
    stored, rollout_logp = [], []
    with torch.no_grad():
        for obs in obs_seq:
            out = rd.step(obs)
            stored.append(out.copy())
            logits, _ = agent(torch.from_numpy(obs), torch.from_numpy(out), lam)
            rollout_logp.append(torch.log_softmax(logits, -1)[:, 0])
        b_obs = torch.from_numpy(obs_seq.reshape(-1, 4))
        replay = torch.log_softmax(agent(b_obs, torch.from_numpy(np.stack(stored).reshape(-1, 2)), lam)[0], -1)[:, 0]
        fresh = R.RDModule(24, 4, 2, DEFAULT_RD, 0).step(obs_seq.reshape(-1, 4))  # no history
        wrong = torch.log_softmax(agent(b_obs, torch.from_numpy(fresh), lam)[0], -1)[:, 0]
    assert torch.equal(torch.cat(rollout_logp), replay)
    assert (torch.cat(rollout_logp) - wrong).abs().max() > 1e-3


def test_learning_curve_summary_by_hand():
    steps = np.array([10, 20, 30, 40])
    rets = np.array([100.0, 500.0, 500.0, 500.0])
    s = R.learning_curve_summary(steps, rets, total_steps=50, window=2, threshold=475)
    assert s["final_return"] == 500.0
    assert s["steps_to_threshold"] == 30 and s["threshold_episode"] == 2   # running means 100, 300, 500, 500
    assert s["auc"] == pytest.approx((100 * 10 + 300 * 10 + 500 * 10 + 500 * 10) / 50)
    assert R.learning_curve_summary(np.zeros(0), np.zeros(0), 10)["steps_to_threshold"] is None


# ------------------------------------------------------------------------------------------------
# Environments
# ------------------------------------------------------------------------------------------------
def test_stateless_wrapper_drops_the_velocities():
    env = R.make_env("stateless")
    assert env.observation_space.shape == (2,)
    core = env.unwrapped
    np.testing.assert_allclose(env.observation_space.high, [2 * core.x_threshold, 2 * core.theta_threshold_radians])
    obs, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, core.state[[0, 2]].astype(np.float32))
    for _ in range(5):
        obs, *_ = env.step(1)
        assert obs.dtype == np.float32 and obs.shape == (2,)
        np.testing.assert_array_equal(obs, np.asarray(core.state, dtype=np.float32)[[0, 2]])


def test_logged_episode_returns_match_an_independent_count():
    """finished_episodes() (gymnasium 1.x info format, SAME_STEP autoreset) against our own tally."""
    envs = R.make_envs("cartpole", 3)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    running, tallied, logged = np.zeros(3), [], []
    for _ in range(400):
        obs, reward, term, trunc, info = envs.step(rng.integers(0, 2, 3))
        running += reward
        for i in np.nonzero(term | trunc)[0]:
            tallied.append((i, running[i]))
            running[i] = 0.0
            assert "final_obs" in info and info["_final_obs"][i]      # SAME_STEP: true last obs kept aside
        rets, lens = R.finished_episodes(info)
        done_idx = np.nonzero(term | trunc)[0]
        logged += list(zip(done_idx, rets))
        np.testing.assert_array_equal(rets, lens)                      # CartPole: +1 per step
    assert len(tallied) > 20
    assert [(int(i), float(r)) for i, r in tallied] == [(int(i), float(r)) for i, r in logged]
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


# ------------------------------------------------------------------------------------------------
# Smoke runs (subprocess, temporary directory)
# ------------------------------------------------------------------------------------------------
def comparable(rows):
    """Metric rows without the wall-clock-dependent columns."""
    return [{k: v for k, v in r.items() if k not in ("charts/SPS",)} for r in rows]


@pytest.mark.parametrize("env", ["cartpole", "stateless"])
def test_smoke_run_writes_every_output(run, env):
    proc, run_dir = run(SCRIPT, "--env", env, *TINY, "--gamma", "0.5", "--save-model", "True",
                        "--eval-episodes", "2", "--target-kl", "0.5")
    assert proc.returncode == 0, proc.stderr
    config = read_json(run_dir / "config.json")
    assert config["args"]["env"] == env and config["args"]["gamma"] == 0.5 and "--gamma" in config["argv"]
    assert config["x_axis"] == "global_step"
    rows = read_metrics(run_dir)
    assert all("global_step" in r for r in rows)
    episodes = [r for r in rows if "charts/episodic_return" in r]
    iters = [r for r in rows if "losses/loss" in r]
    assert len(iters) == 2048 // 256 and len(episodes) > 10
    assert all(r["charts/episodic_return"] == r["charts/episodic_length"] for r in episodes)
    assert all(r["debug/first_ratio_max_dev"] == 0.0 for r in iters)   # stored rd_out reused unchanged
    for key in ("rd/mean_abs_a", "rd/mean_abs_h", "rd/clip_fraction", "rd/out_norm", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "charts/SPS", "charts/learning_rate"):
        assert key in iters[-1]
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "ok" and summary["global_step"] == 2048
    for key in ("final_return_mean20", "steps_to_475", "auc", "wall_time_s", "SPS", "eval_greedy_return_mean"):
        assert key in summary
    assert len(summary["eval_greedy_returns"]) == 2
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert (run_dir / "rd_ppo.model").exists()


def test_lambda_zero_equals_module_off_and_same_seed_is_deterministic(run):
    _, with_module = run(SCRIPT, *TINY, "--rd-weight", "0", "--gamma", "0.5")
    _, again = run(SCRIPT, *TINY, "--rd-weight", "0", "--gamma", "0.5")
    _, no_module = run(SCRIPT, *TINY, "--rd", "False")
    _, other_seed = run(SCRIPT, *TINY, "--rd", "False", "--seed", "2")
    strip_rd = lambda rows: [{k: v for k, v in r.items() if not k.startswith("rd/")} for r in comparable(rows)]
    a, b = read_metrics(with_module), read_metrics(again)
    assert comparable(a) == comparable(b)                                           # determinism
    assert any("rd/mean_abs_a" in r for r in a)                                     # the module did run
    assert strip_rd(a) == comparable(read_metrics(no_module))                       # lambda = 0 == off
    assert comparable(read_metrics(no_module)) != comparable(read_metrics(other_seed))


def test_track_offline_writes_a_wandb_run(run):
    proc, run_dir = run(SCRIPT, *TINY, "--track=True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))


@pytest.mark.parametrize("args, message", [
    (("--env", "pong"), "unknown --env 'pong'"),
    (("--total-timesteps", "0"), "--total-timesteps must be positive"),
    (("--num-envs", "0"), "--num-envs must be positive"),
    (("--num-steps", "-1"), "--num-steps must be positive"),
    (("--update-epochs", "0"), "--update-epochs must be positive"),
    (("--eval-episodes", "0"), "--eval-episodes must be positive"),
    (("--torch-threads", "0"), "--torch-threads must be positive"),
    (("--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"), "does not divide"),
    (("--total-timesteps", "100"), "smaller than one batch"),
    (("--rd-weight", "1.5"), "must lie in [0, 1]"),
    (("--rd-weight", "-0.1"), "must lie in [0, 1]"),
    (("--discount", "1.01"), "--discount must lie in [0, 1]"),
    (("--gae-lambda", "-0.5"), "--gae-lambda must lie in [0, 1]"),
    (("--learning-rate", "-1"), "--learning-rate must be a finite number > 0"),
    (("--learning-rate", "0"), "--learning-rate must be a finite number > 0"),
    (("--clip-coef", "0"), "--clip-coef must be a finite number > 0"),
    (("--ent-coef", "inf"), "--ent-coef must be a finite number >= 0"),
    (("--gamma", "-0.1"), "--gamma must be a finite number >= 0"),
    (("--rd-dt", "nan"), "--rd-dt must be a finite number > 0"),
    (("--target-kl", "0"), "--target-kl must be > 0"),
    (("--rd-h-min", "0"), "need 0 < --rd-h-min < --rd-clamp"),
    (("--num-envs", "1", "--num-steps", "1000000000", "--total-timesteps", "1000000000"), "GiB"),
    (("--seed", "-1"), "--seed and --rd-seed must lie in [0, 2**32)"),
    (("--num-envs", "abc"), None),                                   # tyro's parse box
    (("--no-such-flag", "1"), None),
])
def test_bad_input_fails_fast_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    assert_bad_input(R, SCRIPT, args, message, capsys, tmp_path, monkeypatch)


def test_bad_input_in_a_subprocess_leaves_no_folder(run):
    proc, run_dir = run(SCRIPT, "--learning-rate", "-1")
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "rd_ppo.py: error: --learning-rate must be a finite number > 0, got -1.0"


def test_non_finite_loss_stops_and_keeps_the_log(tmp_path, monkeypatch, capsys):
    real_ppo_loss = R.ppo_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):                   # finite for the first update, NaN from the second on
        out = list(real_ppo_loss(*a, **kw))
        calls["n"] += 1
        if calls["n"] > 4 * 4:
            out[0] = out[0] * float("nan")
        return tuple(out)

    monkeypatch.setattr(R, "ppo_loss", poisoned)
    code, run_dir = run_in_process(R, SCRIPT, "global_step", tmp_path, *TINY)
    assert code == 1 and "non-finite loss" in capsys.readouterr().err
    rows = read_metrics(run_dir)                                        # strict JSON: NaN became null
    iters = [r for r in rows if "losses/loss" in r]
    assert len(iters) == 2 and iters[0]["losses/loss"] is not None and iters[1]["losses/loss"] is None
    assert any("charts/episodic_return" in r for r in rows)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"].startswith("non-finite") and summary["rows_logged"] == len(rows)
    assert summary["last_global_step"] == 2 * 256


def test_short_cartpole_run_learns(run):
    proc, run_dir = run(SCRIPT, "--total-timesteps", "40000", "--rd", "False")
    assert proc.returncode == 0, proc.stderr
    summary = read_json(run_dir / "summary.json")
    assert summary["final_return_mean20"] > 150                  # a random policy averages about 22


def test_sweep_config_parses_and_names_real_arguments():
    sweep = yaml.safe_load((REPO / "benchmark" / "rd_ppo_sweep.yaml").read_text())
    assert sweep["program"] == SCRIPT and sweep["method"] in ("grid", "random", "bayes")
    fields = set(R.Args.__dataclass_fields__)
    for name in sweep["parameters"]:
        assert name.replace("-", "_") in fields, name
    assert {"gamma", "rd-weight", "learning-rate"} <= set(sweep["parameters"])
    assert "${args}" in sweep["command"]


def test_plot_script_draws_mean_and_std(tmp_path, run):
    from conftest import run_script
    for seed in ("1", "2"):
        proc, run_dir = run(SCRIPT, *TINY, "--seed", seed)
        (tmp_path / "runs").mkdir(exist_ok=True)
        run_dir.rename(tmp_path / "runs" / run_dir.name)
    proc = run_script(tmp_path, "benchmark/plot.py", "--runs", "runs", "--group-by", "env", "gamma",
                      "--out", "curves.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert "n=2" in proc.stdout                                   # both seeds in one group
