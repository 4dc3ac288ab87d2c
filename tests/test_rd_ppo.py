"""rd_ppo.py: oracle tests of the RD update, GAE, PPO loss, sampling and env handling; subprocess smoke tests."""

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, assert_bad_input, parse_in_process, read_json, read_metrics, run_in_process

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
    mean_a, mean_h, at_clip = m.diagnostics()[0]
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


def test_leaky_step_is_linear_leaky_integration_of_the_same_drive():
    rng = np.random.default_rng(2)
    p = DEFAULT_RD
    m = R.RDModule(3, 4, 2, p, 0, dynamics="leaky")
    np.testing.assert_array_equal(m.s, 0.0)                               # leaky reset: a = h = 0
    m.s[:] = rng.normal(0, 1, m.s.shape).astype(np.float32)
    a0, h0 = m.a.copy(), m.h.copy()
    obs = rng.normal(0, 1, (3, 4)).astype(np.float32)
    out = m.step(obs)
    w = np.exp(np.abs(obs)) / np.exp(np.abs(obs)).sum(1, keepdims=True)
    drive = p.input_gain * (w * obs)[:, :, None] * R.rd_drive_matrix(4, 2, 0)
    np.testing.assert_allclose(m.a, a0 + p.dt * (-p.mu_a * a0 + drive), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.h, h0 + p.dt * (-p.mu_h * h0 + drive), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, (w[:, :, None] * m.a).sum(1), rtol=1e-5)
    m2 = R.RDModule(3, 4, 2, dataclasses.replace(p, gamma=5.0), 0, dynamics="leaky")
    m2.s[:] = m.s
    m3 = R.RDModule(3, 4, 2, p, 0, dynamics="leaky")
    m3.s[:] = m.s
    np.testing.assert_array_equal(m2.step(obs), m3.step(obs))              # no guidance in the control


def test_turing_threshold_from_the_linearisation_and_in_simulation():
    assert R.turing_threshold(DEFAULT_RD) == pytest.approx(-2 + 4 / 0.9)
    # at gamma = 0 and no drive, a zero-mean perturbation of the homogeneous point a* = h* = 2 grows
    # just above the threshold and decays just below it
    growth = {}
    for d_h in (1.9, 3.0):
        p = dataclasses.replace(DEFAULT_RD, gamma=0.0, input_gain=0.0, d_h=d_h, clamp=50.0)
        m = R.RDModule(1, 4, 2, p, 0)
        m.s[..., :2], m.s[..., 2:] = 2.0, 2.0
        m.s[0, :, 0] += np.array([1e-3, -1e-3, 1e-3, -1e-3], dtype=np.float32)
        for _ in range(600):
            m.step(np.zeros((1, 4), dtype=np.float32))
        growth[d_h] = np.abs(m.a[0, :, 0] - m.a[0, :, 0].mean()).max()
    assert growth[1.9] < 1e-4 < 1e-2 < growth[3.0]
    # --rd-init fixed-point starts episodes at (a*, h*) = (2, 2), where that instability can act
    fp = R.RDModule(2, 4, 2, dataclasses.replace(DEFAULT_RD, init="fixed-point"), 0)
    np.testing.assert_array_equal(fp.s, 2.0)
    assert R.homogeneous_point(DEFAULT_RD) == (2.0, 2.0)


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


