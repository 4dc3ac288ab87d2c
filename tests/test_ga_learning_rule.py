"""ga_learning_rule.py: oracle tests of the environments, the two rule families and the GA operators;
in-process runs of every branch (train, show), bad input, the NaN guard and a short learning run; two
subprocess runs for the real command line (a smoke run with W&B offline, a refused input)."""

import dataclasses
import json
import math
import os
import signal
import time

import numpy as np
import pytest
import torch
from conftest import assert_bad_input, parse_in_process, read_json, read_metrics, run_in_process

import ga_learning_rule as M

SCRIPT = "ga_learning_rule.py"
TINY = ("--population-size", "8", "--num-survivors", "4", "--num-elites", "1", "--generations", "2",
        "--evals-per-gen", "2", "--steps", "12", "--eval-lifetimes", "3", "--reeval-top", "1")
CPU = torch.device("cpu")


def make_args(**kw) -> M.Args:
    return M.finalize_args(M.Args(cuda=False, **kw))


# ------------------------------------------------------------------------------------------------
# Environments
# ------------------------------------------------------------------------------------------------
def foodworld(state7, rot_angle=M.SEED_FOOD_STEP):
    env = M.FoodWorld()
    s = torch.tensor([list(state7) + [math.cos(rot_angle), math.sin(rot_angle)]], dtype=torch.float64)
    env.reset(s)
    return env


def test_food_relocation_is_an_exact_rotation_onto_the_unit_circle():
    gen = torch.Generator().manual_seed(0)
    phi = torch.rand(50, generator=gen, dtype=torch.float64) * 2 * math.pi
    step = (torch.rand(50, generator=gen, dtype=torch.float64) - 0.5) * 2 * math.pi
    food = torch.stack([phi.cos(), phi.sin()], 1)
    new = M.relocate_food(food, torch.stack([step.cos(), step.sin()], 1))
    np.testing.assert_allclose(new.norm(dim=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(new, torch.stack([(phi + step).cos(), (phi + step).sin()], 1), atol=1e-12)
    # a point off the circle lands on it, in the rotated direction
    off = M.relocate_food(torch.tensor([[0.0, 3.0]], dtype=torch.float64),
                          torch.tensor([[0.0, 1.0]], dtype=torch.float64))     # +90 degrees
    np.testing.assert_allclose(off, [[-1.0, 0.0]], atol=1e-12)


def test_foodworld_step_by_hand_drag_walls_and_reward():
    env = foodworld([0.5, 1.95, 0.02, 0.08, 1.0, 0.0, 3.0])
    v0 = 3.0 - math.hypot(0.5, 1.95)
    reward = env.step(torch.tensor([[1.0, -0.5]], dtype=torch.float64))
    vx, vy = 0.9 * 0.02 + 0.01, 0.9 * 0.08 - 0.005                 # drag then force
    x = 0.5 + vx                                                   # y = 1.95 + vy = 2.017 > 2: wall
    np.testing.assert_allclose(env.s[0, :4], [x, 2.0, vx, -0.9 * vy], atol=1e-12)
    value = 3.0 - math.hypot(1.0 - x, 2.0)
    assert reward.item() == pytest.approx(value - v0, abs=1e-12)


def test_foodworld_eats_within_the_radius_and_relocates():
    food = (1 / math.sqrt(2), -1 / math.sqrt(2))
    env = foodworld([food[0] - 0.05, food[1], 0.0, 0.0, *food, 0.0])
    reward = env.step(torch.zeros(1, 2, dtype=torch.float64))
    assert env.s[0, 6].item() == 1.0
    angle = -math.pi / 4 + M.SEED_FOOD_STEP
    np.testing.assert_allclose(env.s[0, 4:6], [math.cos(angle), math.sin(angle)], atol=1e-12)
    new_dist = math.hypot(math.cos(angle) - env.s[0, 0].item(), math.sin(angle) - env.s[0, 1].item())
    assert reward.item() == pytest.approx((1 - new_dist) - (0 - 0.05), abs=1e-12)
    assert env.obs[0, 6].item() == 1.0
    blind = M.FoodWorld(observe_count=False)
    blind.reset(env.s.new_tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 4.0, 1.0, 0.0]]))
    assert blind.obs[0, 6].item() == 0.0 and blind.s[0, 6].item() == 4.0   # --observe-count False hides it
    # just outside the radius: nothing is eaten
    env = foodworld([food[0] - 0.11, food[1], 0.0, 0.0, *food, 0.0])
    env.step(torch.zeros(1, 2, dtype=torch.float64))
    assert env.s[0, 6].item() == 0.0


def test_observation_is_a_copy_the_step_does_not_change_what_the_actor_saw():
    """The aliasing bug: obs was the state tensor itself, and step() wrote it in place, so the trace (and the
    rule's layer-0 input) held s_{t+1}. Both the observation and the trace's input must stay what the actor saw."""
    for env_name, shape in (("foodworld", [7, 3, 2]), ("hiddenfood", [4, 3, 2])):
        args = make_args(env=env_name, actor_shape=shape, weight_init=0.2, steps=40, episodes=4)
        env = M.make_env(args)
        env.reset(env.initial_state(2, torch.Generator().manual_seed(0), CPU))
        actor = M.fresh_actor(shape, 2, 1, args, torch.Generator().manual_seed(1), CPU)
        for _ in range(3):
            obs = env.obs
            seen = obs.clone()
            action, trace = actor.forward(obs)
            env.step(torch.ones_like(action))
            assert torch.equal(obs, seen) and torch.equal(trace[0][0], seen.t())      # the trace is batch-last
        assert not torch.equal(env.obs, seen)                           # the state did move on


