"""An unbatched, plain-torch DQN on the corridor in the original's structure (python corridor,
python replay ring, nn.Sequential, torch.optim.Adam, python dicts for the selective-pressure
tables, a per-sample loop for beta), used as the oracle for the batched scripts.

It draws its random numbers from one torch.Generator in the scripts' order, so that a script run
with a single member must reproduce it step for step:
    init: rand(1, P) (order_parameter.init_theta);  pre-fill step: rand(1), randint(2, (1,));
    env step: rand(1), randint(2, (1,));  gradient step: randint(size, (1, batch)).
"""

import math

import numpy as np
import torch
import torch.nn as nn

import order_parameter as op


def member_net(theta_m: torch.Tensor, layout, hidden: int) -> nn.Sequential:
    """nn.Sequential copy of one member's (unpadded) network from its flat parameters."""
    p = op.unflatten(theta_m.unsqueeze(0), layout)
    d, A = p["W1"].shape[1], p["W3"].shape[2]
    net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, A))
    with torch.no_grad():
        for lin, w, b in ((net[0], "W1", "b1"), (net[2], "W2", "b2"), (net[4], "W3", "b3")):
            lin.weight.copy_(p[w][0, :lin.in_features, :lin.out_features].T)
            lin.bias.copy_(p[b][0, :lin.out_features])
    return net


def reference_dqn(N, H, episodes, prefill, batch, buffer, seed, max_steps, lr, grad_steps, clip=None,
                  order_every=None, probes=50, pressure=None):
    """pressure = dict(alpha, gamma_u, kappa, uncertainty in {"variance", "constant"}) or None.
    Returns {"returns", "order" (gradient_magnitude at checkpoints), "crystallization", "beta_mean"}."""
    gen = torch.Generator().manual_seed(seed)
    layout = op.mlp_layout(1, H, 2)
    theta = op.init_theta(torch.tensor([H]), 1, H, 2, gen)
    net, tgt = member_net(theta[0], layout, H), member_net(theta[0], layout, H)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ring, ptr = [None] * buffer, 0                                 # FIFO of (cell, a, r, next cell, done)
    V_sum, V_cnt, U = {}, {}, {}                                   # the original's dict tables
    C, avg = 0.5, []

    def add(row):
        nonlocal ptr
        ring[ptr], ptr = row, (ptr + 1) % buffer

    def env_step(p, steps, a):
        p = max(p - 1, 0) if a == 0 else p + 1
        steps += 1
        goal = p == N - 1
        return p, steps, (10.0 if goal else -1.0), goal or steps >= max_steps

    p = steps = 0
    for _ in range(prefill):
        coin = torch.rand(1, generator=gen)[0] < 0.5
        ra = int(torch.randint(0, 2, (1,), generator=gen)[0])
        a = ra if coin else 1
        p2, steps, r, done = env_step(p, steps, a)
        add((p, a, r, p2, float(done)))
        p, steps = (0, 0) if done else (p2, steps)
    out = {"returns": [], "order": [], "crystallization": [], "beta_mean": []}
    eps = 1.0
    for e in range(episodes):
        p = steps = 0
        ret, done, betas = 0.0, False, []
        while not done:
            with torch.no_grad():
                q = net(torch.tensor([[p / N]]))
            explore = torch.rand(1, generator=gen)[0] < eps
            ra = int(torch.randint(0, 2, (1,), generator=gen)[0])
            a = ra if explore else int(q.argmax())
            if pressure is not None:                                # V: running mean of max_a Q(s_t, a)
                V_sum[p] = V_sum.get(p, 0.0) + float(q.max())
                V_cnt[p] = V_cnt.get(p, 0) + 1
            p2, steps, r, done = env_step(p, steps, a)
            ret += r
            add((p, a, r, p2, float(done)))
            p = p2
            size = buffer - ring.count(None)
            if size <= batch:
                continue
            for _ in range(grad_steps):
                idx = torch.randint(0, size, (1, batch), generator=gen)[0].tolist()
                cells = [ring[i][0] for i in idx]
                s, a_, r_, s2, d = (torch.tensor([float(ring[i][k]) for i in idx]) for k in range(5))
                s, s2, a_ = s / N, s2 / N, a_.long()
                with torch.no_grad():
                    y = r_ + 0.99 * tgt(s2[:, None]).max(1).values * (1 - d)
                q_all = net(s[:, None])
                err2 = (q_all.gather(1, a_[:, None]).squeeze(1) - y) ** 2
                if pressure is None:
                    loss = err2.mean()
                else:
                    w = []
                    for i, k in enumerate(cells):                   # the original's per-sample loop
                        v = V_sum[k] / V_cnt[k] if k in V_sum else 0.0
                        u = U.get(k, 1.0)
                        u_new = float(torch.var(q_all[i].detach())) if pressure["uncertainty"] == "variance" else 1.0
                        U[k] = u_new if k not in U else 0.8 * U[k] + 0.2 * u_new
                        w.append(math.exp(pressure["alpha"] * v - pressure["gamma_u"] * u) * C)
                    w = torch.tensor(w)
                    betas.append(float(w.mean()))
                    loss = (w * err2).mean()
                opt.zero_grad()
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                opt.step()
        if e % 10 == 0:
            tgt.load_state_dict(net.state_dict())
        eps = max(0.01, eps * 0.99)
        out["returns"].append(ret)
        if order_every is not None and e % order_every == 0:
            x = torch.linspace(0, 1, probes).view(-1, 1).requires_grad_(True)
            net(x).sum().backward()
            out["order"].append(float(x.grad.norm()))
            opt.zero_grad()
        if pressure is not None:
            if e >= 10:                                             # the original's crystallization rule
                m = float(np.mean(out["returns"][-10:]))
                imp = (m - avg[-1]) / abs(avg[-1] + 1e-8) if avg else 0.0
                avg.append(m)
                C = max(0.1, min(2.0, C + pressure["kappa"] * imp))
            out["crystallization"].append(C)
            out["beta_mean"].append(float(np.mean(betas)) if betas else 0.0)
    return out