def test_ppo_loss_by_hand_per_agent():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])     # p = (1/2, 1/2) and (3/4, 1/4)
    actions = torch.tensor([0, 0])
    old_logp = torch.log(torch.tensor([0.25, 0.75]))               # ratios 2 and 1
    adv = torch.tensor([1.0, -1.0])
    values, old_values, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0])
    # agent 0 gets the hand case, agent 1 a different one: their numbers must not mix
    two = lambda a, b: torch.stack([a, b])
    loss, pg, v, ent, kl, clipfrac, ratio = R.ppo_loss(
        two(logits, torch.zeros(2, 2)), two(values, values), two(actions, actions), two(old_logp, old_logp),
        two(old_values, old_values), two(adv, adv), two(returns, returns), clip_coef=0.2, clip_vloss=True,
        ent_coef=0.1, vf_coef=0.5, norm_adv=False)
    assert loss.shape == (2,) and ratio.shape == (2, 2)
    np.testing.assert_allclose(ratio[0].numpy(), [2.0, 1.0], rtol=1e-6)
    # sample 0: max(-1*2, -1*1.2) = -1.2; sample 1: max(1*1, 1*1) = 1  -> mean -0.1
    assert pg[0].item() == pytest.approx(-0.1, abs=1e-6)
    # value 0: clipped 0.2 -> max((1-2)^2, (0.2-2)^2) = 3.24; value 1: 1 -> 0.5 * mean = 1.06
    assert v[0].item() == pytest.approx(1.06, abs=1e-6)
    h = lambda ps: -sum(q * math.log(q) for q in ps)
    assert ent[0].item() == pytest.approx((h([0.5, 0.5]) + h([0.75, 0.25])) / 2, abs=1e-6)
    assert ent[1].item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl[0].item() == pytest.approx(((2 - 1 - math.log(2)) + 0) / 2, abs=1e-6)
    assert clipfrac[0].item() == pytest.approx(0.5)
    assert loss[0].item() == pytest.approx(-0.1 - 0.1 * ent[0].item() + 0.5 * 1.06, abs=1e-6)


def test_gumbel_sampling_matches_the_softmax():
    gens = [torch.Generator().manual_seed(0)]
    logits = torch.tensor([[1.0, 0.0, -1.0]]).expand(1, 40_000, 3)
    action, logp = R.sample_actions(logits, R.gumbel_noise((1, 40_000, 3), gens, torch.device("cpu")))
    freq = torch.bincount(action[0], minlength=3).double() / 40_000
    np.testing.assert_allclose(freq.numpy(), torch.softmax(logits[0, 0], -1).numpy(), atol=0.01)
    np.testing.assert_allclose(logp[0].numpy(), torch.log_softmax(logits[0], -1)[torch.arange(40_000), action[0]].numpy())


def test_blend_is_a_weighted_average_and_lambda_zero_is_identity():
    pol, rd = torch.tensor([[1.0, -2.0]]), torch.tensor([[4.0, 0.5]])
    assert R.blend_logits(pol, rd, 0.0) is pol
    np.testing.assert_allclose(R.blend_logits(pol, rd, 0.25).numpy(), (0.75 * pol + 0.25 * rd).numpy(), rtol=1e-6)
    np.testing.assert_allclose(R.blend_logits(pol, rd, 1.0).numpy(), rd.numpy())


def test_per_agent_grad_clip_matches_clip_grad_norm():
    torch.manual_seed(0)
    agents = R.Agents(3, 5, 2, [1, 2, 3])
    x = torch.randn(3, 8, 5)
    logits, value = agents(x, torch.zeros(3, 8, 2), 0.0)
    scale = torch.tensor([1.0, 100.0, 1e-4])                       # three gradient sizes around the clip
    ((logits.pow(2).sum((1, 2)) + value.sum(1)) * scale).sum().backward()
    params = list(agents.parameters())
    ref = []
    for m in range(3):                                             # agent m's gradient as one network
        rows = [p.grad.view(3, -1)[m].clone() for p in params]
        norm = torch.cat(rows).norm()
        ref.append([r * min(1.0, 0.5 / (norm.item() + 1e-6)) for r in rows])
    norms = R.clip_grad_norm_per_agent(params, 3, 0.5)
    assert norms.max() > 0.5 > norms.min()                          # some agents clipped, some not
    for m in range(3):
        for p, r in zip(params, ref[m]):
            torch.testing.assert_close(p.grad.view(3, -1)[m], r)