def test_hiddenfood_by_hand_reward_pays_eating_restarts_and_hides_the_food():
    env = M.HiddenFood(episode_len=5)
    env.reset(torch.tensor([[0.0, 0.25], [1.0, 0.0]]))
    assert env.obs.shape == (2, 4) and torch.equal(env.obs, torch.zeros(2, 4))   # the food is not observed
    r = env.step(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    # row 0: v = 0.01, p = (0, 0.01): progress 0.01 of the 0.9 normalisation; row 1: no move
    np.testing.assert_allclose(r.numpy(), [0.01 / 0.9, 0.0], atol=1e-6)
    env.s[0] = torch.tensor([0.0, 0.1, 0.0, 0.1])                  # one step from the food at (0, 0.25)
    r = env.step(torch.zeros(2, 2))                                  # v = 0.09 -> p = (0, 0.19), within 0.1: eaten
    np.testing.assert_allclose(r[0].item(), (0.15 - 0.06) / 0.9 + 1.0, atol=1e-5)
    assert torch.equal(env.s[0], torch.zeros(4)) and env.eats[0] == 1    # restart at the origin, at rest
    assert torch.equal(env.food, torch.tensor([[0.0, 0.25], [1.0, 0.0]]))   # the food stays
    env.s[1] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    for _ in range(3):
        env.step(torch.zeros(2, 2))
    assert torch.equal(env.s[1], torch.zeros(4))                      # step 5: the episode ends, a restart
    k = M.HiddenFood().initial_state(500, torch.Generator().manual_seed(0), CPU)
    np.testing.assert_allclose(k.norm(dim=1).numpy(), 1.0, rtol=1e-6)   # on the unit circle, all around it
    assert k[:, 0].min() < -0.99 and k[:, 0].max() > 0.99 and k[:, 1].min() < -0.99 and k[:, 1].max() > 0.99


def test_food_layouts_fixed_is_the_seeds_and_random_varies():
    gen = torch.Generator().manual_seed(0)
    fixed = M.FoodWorld("fixed").initial_state(4, gen, CPU)
    np.testing.assert_allclose(fixed[:, 4:6], [[1 / math.sqrt(2), -1 / math.sqrt(2)]] * 4, atol=1e-6)
    np.testing.assert_allclose(fixed[:, 7:9], [[0.3 / math.hypot(0.3, 0.95), 0.95 / math.hypot(0.3, 0.95)]] * 4,
                               atol=1e-6)
    rand = M.FoodWorld("random").initial_state(200, gen, CPU)
    np.testing.assert_allclose(rand[:, 4:6].norm(dim=1), 1.0, atol=1e-6)
    step = torch.atan2(rand[:, 8], rand[:, 7]).abs()
    assert step.min() >= math.pi / 3 - 1e-5 and step.max() <= math.pi + 1e-5
    assert rand[:, 4].std() > 0.5 and (rand[:, 8] > 0).any() and (rand[:, 8] < 0).any()


# ------------------------------------------------------------------------------------------------
# Learning rules
# ------------------------------------------------------------------------------------------------
def _cell(x, s, Ws, bs, Wo, bo):
    s2 = np.tanh(np.concatenate([s, x]) @ Ws + bs)
    return np.tanh(np.concatenate([s2, x]) @ Wo + bo), s2


def loop_mpnn_update(p, net, trace, r, S, lr, wl, sl, act_dim, n_id=0):
    """The docstring's message passing, one neuron and one synapse at a time (float64, one individual);
    n_id > 0: the one-hot identity of each action neuron is appended to both cells' inputs."""
    W, b, sg, ns, cs = net["W"], net["b"], net["s"], net["ns"], net["cs"]
    L = len(W)
    signal = np.zeros((W[-1].shape[1], S))
    for l in range(L - 1, -1, -1):
        x, z, zh, y = trace[l]
        n_in, n_out = W[l].shape
        new_sig = np.zeros((n_out, S))
        ident = lambda j: [float(l == L - 1 and j == q) for q in range(n_id)]
        for j in range(n_out):
            xn = np.array([z[j], zh[j], y[j], b[l][j], sg[l][j], *signal[j], r, float(l == L - 1 and j < act_dim),
                           *ident(j)])
            out, ns[l][j] = _cell(xn, ns[l][j], p["node_Ws"], p["node_bs"], p["node_Wo"], p["node_bo"])
            new_sig[j] = out[:S]
            b[l][j] = np.clip(b[l][j] + lr * out[S], -wl, wl)
            sg[l][j] = np.clip(sg[l][j] + lr * out[S + 1], 0, sl)
        msg = np.zeros((n_in, n_out, S))
        for i in range(n_in):
            if l == 0:
                pre = [0, 0, x[i], 0, 0]
            else:
                pre = [trace[l - 1][1][i], trace[l - 1][2][i], trace[l - 1][3][i], b[l - 1][i], sg[l - 1][i]]
            for j in range(n_out):
                xc = np.array([z[j], zh[j], y[j], b[l][j], sg[l][j], *pre, *new_sig[j], W[l][i, j], r, float(l == 0),
                               *ident(j)])
                out, cs[l][i, j] = _cell(xc, cs[l][i, j], p["conn_Ws"], p["conn_bs"], p["conn_Wo"], p["conn_bo"])
                msg[i, j] = out[:S]
                W[l][i, j] = np.clip(W[l][i, j] + lr * out[S], -wl, wl)
        signal = msg.mean(axis=1)


def random_actor(shape, B, gen, dtype=torch.float32):
    """An actor with random weights, batch-last (W (n_in, n_out, B), b and sigma (n, B)), as the script stores it."""
    layers = M.actor_layer_shapes(shape)
    return M.Actor([torch.randn(i, o, B, generator=gen, dtype=dtype) * 0.5 for i, o in layers],
                   [torch.randn(o, B, generator=gen, dtype=dtype) * 0.5 for o in shape[1:]],
                   [torch.rand(o, B, generator=gen, dtype=dtype) * 0.4 for o in shape[1:]], 1.0, 0.5)


@pytest.mark.parametrize("neuron_id", [False, True])
def test_mpnn_update_matches_a_loop_over_synapses(neuron_id):
    """The batched, batch-last update against the docstring's message passing one synapse at a time, in float64 to
    1e-12 (only the order of the float operations differs), over 4 steps with the recurrent states carried."""
    gen = torch.Generator().manual_seed(0)
    shape, S, sd, B, lr = [3, 4, 2], 2, 3, 3, 0.3                 # lr large enough that the clips act
    args = make_args(env="foodworld", actor_shape=[7, 8, 8, 2], signal_dim=S, state_dim=sd, rule_lr=lr,
                     neuron_id=neuron_id)
    n_id = 2 if neuron_id else 0
    shapes = M.mpnn_param_shapes(S, sd, n_id)
    f64 = torch.float64
    genome = torch.randn(B, sum(math.prod(s) for _, s in shapes), generator=gen, dtype=f64)
    rule = M.MessagePassingRule(genome, shape, args)
    actor = random_actor(shape, B, gen, f64)
    params = [{k: v[i].numpy() for k, v in M.unpack(genome, shapes).items()} for i in range(B)]
    nets = [{"W": [w[..., k].numpy().copy() for w in actor.W], "b": [x[:, k].numpy().copy() for x in actor.b],
             "s": [x[:, k].numpy().copy() for x in actor.sigma], "ns": [np.zeros((o, sd)) for o in shape[1:]],
             "cs": [np.zeros((i, o, sd)) for i, o in M.actor_layer_shapes(shape)]} for k in range(B)]
    w_start = [w.clone() for w in actor.W]
    for step in range(4):                                           # the recurrent states carry over
        _, trace = actor.forward(torch.randn(B, 3, generator=gen, dtype=f64),
                                 [torch.randn(B, n, generator=gen, dtype=f64) for n in shape[1:]])
        r = torch.randn(B, generator=gen, dtype=f64)
        for k in range(B):
            loop_mpnn_update(params[k], nets[k], [tuple(t[:, k].numpy() for t in layer) for layer in trace],
                             float(r[k]), S, lr, 1.0, 0.5, act_dim=2, n_id=n_id)
        rule.update(actor, trace, r)
        for k in range(B):
            for l in range(2):
                for mine, ref in ((actor.W, "W"), (actor.b, "b"), (actor.sigma, "s")):
                    np.testing.assert_allclose(mine[l][..., k].numpy(), nets[k][ref][l], rtol=0, atol=1e-12)
    assert all((w - w0).abs().max() > 0.1 for w, w0 in zip(actor.W, w_start))
    assert M.genome_size(make_args(neuron_id=False)) == 123          # the seed's parameter count
    assert M.genome_size(make_args()) == 123 + 2 * (2 + 3 + 2 + 2)   # + 2 id rows in each of the four matrices


def test_abcd_delta_by_hand():
    coef = torch.zeros(1, 3, 1, 8)                                  # 2 inputs + bias -> 1 output
    coef[0, 0, 0] = torch.tensor([1.0, 0.5, -0.2, 0.1, 2.0, 0.0, 0.0, 0.0])
    coef[0, 1, 0] = torch.tensor([0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 1.0, 0.0])
    coef[0, 2, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0])   # bias: D' only
    pre, post, m = torch.tensor([[0.4, -1.0]]), torch.tensor([[0.5]]), torch.tensor([0.25])
    dw, db = M.abcd_delta(coef.permute(3, 1, 2, 0), pre.t(), post.t(), m)   # the rule holds them batch-last
    w0 = 1.0 * 0.4 * 0.5 + 0.5 * 0.4 - 0.2 * 0.5 + 0.1 + 0.25 * (2.0 * 0.4 * 0.5)
    w1 = 0.3 + 0.25 * (1.0 * 0.5)
    np.testing.assert_allclose(dw[:, 0, 0].numpy(), [w0, w1], rtol=1e-6)
    assert db[0, 0].item() == pytest.approx(min(0.25 * 5.0, 1.0))   # clipped to 1


def test_hebbian_modulation_is_a_normalised_reward_surprise():
    args = make_args(env="foodworld", rule="abcd", rule_lr=0.1)
    rule = M.HebbianRule(torch.zeros(1, args.genome_size), args.actor_shape, args)
    rbar, var = 0.0, 0.0
    for r in (1.0, 0.0, 2.0, -1.0):
        m = rule.modulation(torch.tensor([r])).item()
        err = r - rbar
        assert m == pytest.approx(max(-3.0, min(3.0, err / (math.sqrt(var) + 1e-8))), rel=1e-5)
        rbar, var = rbar + 0.05 * err, var + 0.05 * (err * err - var)
    zero = M.HebbianRule(torch.zeros(1, args.genome_size), args.actor_shape, args)
    assert zero.modulation(torch.zeros(1)).item() == 0.0           # reward zeroed -> only the plain term


def test_abcd_rule_updates_actor_in_place_with_lr_and_clip():
    args = make_args(env="hiddenfood", actor_shape=[4, 2, 2], rule="abcd", rule_lr=0.1, weight_limit=0.15)
    genome = torch.zeros(1, args.genome_size)
    coefs = M.unpack(genome, M.abcd_param_shapes(args.actor_shape))
    coefs["coef0"][..., 3] = 1.0                                    # D = 1 everywhere in layer 0 -> +lr
    actor = M.fresh_actor(args.actor_shape, 1, 1, dataclasses.replace(args, weight_init=0.0), None, CPU)
    rule = M.HebbianRule(genome, args.actor_shape, args)
    _, trace = actor.forward(torch.ones(1, 4))
    rule.update(actor, trace, torch.zeros(1))
    np.testing.assert_allclose(actor.W[0].numpy(), 0.1)
    np.testing.assert_allclose(actor.W[1].numpy(), 0.0)
    rule.update(actor, trace, torch.zeros(1))
    np.testing.assert_allclose(actor.W[0].numpy(), 0.15)           # clipped at the weight limit