def test_agents_are_independent_and_the_critic_sees_the_whole_input():
    a3, a1 = R.Agents(3, 6, 2, [5, 6, 7]), R.Agents(1, 6, 2, [6])
    for p3, p1 in zip(a3.parameters(), a1.parameters()):            # agent 1 of 3 == agent seeded 6 alone
        k = p3.shape[0] // 3
        assert torch.equal(p3[k:2 * k], p1)
    torch.manual_seed(0)
    x = torch.randn(1, 10, 6)
    x2 = x.clone()
    x2[..., 4:] += 1.0                                              # change only the extra (module) features
    logits, v = a1(x, torch.zeros(1, 10, 2), 0.0)
    logits2, v2 = a1(x2, torch.zeros(1, 10, 2), 0.0)
    assert (v - v2).abs().min() > 0 and (logits - logits2).abs().max() > 0
    torch.testing.assert_close(a1.value(x), v)


def test_stored_rd_output_is_what_makes_the_first_ratio_one():
    """Recomputing log-probs with the stored rd_out reproduces the rollout's; a fresh RD state does not."""
    agents, lam = R.Agents(1, 4, 2, [0]), 0.5
    rd = R.RDModule(4, 4, 2, DEFAULT_RD, 0)
    rng = np.random.default_rng(0)
    obs_seq = rng.normal(0, 1, (6, 4, 4)).astype(np.float32)
    stored, rollout_logp = [], []
    with torch.no_grad():
        for obs in obs_seq:
            out = rd.step(obs)
            stored.append(out.copy())
            logits, _ = agents(torch.from_numpy(obs)[None], torch.from_numpy(out)[None], lam)
            rollout_logp.append(torch.log_softmax(logits, -1)[0, :, 0])
        b_obs = torch.from_numpy(obs_seq.reshape(1, -1, 4))
        replay = torch.log_softmax(agents(b_obs, torch.from_numpy(np.stack(stored).reshape(1, -1, 2)), lam)[0], -1)
        fresh = R.RDModule(24, 4, 2, DEFAULT_RD, 0).step(obs_seq.reshape(-1, 4))  # no history
        wrong = torch.log_softmax(agents(b_obs, torch.from_numpy(fresh)[None], lam)[0], -1)
    assert torch.equal(torch.cat(rollout_logp), replay[0, :, 0])
    assert (torch.cat(rollout_logp) - wrong[0, :, 0]).abs().max() > 1e-3


def test_learning_curve_summary_by_hand():
    steps = np.array([10, 20, 30, 40])
    rets = np.array([100.0, 500.0, 500.0, 500.0])
    s = R.learning_curve_summary(steps, rets, total_steps=50, window=2, threshold=475)
    assert s["final_return"] == 500.0
    assert s["steps_to_threshold"] == 30 and s["threshold_episode"] == 2   # running means 100, 300, 500, 500
    assert s["auc"] == pytest.approx((100 * 10 + 300 * 10 + 500 * 10 + 500 * 10) / 50)
    assert R.learning_curve_summary(np.zeros(0), np.zeros(0), 10)["steps_to_threshold"] is None


def test_t_interval_by_hand():
    ci = R.t_interval([1.0, 2.0, 3.0, None])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == 2.0
    assert ci["ci_low"] == pytest.approx(2 - half) and ci["ci_high"] == pytest.approx(2 + half)
    assert R.t_interval([None])["mean"] is None and R.t_interval([4.0])["ci_low"] is None
    big = R.t_interval(list(np.random.default_rng(0).normal(size=41)))      # df = 40: 2.0211
    x = np.random.default_rng(0).normal(size=41)
    assert big["ci_high"] - big["mean"] == pytest.approx(2.0211 * x.std(ddof=1) / math.sqrt(41), rel=1e-4)


def test_ridge_probe_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = np.c_[x @ np.array([1.0, -2.0, 0.5]) + 3.0, rng.normal(size=2000)]
    r2 = R.ridge_r2(x[:1000], y[:1000], x[1000:], y[1000:])
    assert r2[0] > 0.999 and abs(r2[1]) < 0.02