def test_gru_actor_matches_torch_grucell_and_reads_reward_and_last_action():
    shape, H, B = [4, 8, 2], 5, 3
    args = make_args(env="hiddenfood", evolve="gru", actor_shape=shape, gru_hidden=H)
    genome = torch.randn(B, args.genome_size, generator=torch.Generator().manual_seed(0)) * 0.7
    assert args.genome_size == 7 * 3 * H + H * 3 * H + 3 * H + H * 2 + 2
    actor = M.GRUActor(genome, shape, H, 1)
    p = M.unpack(genome, M.gru_param_shapes(shape, H))
    h, last_r, last_a = torch.zeros(B, H), torch.zeros(B, 1), torch.zeros(B, 2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        obs, r = torch.randn(B, 4, generator=gen), torch.randn(B, generator=gen)
        a, _ = actor.forward(obs)
        x = torch.cat([obs, last_r, last_a], 1)
        for i in range(B):
            cell = torch.nn.GRUCell(7, H)
            with torch.no_grad():                # torch's gates are [r, z, n]; ours [u (= z), c (= r), n]
                Wx, Wh, b = p["Wx"][i], p["Wh"][i], p["b"][i]
                cell.weight_ih.copy_(torch.cat([Wx[:, H:2 * H], Wx[:, :H], Wx[:, 2 * H:]], 1).T)
                cell.weight_hh.copy_(torch.cat([Wh[:, H:2 * H], Wh[:, :H], Wh[:, 2 * H:]], 1).T)
                cell.bias_ih.copy_(torch.cat([b[H:2 * H], b[:H], b[2 * H:]]))
                cell.bias_hh.zero_()
                h_i = cell(x[i:i + 1], h[i:i + 1])
            h[i] = h_i[0]
        ref = torch.tanh(torch.einsum("bh,bha->ba", h, p["Wa"]) + p["ba"])
        np.testing.assert_allclose(a.numpy(), ref.numpy(), atol=1e-5)
        actor.observe(r)
        last_r, last_a = r[:, None], a


def test_node_perturbation_rule_by_hand():
    args = make_args(env="hiddenfood", actor_shape=[4, 2], hand_lr=0.5, hand_sigma=0.5, hand_trace=0.5)
    rule = M.NodePerturbationRule(torch.zeros(1, 0), [2, 1], args)
    actor = M.Actor([torch.zeros(2, 1, 1)], [torch.zeros(1, 1)], [torch.full((1, 1), 0.5)], 10.0, 0.5)
    x = torch.tensor([[1.0, -2.0]])
    _, trace = actor.forward(x, [torch.tensor([[1.0]])])                # xi = 0.5 * 1 = 0.5
    rule.update(actor, trace, torch.tensor([2.0]))                     # rbar 0: adv = 0.5 * 2 = 1
    e_b = 0.5 / 0.25                                                    # xi / sigma^2
    np.testing.assert_allclose(actor.b[0].numpy(), [[e_b]])
    np.testing.assert_allclose(actor.W[0][:, 0, 0].numpy(), [e_b * 1.0, e_b * -2.0])
    assert rule.rbar.item() == pytest.approx(0.1)
    _, trace = actor.forward(x, [torch.tensor([[-1.0]])])               # xi = -0.5; trace: 0.5 * 2 - 2 = -1
    rule.update(actor, trace, torch.tensor([0.1]))                     # adv = 0.5 * (0.1 - 0.1) = 0
    np.testing.assert_allclose(actor.b[0].numpy(), [[e_b]])
    np.testing.assert_allclose(rule.eb[0].numpy(), [[0.5 * e_b - 2.0]])
    np.testing.assert_allclose(rule.eW[0][:, 0, 0].numpy(), [0.5 * e_b * 1.0 - 2.0, 0.5 * e_b * -2.0 + 4.0])


def test_hand_set_rule_learns_where_the_hidden_food_is():
    """The positive control: under the hand-set rule the last episode beats the first, the learned weights
    are good on the same layouts and not on fresh ones, and the learning needs the reward's contingency."""
    args = make_args(env="hiddenfood", actor_shape=[4, 8, 2], steps=240, episodes=6, weight_init=0.1,
                     eval_lifetimes=32)
    out = M.rule_controls(M.hand_rule_args(args), torch.zeros(1, 0), CPU, rule_name="nodepert")
    ep = out["best"]["episodes"]
    assert ep[-1] > ep[0] + 0.3
    assert out["frozen_same"]["return"] > out["best"]["return"] > out["plasticity_off"]["return"] + 1.0
    assert out["frozen_same"]["return"] > out["frozen_fresh"]["return"] + 2.0
    assert out["best"]["return"] > out["reward_shuffled"]["return"] + 1.0


def test_es_step_by_hand_and_it_climbs():
    mean, eps = torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pop, e = M.es_population(mean, 0.5, 4, torch.Generator().manual_seed(0))
    assert torch.equal(pop[:2], -pop[2:]) and torch.allclose(pop[:2], 0.5 * e)   # antithetic pairs
    fitness = torch.tensor([3.0, 0.0, 1.0, 2.0])                       # ranks 3, 0, 1, 2 -> u 0.5, -0.5, -1/6, 1/6
    new = M.es_step(mean, eps, fitness, 0.5, 1.0)
    np.testing.assert_allclose(new.numpy(), [(0.5 + 1 / 6) / 2, (-0.5 - 1 / 6) / 2], rtol=1e-5)
    target, gen, m = torch.tensor([1.0, -2.0, 0.5]), torch.Generator().manual_seed(1), torch.zeros(3)
    for _ in range(60):
        pop, e = M.es_population(m, 0.1, 20, gen)
        m = M.es_step(m, e, -((pop - target) ** 2).sum(1), 0.1, 0.05)
    assert (m - target).norm() < 0.3


def test_shuffled_reward_is_a_permutation_within_each_lifetime_not_the_reward():
    rewards = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    shuffled = M.shuffle_within_lifetime(rewards, torch.Generator().manual_seed(1))
    assert torch.equal(shuffled.sort(0).values, rewards.sort(0).values)     # same values, column by column
    assert (shuffled != rewards).float().mean() > 0.9


# ------------------------------------------------------------------------------------------------
# Lifetimes and the GA
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, evolve, rule", [("foodworld", "rule", "mpnn"), ("foodworld", "rule", "abcd"),
                                               ("hiddenfood", "rule", "mpnn"),
                                               ("foodworld", "actor", "mpnn"), ("hiddenfood", "actor", "mpnn"),
                                               ("hiddenfood", "gru", "mpnn"), ("hiddenfood", "rule", "abcd")])
def test_batched_population_equals_one_individual_at_a_time(env, evolve, rule):
    shape = {"foodworld": [7, 4, 2], "hiddenfood": [4, 3, 2]}[env]
    args = make_args(env=env, evolve=evolve, rule=rule, actor_shape=shape, steps=30, sigma_limit=0.3, sigma_init=0.2,
                     weight_init=0.1, episodes=3)
    pop = torch.randn(3, args.genome_size, generator=torch.Generator().manual_seed(1))
    gen = lambda: M.lifetime_generator(5, 0, CPU)
    batched = M.run_lifetimes(args, pop, 2, gen(), CPU)["returns"]
    grouped = M.run_lifetimes(dataclasses.replace(args, batch_rows=3), pop, 2, gen(), CPU)["returns"]
    np.testing.assert_allclose(grouped.numpy(), batched.numpy(), rtol=1e-5, atol=1e-5)   # --batch-rows: same numbers
    for i in range(3):
        single = M.run_lifetimes(args, pop[i:i + 1], 2, gen(), CPU)["returns"]
        np.testing.assert_allclose(batched[i].numpy(), single[0].numpy(), rtol=1e-5, atol=1e-5)
    assert batched.std(dim=0).max() > 1e-3                              # the individuals do differ
    same = M.run_lifetimes(args, pop[:1].repeat(4, 1), 2, gen(), CPU)["returns"]
    assert torch.equal(same, same[:1].expand(4, -1))                 # common random numbers across individuals
    other_gen = M.run_lifetimes(args, pop, 2, M.lifetime_generator(5, 1, CPU), CPU)["returns"]
    assert not torch.equal(other_gen, batched)                        # new lifetimes every generation


def test_next_generation_elitism_keeps_the_top_k_and_mutation_respects_its_probability():
    gen = torch.Generator().manual_seed(0)
    P, D, S, k = 400, 50, 40, 5
    pop = torch.randn(P, D, generator=gen)
    fitness = torch.randn(P, generator=gen)
    fitness[7] = -math.inf                                            # a NaN individual, sanitised
    new, ranking = M.next_generation(pop, fitness, S, k, 0.3, 0.1, 0.0, gen)
    top = torch.argsort(fitness, descending=True)
    assert torch.equal(ranking[:S], top[:S])
    assert torch.equal(new[:k], pop[top[:k]])                         # elites unchanged
    survivors = pop[top[:S]]
    changed, parents_ok = [], 0
    for row in new[k:]:
        diff = (row[None] != survivors)                               # genes that differ from each survivor
        parent = diff.sum(1).argmin()
        parents_ok += int(diff[parent].sum() < D)
        changed.append(diff[parent].float().mean().item())
    assert parents_ok == P - k                                        # every child descends from a survivor
    assert np.mean(changed) == pytest.approx(0.3, abs=0.02)           # mutation probability per gene
    assert not (new[k:] == pop[7]).all(1).any()                      # the worst is never a parent
    frozen, _ = M.next_generation(pop, fitness, S, k, 0.0, 0.1, 0.0, gen)
    assert all((row[None] == survivors).all(1).any() for row in frozen)


def test_uniform_crossover_mixes_two_parents():
    gen = torch.Generator().manual_seed(0)
    pop = torch.arange(40.0)[:, None].repeat(1, 200)                 # individual i is all i
    new, _ = M.next_generation(pop, -torch.arange(40.0), 2, 1, 0.0, 0.0, 1.0, gen)
    assert torch.equal(new[0], pop[0])
    assert set(new.unique().tolist()) == {0.0, 1.0}                  # only the two survivors' genes
    mixed = torch.tensor([bool((row == 0).any() and (row == 1).any()) for row in new[1:]])
    assert 10 <= mixed.sum() <= 30                                   # parent != mate about half the time
    share = (new[1:][mixed] == 0).float().mean()
    assert share == pytest.approx(0.5, abs=0.05)                     # genes taken with probability 1/2


def test_original_elitism_reproduces_the_seeds_grouped_copies():
    gen = torch.Generator().manual_seed(0)
    pop = torch.randn(100, 10, generator=gen)
    fitness = torch.randn(100, generator=gen)
    new, _ = M.next_generation(pop, fitness, 4, 0, 1.0, 0.1, 0.0, gen, elitism="original")
    top = torch.argsort(fitness, descending=True)
    assert torch.equal(new[:4], pop[top[0]].expand(4, -1))           # rows < S: 25 copies of #1 ...
    assert not (new[4:25] == pop[top[0]]).all(1).any()               # ... and the rest of its copies mutated
    assert (new[25:50] != pop[top[1]]).any(1).all()


def test_nan_fitness_is_the_worst_and_counted():
    f, n = M.sanitize_fitness(torch.tensor([1.0, float("nan"), -2.0, float("inf")]))
    assert n.item() == 2 and f[1] == -math.inf and f[3] == -math.inf and f[0] == 1.0
    returns = torch.tensor([[1.0, 3.0], [float("nan"), 5.0]])
    np.testing.assert_array_equal(M.aggregate_fitness(returns, "mean")[:1], [2.0])
    assert M.aggregate_fitness(returns, "min")[0] == 1.0 and torch.isnan(M.aggregate_fitness(returns, "mean")[1])


def test_hand_controller_eats_and_quarters_add_up():
    args = make_args(steps=200)
    res = M.run_lifetimes(args, None, 4, M.lifetime_generator(1, -1, CPU), CPU,
                          controller=lambda env: M.push_toward_food(env.obs))
    assert res["returns"].min() > 4.0                                  # several foods per lifetime
    np.testing.assert_allclose(res["quarters"].sum(-1), res["returns"], rtol=1e-5)


def test_every_heldout_control_is_what_it_says_and_not_the_evolved_individual():
    """Each control against an independent run of what it claims to be (a control replaced by the evolved
    individual fails here), and the controls differ from the evolved individual."""
    args = make_args(env="hiddenfood", actor_shape=[4, 3, 2], steps=40, episodes=4, weight_init=0.2, rule="abcd",
                     rule_lr=0.2, eval_lifetimes=6)
    genome = torch.randn(1, args.genome_size, generator=torch.Generator().manual_seed(3))
    out = M.heldout_controls(args, genome[0], CPU)
    k, fresh = 6, lambda: M.lifetime_generator(args.seed, -1, CPU)
    run = lambda a=args, g=genome, gen=None, **kw: M.run_lifetimes(a, g, k, gen or fresh(), CPU, **kw)
    first = run(keep_rewards=True)
    shuffled = M.shuffle_within_lifetime(first["rewards"], torch.Generator().manual_seed(args.seed + 777))
    expect = {"best": first, "reward_zeroed": run(zero_reward=True), "reward_shuffled": run(rule_rewards=shuffled),
              "plasticity_off": run(plastic=False),
              "frozen_fresh": run(gen=M.lifetime_generator(args.seed, -3, CPU), plastic=False, actor=first["actor"]),
              "frozen_same": run(plastic=False, actor=first["actor"])}
    hand = M.hand_rule_args(args)
    hand_first = run(hand, torch.zeros(1, 0), rule_name="nodepert", keep_rewards=True)
    expect["hand_rule/best"] = hand_first
    expect["hand_rule/plasticity_off"] = run(hand, torch.zeros(1, 0), plastic=False)
    expect["oracle"] = run(g=None, controller=M.hidden_food_oracle)
    for key, res in expect.items():
        assert out[key]["return"] == pytest.approx(float(res["returns"].mean()), abs=1e-5), key
        assert out[key]["episodes"] == pytest.approx(res["episodes"][0].mean(0).tolist(), abs=1e-5), key
    for key in ("reward_zeroed", "reward_shuffled", "plasticity_off", "frozen_fresh", "random_rule",
                "hand_rule/best", "hand_rule/reward_shuffled", "hand_rule/frozen_fresh", "oracle", "zero_action"):
        assert abs(out[key]["return"] - out["best"]["return"]) > 1e-3, key
    assert abs(out["plasticity_off"]["return"] - out["zero_action"]["return"]) > 0.1   # a fresh actor does act
    assert out["zero_action"]["return"] == 0.0 and out["oracle"]["return"] > 2.0           # 40 steps: one trip


def test_gru_controls_feed_it_zero_and_shuffled_rewards():
    args = make_args(env="hiddenfood", evolve="gru", actor_shape=[4, 3, 2], steps=40, episodes=4, eval_lifetimes=4)
    genome = torch.randn(1, args.genome_size, generator=torch.Generator().manual_seed(0)) * 2
    out = M.rule_controls(args, genome, CPU)
    assert set(out) == {"best", "reward_zeroed", "reward_shuffled"}
    fresh = M.lifetime_generator(args.seed, -1, CPU)
    zero = M.run_lifetimes(args, genome, 4, fresh, CPU, zero_reward=True)
    assert out["reward_zeroed"]["return"] == pytest.approx(float(zero["returns"].mean()), abs=1e-6)
    assert len({round(out[k]["return"], 6) for k in out}) == 3