# ------------------------------------------------------------------------------------------------
# Environment and the policy input
# ------------------------------------------------------------------------------------------------
def test_cartpole_batch_matches_gymnasium_step_for_step():
    envs = R.CartPoleBatch([0], 3, stateless=False)
    obs = envs.reset()
    refs = [gym.make("CartPole-v1").unwrapped for _ in range(3)]
    for ref, o in zip(refs, envs.state):
        ref.reset(seed=0)
        ref.state = o.copy()
    rng = np.random.default_rng(0)
    for _ in range(60):
        act = rng.integers(0, 2, 3)
        obs, rew, term, trunc, final, ep_ret = envs.step(act)
        for i, ref in enumerate(refs):
            r_obs, r_rew, r_term, _, _ = ref.step(int(act[i]))
            np.testing.assert_array_equal(final[i], r_obs)
            assert rew[i] == r_rew and term[i] == r_term
            if term[i]:
                ref.state, ref.steps_beyond_terminated = envs.state[i].copy(), None   # follow the autoreset
                np.testing.assert_array_equal(obs[i], envs.state[i].astype(np.float32))


def test_stateless_batch_drops_the_velocities_and_truncates():
    envs = R.CartPoleBatch([3, 4], 2, stateless=True, max_episode_steps=5)
    obs = envs.reset()
    assert obs.shape == (4, 2) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs, envs.state[:, [0, 2]].astype(np.float32))
    for t in range(5):
        obs, rew, term, trunc, final, ep_ret = envs.step(np.array([0, 1, 0, 1]))
    assert trunc.all() and not term.any() and (ep_ret == 5).all()
    assert (envs.steps == 0).all()                                   # every env started a new episode
    alone = R.CartPoleBatch([4], 2, stateless=True)
    np.testing.assert_array_equal(alone.reset(), R.CartPoleBatch([3, 4], 2, stateless=True).reset()[2:])


def make(**kw) -> R.Args:
    args = R.Args(**{"total_timesteps": 2048, "num_envs": 4, "num_steps": 64, "cuda": False, **kw})
    return R.finalize_args(args)


def test_rollout_resets_the_module_at_every_episode_start():
    """x_t's module part equals a fresh module run over the current episode's observations only."""
    args = make(rd_input=True, gamma=0.5, max_episode_steps=7)
    envs, observer, agents, state = R.make_learners(args, torch.device("cpu"))
    roll = R.collect_rollout(envs, observer, agents, state, args, torch.device("cpu"))
    x, dones = roll["x"], roll["dones"]                              # (T, E, 4 + 16), (T, E)
    assert dones.sum() >= 4 * 8
    p = R.RDParams.from_args(args)
    for e in range(4):
        fresh = R.RDModule(1, 4, 2, p, args.rd_seed)
        for t in range(args.num_steps):
            if t > 0 and dones[t - 1, e]:
                fresh.reset(np.ones(1, dtype=bool))
            fresh.step(x[t, e, :4][None])
            np.testing.assert_allclose(x[t, e, 4:], fresh.s.reshape(-1), rtol=1e-6, atol=1e-7)