def test_champion_is_the_best_of_the_top_k_on_fresh_validation_lifetimes():
    args = make_args(env="hiddenfood", evolve="actor", actor_shape=[4, 2], steps=40, episodes=2, eval_lifetimes=8)
    cands = torch.randn(6, args.genome_size, generator=torch.Generator().manual_seed(0)) * 2
    champion, scores = M.pick_champion(args, cands, CPU)
    val = M.run_lifetimes(args, cands, 8, M.lifetime_generator(args.seed, -2, CPU), CPU)["returns"].mean(1)
    np.testing.assert_allclose(scores, val.numpy(), rtol=1e-6)
    assert torch.equal(champion, cands[int(val.argmax())]) and int(val.argmax()) != 0
    train = M.run_lifetimes(args, cands, 8, M.lifetime_generator(args.seed, 0, CPU), CPU)["returns"].mean(1)
    held = M.run_lifetimes(args, cands, 8, M.lifetime_generator(args.seed, -1, CPU), CPU)["returns"].mean(1)
    assert not torch.equal(val, train) and not torch.equal(val, held)     # neither training nor test lifetimes


# ------------------------------------------------------------------------------------------------
# Runs: in process (train and show through run_experiment), one subprocess for the command line
# ------------------------------------------------------------------------------------------------
def train_in_process(tmp_path, *argv):
    """(exit status, run folder) of train through run_experiment, in a fresh folder under tmp_path."""
    cwd = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    cwd.mkdir()
    return run_in_process(M, SCRIPT, "generation", cwd, *argv)


def show_in_process(tmp_path, *argv):
    """(exit status, run folder) of --show: parse, then run_experiment with show as the stage."""
    cwd = tmp_path / f"show{len(list(tmp_path.iterdir()))}"
    cwd.mkdir()
    saved = os.getcwd()
    os.chdir(cwd)
    try:
        args = parse_in_process(M, SCRIPT, *argv)
        code = M.run_experiment(SCRIPT, args, M.show, "step", root=str(cwd / "runs"))
    finally:
        os.chdir(saved)
    (run_dir,) = (cwd / "runs").iterdir()
    return code, run_dir


def check_outputs(run_dir, extra):
    rows = read_metrics(run_dir)
    assert [r["generation"] for r in rows] == [0, 1]
    for key in ("fitness/best", "fitness/mean", "fitness/elite_mean", "fitness/nan_count",
                "fitness/best_first_quarter", "fitness/best_last_quarter", "time/individual_steps_per_s"):
        assert key in rows[-1]
    assert all(r["fitness/best"] >= r["fitness/elite_mean"] >= r["fitness/mean"] - 1e-6 for r in rows)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "ok" and summary["generations_done"] == 2
    assert summary["last_generation"] == 1 and summary["rows_logged"] == 2
    controls = summary["heldout"]
    assert "best" in controls and "zero_action" in controls
    assert ("random_rule" in controls) == ("actor" not in extra and "gru" not in extra)
    assert ("push_toward_food" in controls) == ("--env" not in extra)
    assert ("hand_rule/best" in controls) == ("oracle" in controls) == ("hiddenfood" in extra)
    assert len(summary["champion_validation_returns"]) == 1 + ("es" in extra)     # --reeval-top 1 of TINY (+ ES mean)
    if "hiddenfood" in extra:
        assert len(controls["best"]["episodes"]) == int(extra[extra.index("--episodes") + 1])
    saved = json.loads((run_dir / "best" / "gen0001.json").read_text())
    assert saved["fitness"] == pytest.approx(rows[-1]["fitness/best"])
    assert len(saved["genome"]) == summary["genome_size"] == saved["args"]["genome_size"]
    for png in ("fitness.png", "trajectory.png"):
        assert (run_dir / png).stat().st_size > 1000
    return rows, summary


@pytest.mark.parametrize("extra", [
    ("--env", "hiddenfood", "--actor-shape", "4", "3", "2", "--rule", "abcd", "--optimizer", "es", "--episodes", "3"),
    ("--env", "hiddenfood", "--actor-shape", "4", "3", "2", "--evolve", "gru", "--gru-hidden", "3", "--episodes", "2"),
    ("--rule", "mpnn", "--food-layout", "fixed", "--crossover-rate", "0.5", "--fitness-agg", "min",
     "--observe-count", "False"),
    ("--env", "hiddenfood", "--actor-shape", "4", "4", "2", "--rule", "abcd", "--episodes", "2"),
    ("--env", "hiddenfood", "--actor-shape", "4", "4", "2", "--evolve", "actor", "--sigma-limit", "0.5",
     "--sigma-init", "0.1", "--elitism", "original", "--episodes", "2"),
    ("--actor-shape", "7", "4", "2", "--sigma-limit", "0.3"),
])
def test_run_writes_every_output(tmp_path, extra):
    code, run_dir = train_in_process(tmp_path, *TINY, *extra)
    assert code == 0
    config = read_json(run_dir / "config.json")
    assert config["x_axis"] == "generation" and config["args"]["population_size"] == 8
    check_outputs(run_dir, extra)


def test_command_line_run_with_track_offline_matches_in_process(run, tmp_path):
    """The real CLI path (subprocess, W&B offline) gives the numbers of the same run in process."""
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    proc, a = run(SCRIPT, *TINY, "--track", "True", "--wandb-project-name", "test")
    assert proc.returncode == 0, proc.stderr
    assert read_json(a / "config.json")["argv"][1:] == [*TINY, "--track", "True", "--wandb-project-name", "test"]
    check_outputs(a, ())
    _, b = train_in_process(tmp_path, *TINY)
    assert strip(read_metrics(a)) == strip(read_metrics(b))
    assert read_json(a / "summary.json")["heldout"] == read_json(b / "summary.json")["heldout"]
    offline = list((a / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))


def saved_individual(path, genome=None, **kw) -> dict:
    """Write a best/genNNNN.json like a run does (random genome unless given); returns its content."""
    args = make_args(**kw)
    if genome is None:
        genome = torch.randn(args.genome_size, generator=torch.Generator().manual_seed(0)).tolist()
    saved = {"generation": 7, "fitness": 1.5, "genome": genome, "args": vars(args)}
    path.write_text(json.dumps(saved))
    return saved


def test_show_replays_a_saved_individual_as_a_gif(tmp_path):
    saved = saved_individual(tmp_path / "gen0007.json", rule="abcd")
    code, show_dir = show_in_process(tmp_path, "--show", str(tmp_path / "gen0007.json"), "--steps", "12",
                                     "--gif-stride", "3", "--rule", "mpnn")
    assert code == 0
    gif = (show_dir / "show.gif").read_bytes()
    assert gif[:6] in (b"GIF89a", b"GIF87a") and len(gif) > 1000
    assert (show_dir / "trajectory.png").stat().st_size > 1000
    config = read_json(show_dir / "config.json")
    assert config["args"]["rule"] == "abcd" and config["x_axis"] == "step"    # structure comes from the file
    summary = read_json(show_dir / "summary.json")
    args = dataclasses.replace(make_args(rule="abcd"), steps=12)
    expected = M.run_lifetimes(args, torch.tensor(saved["genome"])[None], 1, M.lifetime_generator(1, -1, CPU), CPU)
    assert summary["return"] == pytest.approx(expected["returns"].item(), abs=1e-5)
    assert summary["status"] == "ok" and summary["saved_fitness"] == 1.5 and "foods_eaten" in summary