def test_truncation_bootstraps_from_the_value_of_the_last_observation(monkeypatch):
    args = make(max_episode_steps=3, discount=0.9)
    envs, observer, agents, state = R.make_learners(args, torch.device("cpu"))
    monkeypatch.setattr(agents, "value", lambda x: torch.full(x.shape[:2], 2.0))
    roll = R.collect_rollout(envs, observer, agents, state, args, torch.device("cpu"))
    done = roll["dones"].astype(bool)                                # every episode ends at its time limit
    assert done.sum() == 4 * (64 // 3)
    np.testing.assert_allclose(roll["rewards"][done], 1.0 + 0.9 * 2.0)
    np.testing.assert_array_equal(roll["rewards"][~done], 1.0)


def test_frame_stack_holds_the_previous_observations_and_zeros_at_a_start():
    args = make(frame_stack=3, rd=False, max_episode_steps=10)
    envs, observer, agents, state = R.make_learners(args, torch.device("cpu"))
    roll = R.collect_rollout(envs, observer, agents, state, args, torch.device("cpu"))
    x, dones = roll["x"], roll["dones"]                               # (T, E, 12)
    for e in range(4):
        since = 0                                                     # steps since the episode began
        for t in range(args.num_steps):
            if t > 0 and dones[t - 1, e]:
                since = 0
            for k in (1, 2):
                expect = x[t - k, e, :4] if since >= k else np.zeros(4, dtype=np.float32)
                np.testing.assert_array_equal(x[t, e, 4 * k:4 * k + 4], expect)
            since += 1


def test_zero_and_shuffle_controls_feed_what_their_names_say():
    args = make(rd_out="zero", gamma=0.5)
    envs, observer, agents, state = R.make_learners(args, torch.device("cpu"))
    roll = R.collect_rollout(envs, observer, agents, state, args, torch.device("cpu"))
    assert not roll["rd_used"].any() and not roll["batch"]["rd"].any()
    assert np.abs(observer.module.a).max() > 0.01                         # the module still runs
    # shuffle: each value used is the module's own output for the same env at this or one of the last
    # num_steps - 1 steps, and the sequence is not the module's time order
    args = make(rd_out="shuffle", gamma=0.5, num_steps=16)
    observer = R.Observer(args, 1, 4, 2)
    replica = R.RDModule(4, 4, 2, R.RDParams.from_args(args), args.rd_seed)
    rng = np.random.default_rng(0)
    gens = [np.random.default_rng(1)]
    outs, used = [], []
    for t in range(60):
        obs = rng.normal(0, 1, (4, 4)).astype(np.float32)
        used.append(observer.observe(obs, gens)[1])
        outs.append(replica.step(obs).copy())
    outs, used = np.stack(outs), np.stack(used)                           # (60, 4, 2)
    for t in range(60):
        for e in range(4):
            window = outs[max(0, t - 15):t + 1, e]
            assert any(np.array_equal(used[t, e], w) for w in window), (t, e)
    assert not np.array_equal(used, outs) and np.mean(np.all(used == outs, axis=-1)) < 0.3


def test_td_guidance_scales_gamma_by_the_last_td_error():
    args = make(guidance="td", gamma=0.4)
    obs = R.Observer(args, 1, 4, 2)
    assert obs.gamma() is not None and not obs.gamma().any()          # no TD error yet: no push
    reward, value, prev_value = np.ones(4, np.float32), np.array([1, 2, 3, 4], np.float32), np.zeros(4, np.float32)
    obs.record_td(reward, value, prev_value, np.array([0, 0, 1, 0], np.float32), np.array([1, 1, 1, 0], bool))
    delta = np.array([1 + 0.99 * 1, 1 + 0.99 * 2, 1.0, 0.0])
    np.testing.assert_allclose(obs.delta, delta, rtol=1e-6)
    sigma = math.sqrt(0.99 + 0.01 * (delta ** 2).mean())
    np.testing.assert_allclose(obs.gamma(), 0.4 * np.tanh(delta / sigma), rtol=1e-5)
    assert R.Observer(make(gamma=0.4), 1, 4, 2).gamma() is None      # blind: the fixed gamma


# ------------------------------------------------------------------------------------------------
# Training runs (in process unless the CLI itself is under test)
# ------------------------------------------------------------------------------------------------
def comparable(rows):
    """Metric rows without the wall-clock-dependent columns."""
    return [{k: v for k, v in r.items() if k not in ("charts/SPS",)} for r in rows]


def inproc(tmp_path, name, *argv):
    (tmp_path / name).mkdir()
    code, run_dir = run_in_process(R, SCRIPT, "global_step", tmp_path / name, *argv)
    assert code == 0
    return run_dir


@pytest.mark.parametrize("env", ["cartpole", "stateless"])
def test_smoke_run_writes_every_output(tmp_path, env):
    run_dir = inproc(tmp_path, "a", "--env", env, *TINY, "--gamma", "0.5", "--save-model", "True",
                     "--eval-episodes", "2", "--target-kl", "0.5", "--rd-input", "True")
    config = read_json(run_dir / "config.json")
    assert config["args"]["env"] == env and config["args"]["gamma"] == 0.5 and config["x_axis"] == "global_step"
    rows = read_metrics(run_dir)
    assert all("global_step" in r for r in rows)
    episodes = [r for r in rows if "charts/episodic_return" in r]
    iters = [r for r in rows if "losses/loss" in r]
    assert len(iters) == 2048 // 256 and len(episodes) > 10
    assert all(r["charts/episodic_return"] == r["charts/episodic_length"] for r in episodes)
    assert all(r["debug/first_ratio_max_dev"] == 0.0 for r in iters)   # stored x and rd_used reused unchanged
    for key in ("rd/mean_abs_a", "rd/mean_abs_h", "rd/clip_fraction", "rd/used_norm", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "charts/SPS", "charts/learning_rate"):
        assert key in iters[-1]
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "ok" and summary["global_step"] == 2048 and summary["rd_input"] is True
    for key in ("final_return_mean20", "steps_to_475", "auc", "wall_time_s", "SPS", "eval_greedy_return_mean"):
        assert key in summary
    assert len(summary["eval_greedy_returns"]) == 2 and all(r >= 8 for r in summary["eval_greedy_returns"])
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert (run_dir / "rd_ppo.model").exists()


def test_lr_annealing_and_the_target_kl_stop(tmp_path):
    rows = [r for r in read_metrics(inproc(tmp_path, "a", *TINY)) if "losses/loss" in r]
    lrs = [r["charts/learning_rate"] for r in rows]
    assert lrs == pytest.approx([2.5e-3 * (1 - i / 8) for i in range(8)])
    assert all(r["debug/update_minibatches"] == 16 for r in rows)
    flat = [r for r in read_metrics(inproc(tmp_path, "b", *TINY, "--anneal-lr", "False")) if "losses/loss" in r]
    assert all(r["charts/learning_rate"] == 2.5e-3 for r in flat)
    stopped = [r for r in read_metrics(inproc(tmp_path, "c", *TINY, "--target-kl", "1e-9")) if "losses/loss" in r]
    assert all(r["debug/update_minibatches"] == 4 for r in stopped)   # stops after the first epoch


def test_lambda_zero_equals_module_off_and_same_seed_is_deterministic(tmp_path):
    a = read_metrics(inproc(tmp_path, "a", *TINY, "--rd-weight", "0", "--gamma", "0.5"))
    b = read_metrics(inproc(tmp_path, "b", *TINY, "--rd-weight", "0", "--gamma", "0.5"))
    off = read_metrics(inproc(tmp_path, "c", *TINY, "--rd", "False"))
    other = read_metrics(inproc(tmp_path, "d", *TINY, "--rd", "False", "--seed", "2"))
    strip_rd = lambda rows: [{k: v for k, v in r.items() if not k.startswith("rd/")} for r in comparable(rows)]
    assert comparable(a) == comparable(b)                                           # determinism
    assert any("rd/mean_abs_a" in r for r in a)                                     # the module did run
    assert strip_rd(a) == comparable(off)                                           # lambda = 0 == off
    assert comparable(off) != comparable(other)


def inproc_seeds(tmp_path, name, *argv):
    """A --num-seeds run in process: -> (the main run folder, the agents' folders in seed order)."""
    (tmp_path / name).mkdir()
    args = parse_in_process(R, SCRIPT, *argv)
    assert R.run_experiment(SCRIPT, args, R.train, "global_step", root=str(tmp_path / name / "runs")) == 0
    folders = sorted((tmp_path / name / "runs").iterdir())
    main = [f for f in folders if read_json(f / "config.json")["args"]["num_seeds"] > 1]
    assert len(main) == 1
    return main[0], sorted((f for f in folders if f != main[0]), key=lambda f: read_json(f / "config.json")["args"]["seed"])


def test_a_num_seeds_member_equals_its_single_run(tmp_path):
    flags = (*TINY, "--rd-input", "True", "--guidance", "td", "--rd-out", "shuffle", "--frame-stack", "2",
             "--max-episode-steps", "40", "--gamma", "0.5")
    main, members = inproc_seeds(tmp_path, "multi", *flags, "--num-seeds", "3", "--vary-rd-seed", "True")
    single = inproc(tmp_path, "single", *flags, "--seed", "2", "--rd-seed", "1")
    assert len(members) == 3 and [read_json(m / "config.json")["args"]["seed"] for m in members] == [1, 2, 3]
    assert comparable(read_metrics(members[1])) == comparable(read_metrics(single))
    assert comparable(read_metrics(members[0])) != comparable(read_metrics(members[1]))
    summary = read_json(main / "summary.json")
    finals = [read_json(m / "summary.json")["final_return_mean20"] for m in members]
    assert summary["num_seeds"] == 3 and summary["rd_seeds"] == [0, 1, 2]
    assert summary["final_return_mean20"]["mean"] == pytest.approx(np.mean(finals))
    assert summary["final_return_mean20"]["ci_low"] < summary["final_return_mean20"]["mean"]
    assert read_json(members[1] / "summary.json")["final_return_mean20"] == read_json(single / "summary.json")[
        "final_return_mean20"]


def test_track_offline_writes_a_wandb_run(run):
    proc, run_dir = run(SCRIPT, *TINY, "--track=True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))


@pytest.mark.parametrize("args, message", [
    (("--env", "pong"), "unknown --env 'pong'"),
    (("--rd-out", "noise"), "unknown --rd-out 'noise'"),
    (("--rd-dynamics", "gru"), "unknown --rd-dynamics 'gru'"),
    (("--guidance", "reward"), "unknown --guidance 'reward'"),
    (("--rd-init", "one"), "unknown --rd-init 'one'"),
    (("--total-timesteps", "0"), "--total-timesteps must be positive"),
    (("--num-envs", "0"), "--num-envs must be positive"),
    (("--num-steps", "-1"), "--num-steps must be positive"),
    (("--num-seeds", "0"), "--num-seeds must be positive"),
    (("--frame-stack", "0"), "--frame-stack must be positive"),
    (("--max-episode-steps", "0"), "--max-episode-steps must be positive"),
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
    (("--target-kl", "0.1", "--num-seeds", "2"), "needs --num-seeds 1"),
    (("--save-model", "True", "--num-seeds", "2"), "needs --num-seeds 1"),
    (("--rd-h-min", "0"), "need 0 < --rd-h-min < --rd-clamp"),
    (("--num-envs", "1", "--num-steps", "1000000000", "--total-timesteps", "1000000000"), "GiB"),
    (("--seed", "-1"), "--seed and --rd-seed must lie in [0, 2**32)"),
    (("--seed", "4294967295", "--num-seeds", "2"), "must stay below 2**32"),
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


def test_short_cartpole_run_learns(tmp_path):
    summary = read_json(inproc(tmp_path, "a", "--total-timesteps", "40000", "--rd", "False") / "summary.json")
    assert summary["final_return_mean20"] > 150                  # a random policy averages about 22


def test_sweep_config_parses_and_names_real_arguments():
    sweep = yaml.safe_load((REPO / "benchmark" / "rd_ppo_sweep.yaml").read_text())
    assert sweep["program"] == SCRIPT and sweep["method"] in ("grid", "random", "bayes")
    fields = set(R.Args.__dataclass_fields__)
    for name in sweep["parameters"]:
        assert name.replace("-", "_") in fields, name
    assert {"gamma", "rd-weight", "learning-rate"} <= set(sweep["parameters"])
    assert "${args}" in sweep["command"]


def test_plot_script_draws_mean_and_std(tmp_path):
    from conftest import run_script
    _, members = inproc_seeds(tmp_path, "a", *TINY, "--num-seeds", "2")
    (tmp_path / "runs").mkdir()
    for run_dir in members:                                        # the two agents' own folders
        run_dir.rename(tmp_path / "runs" / run_dir.name)
    proc = run_script(tmp_path, "benchmark/plot.py", "--runs", "runs", "--group-by", "env", "gamma",
                      "--out", "curves.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert "n=2" in proc.stdout                                   # both seeds in one group