def test_show_interrupted_keeps_its_summary(tmp_path, monkeypatch, capsys):
    saved_individual(tmp_path / "gen0007.json")

    def killed(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("the signal did not interrupt the replay")

    monkeypatch.setattr(M, "write_gif", killed)
    code, show_dir = show_in_process(tmp_path, "--show", str(tmp_path / "gen0007.json"), "--steps", "8")
    assert code == 143 and "interrupted by SIGTERM" in capsys.readouterr().err
    summary = read_json(show_dir / "summary.json")
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"


def test_evolving_the_actor_improves_fitness(tmp_path):
    code, run_dir = train_in_process(tmp_path, "--evolve", "actor", "--population-size", "200", "--num-survivors",
                                     "20", "--num-elites", "2", "--generations", "12", "--steps", "100",
                                     "--food-layout", "fixed", "--evals-per-gen", "1", "--mutation-probability", "1.0",
                                     "--eval-lifetimes", "4")
    assert code == 0
    rows = read_metrics(run_dir)
    assert rows[-1]["fitness/mean"] > rows[0]["fitness/mean"] + 1.0
    assert rows[-1]["fitness/best"] > rows[0]["fitness/best"] + 0.5


# ------------------------------------------------------------------------------------------------
# NaN: counted as the worst fitness; a population that is all NaN stops with its rows kept
# ------------------------------------------------------------------------------------------------
def test_some_nan_fitness_is_counted_and_the_run_goes_on(tmp_path, monkeypatch):
    real = M.aggregate_fitness
    calls = {"n": 0}

    def half_nan(returns, how):                # from generation 1 on, the last half of the population is NaN
        out = real(returns, how)
        calls["n"] += 1
        if calls["n"] > 1 and out.shape[0] == 8:
            out[4:] = float("nan")
        return out

    monkeypatch.setattr(M, "aggregate_fitness", half_nan)
    code, run_dir = train_in_process(tmp_path, *TINY, "--generations", "3")
    assert code == 0
    rows = read_metrics(run_dir)
    assert [r["fitness/nan_count"] for r in rows] == [0, 4, 4]
    assert all(math.isfinite(r["fitness/best"]) and math.isfinite(r["fitness/mean"]) for r in rows)


def test_nan_rule_state_stops_with_every_finished_row_kept(tmp_path, monkeypatch, capsys):
    """NaN in the rule's recurrent cells from generation 1 on: weights, actions, rewards and every
    fitness become NaN; the run stops after logging that generation, and every file is strict JSON."""
    real_cell, real_eval = M.tanh_of_half_, M.evaluate_generation
    poison = {"on": False}

    def evaluate(args, pop, g, device):
        poison["on"] = g >= 1
        return real_eval(args, pop, g, device)

    def cell(u):                                                     # the cells' nonlinearity
        out = real_cell(u)
        return out.mul_(float("nan")) if poison["on"] else out

    monkeypatch.setattr(M, "evaluate_generation", evaluate)
    monkeypatch.setattr(M, "tanh_of_half_", cell)
    code, run_dir = train_in_process(tmp_path, *TINY, "--generations", "4")
    assert code == 1 and "stopped: every individual had a non-finite fitness at generation 1" in capsys.readouterr().err
    rows = read_metrics(run_dir)
    assert [r["generation"] for r in rows] == [0, 1]
    assert rows[0]["fitness/nan_count"] == 0 and math.isfinite(rows[0]["fitness/best"])
    assert rows[1]["fitness/nan_count"] == 8 and rows[1]["fitness/best"] is None and rows[1]["fitness/mean"] is None
    text = (run_dir / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary["status"].startswith("every individual") and "heldout" not in summary
    assert summary["last_generation"] == 1 and summary["rows_logged"] == 2 and summary["generations_done"] == 2
    assert read_json(run_dir / "best" / "gen0001.json")["fitness"] is None
    assert (run_dir / "fitness.png").exists()


def test_non_finite_heldout_return_is_a_non_ok_status(tmp_path, monkeypatch):
    real = M.heldout_controls

    def nan_best(*a, **kw):
        out = real(*a, **kw)
        out["best"]["return"] = float("nan")
        return out

    monkeypatch.setattr(M, "heldout_controls", nan_best)
    code, run_dir = train_in_process(tmp_path, *TINY)
    summary = read_json(run_dir / "summary.json")
    assert code == 1 and summary["status"] == "non-finite held-out return (best)"
    assert summary["heldout"]["best"]["return"] is None and len(read_metrics(run_dir)) == 2


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, no run folder
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (("--actor-shape", "6", "8", "2"), "must start with 7"),
    (("--actor-shape", "7"), "--actor-shape needs at least two positive sizes"),
    (("--actor-shape", "7", "0", "2"), "--actor-shape needs at least two positive sizes"),
    (("--env", "hiddenfood"), "must start with 4 (observation) and end with 2"),
    (("--env", "pong"), "unknown --env 'pong'"),
    (("--rule", "backprop"), "unknown --rule 'backprop'"),
    (("--evolve", "critic"), "unknown --evolve 'critic'"),
    (("--food-layout", "spiral"), "unknown --food-layout 'spiral'"),
    (("--elitism", "none"), "unknown --elitism 'none'"),
    (("--fitness-agg", "max"), "unknown --fitness-agg 'max'"),
    (("--population-size", "0"), "--population-size must be positive"),
    (("--num-survivors", "0"), "--num-survivors must be positive"),
    (("--num-survivors", "2000"), "--num-survivors 2000 exceeds --population-size 1000"),
    (("--num-elites", "200"), "--num-elites must lie in [0, --num-survivors = 100]"),
    (("--num-elites", "-1"), "--num-elites must lie in [0, --num-survivors = 100]"),
    (("--generations", "0"), "--generations must be positive"),
    (("--evals-per-gen", "0"), "--evals-per-gen must be positive"),
    (("--steps", "-5"), "--steps must be positive"),
    (("--eval-lifetimes", "0"), "--eval-lifetimes must be positive"),
    (("--signal-dim", "0"), "--signal-dim must be positive"),
    (("--state-dim", "-1"), "--state-dim must be positive"),
    (("--torch-threads", "0"), "--torch-threads must be positive"),
    (("--gif-stride", "0"), "--gif-stride must be positive"),
    (("--seed", "-1"), "--seed must lie in [0, 2**32 - 1]"),
    (("--mutation-probability", "1.5"), "--mutation-probability must lie in [0, 1]"),
    (("--mutation-probability", "nan"), "--mutation-probability must lie in [0, 1]"),
    (("--crossover-rate", "-0.1"), "--crossover-rate must lie in [0, 1]"),
    (("--mutation-strength", "-0.1"), "--mutation-strength must be a finite number >= 0"),
    (("--mutation-strength", "inf"), "--mutation-strength must be a finite number >= 0"),
    (("--init-std", "nan"), "--init-std must be a finite number >= 0"),
    (("--weight-limit", "0"), "--weight-limit must be a finite number > 0"),
    (("--rule-lr", "0"), "--rule-lr must be a finite number > 0"),
    (("--rule-lr", "-0.01"), "--rule-lr must be a finite number > 0"),
    (("--env", "cartpole"), "unknown --env 'cartpole'"),
    (("--weight-init", "-1"), "--weight-init must be a finite number >= 0"),
    (("--sigma-limit", "inf"), "--sigma-limit must be a finite number >= 0"),
    (("--sigma-init", "0.5"), "--sigma-init 0.5 exceeds --sigma-limit 0.0"),
    (("--population-size", "100000000"), "a population of 100000000 x 2 lifetimes (genome 141) needs about"),
    (("--evolve", "gru", "--gru-hidden", "0"), "--gru-hidden must be positive"),
    (("--optimizer", "cma"), "unknown --optimizer 'cma'"),
    (("--optimizer", "es", "--population-size", "101", "--num-survivors", "10"), "--population-size must be even"),
    (("--es-sigma", "0"), "--es-sigma must be a finite number > 0"),
    (("--hand-trace", "1.0"), "--hand-trace must lie in [0, 1)"),
    (("--env", "hiddenfood", "--actor-shape", "4", "2", "--steps", "100", "--episodes", "3"),
     "--steps 100 must be a multiple of --episodes 3"),
    (("--reeval-top", "0"), "--reeval-top must be positive"),
    (("--actor-shape", "7", "200000", "2", "--population-size", "100000", "--num-survivors", "10"), "GiB"),
    (("--eval-lifetimes", "100000"), "the held-out random-rule control"),
    (("--show", "missing.json"), "is not a file"),
    (("--show", "."), "is not a file"),
    (("--population-size", "abc"), None),                            # tyro's parse box
    (("--no-such-flag", "1"), None),
])
def test_bad_input_fails_fast_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    assert_bad_input(M, SCRIPT, argv, message, capsys, tmp_path, monkeypatch)


def _edit(saved, **changes):
    out = json.loads(json.dumps(saved))
    for key, value in changes.items():
        if key.startswith("args_"):
            out["args"][key[5:]] = value
        elif value is _DELETE:
            del out[key]
        else:
            out[key] = value
    return json.dumps(out)


_DELETE = object()
_GOOD = {"generation": 3, "fitness": 0.5, "genome": [0.1] * 123, "args": vars(make_args(neuron_id=False))}
_NO_RULE = json.loads(json.dumps(_GOOD))
del _NO_RULE["args"]["rule"]


@pytest.mark.parametrize("content, extra, message", [
    ("", (), "is not valid JSON"),
    ('{"genome": [1, 2', (), "is not valid JSON"),                  # truncated
    ("\xff\xfe{}", (), "is not valid JSON"),
    ("[1, 2, 3]", (), "is not a saved individual"),
    ('{"genome": [1.0], "fitness": 1.0}', (), "is not a saved individual"),
    (_edit(_GOOD, genome=_DELETE), (), "lacks genome"),
    (_edit(_GOOD, fitness=_DELETE), (), "lacks fitness"),
    (json.dumps(_NO_RULE), (), "lacks args.rule"),
    (_edit(_GOOD, genome=[0.1] * 122), (), "its genome has 122 numbers, but its arguments"),
    (_edit(_GOOD, genome=[0.1] * 124), (), "need 123"),
    (_edit(_GOOD, args_rule="abcd"), (), "its genome has 123 numbers, but its arguments (foodworld, rule abcd"),
    (_edit(_GOOD, genome=[]), (), "genome must be a non-empty list of numbers"),
    (_edit(_GOOD, genome="0.1 0.2"), (), "genome must be a non-empty list of numbers"),
    (_edit(_GOOD, genome=[0.1] * 122 + ["x"]), (), "genome[122] = 'x' is not a finite number"),
    (_edit(_GOOD, genome=[0.1] * 122 + [None]), (), "genome[122] = None is not a finite number"),
    (_edit(_GOOD).replace("0.1]", "NaN]"), (), "genome[122] = nan is not a finite number"),
    (_edit(_GOOD, fitness="high"), (), "fitness = 'high' is not a number or null"),
    (_edit(_GOOD, args_actor_shape="7 8 8 2"), (), "args.actor_shape = '7 8 8 2' is not a list"),
    (_edit(_GOOD, args_signal_dim=1.5), (), "args.signal_dim = 1.5 is not a int"),
    (_edit(_GOOD, args_observe_count=1), (), "args.observe_count = 1 is not a bool"),
    (_edit(_GOOD, args_actor_shape=[6, 8, 2]), (), "holds arguments this script refuses: --actor-shape [6, 8, 2]"),
    (_edit(_GOOD, args_rule_lr=-1), (), "holds arguments this script refuses: --rule-lr must be"),
    (_edit(_GOOD, args_env="pong"), (), "holds arguments this script refuses: unknown --env 'pong'"),
    (_edit(_GOOD), ("--steps", "10", "--gif-stride", "20"), "--gif-stride 20 exceeds --steps 10"),
    (_edit(_GOOD), ("--steps", "100000", "--gif-stride", "1"), "a GIF of 100000 frames"),
])
def test_bad_show_file_fails_fast_with_one_line(content, extra, message, capsys, tmp_path, monkeypatch):
    path = tmp_path / "saved.json"
    path.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    assert_bad_input(M, SCRIPT, ("--show", str(path), *extra), message, capsys, tmp_path, monkeypatch)


def test_a_good_show_file_passes_the_checks(tmp_path, monkeypatch):
    (tmp_path / "saved.json").write_text(_edit(_GOOD))
    monkeypatch.chdir(tmp_path)
    args = parse_in_process(M, SCRIPT, "--show", "saved.json", "--rule", "abcd", "--weight-limit", "2")
    assert args.rule == "mpnn" and args.weight_limit == 4.0 and args.genome_size == 123   # from the file
    assert not (tmp_path / "runs").exists()


def test_bad_input_in_a_subprocess_leaves_no_folder(run, tmp_path):
    proc, run_dir = run(SCRIPT, "--num-survivors", "2000")
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "ga_learning_rule.py: error: --num-survivors 2000 exceeds --population-size 1000"
    (tmp_path / "bad.json").write_text('{"genome": [0.1, 0.2')
    proc, run_dir = run(SCRIPT, "--show", str(tmp_path / "bad.json"))
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ga_learning_rule.py: error: --show") and "is not valid JSON" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
