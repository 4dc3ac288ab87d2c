"""An unbatched, plain-torch DQN on the corridor in the original's structure (python corridor,
python replay ring, nn.Sequential, torch.optim.Adam, python dicts for the selective-pressure
tables, a per-sample loop for beta), used as the oracle for the batched scripts.

It draws its random numbers from one torch.Generator in the scripts' order and shapes, so that a
script run with the same members must reproduce it step for step (rows = members in the batch):
    init: rand(M, P) (order_parameter.init_theta);  pre-fill step: rand(M), randint(2, (M,));
    env step: rand(rows), randint(2, (rows,));  gradient step: randint(size, (rows, batch)).
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


class _Member:
    """One member of reference_lockstep: its corridor, replay ring, nn.Sequential nets, Adam, tables."""

    def __init__(self, theta_m, layout, N, H, lr, buffer, pressure):
        self.N, self.H, self.pressure = N, H, pressure
        self.net, self.tgt = member_net(theta_m, layout, H), member_net(theta_m, layout, H)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.ring, self.ptr = [None] * buffer, 0
        self.p = self.steps = 0
        self.eps, self.episode, self.ret = 1.0, 0, 0.0
        self.V_sum, self.V_cnt, self.U, self.C, self.avg = {}, {}, {}, 0.5, []
        self.g_norms, self.betas, self.clipped = [], [], []
        self.out = {"returns": [], "td_norm": [], "order": [], "crystallization": [], "beta_mean": [],
                    "clip_fraction": []}
        self.clip_total = self.step_total = 0

    def add(self, row):
        self.ring[self.ptr], self.ptr = row, (self.ptr + 1) % len(self.ring)

    def env_step(self, a, max_steps):
        """The corridor: returns (cell before, reward, next cell, terminal-or-time-out) and restarts."""
        p0 = self.p
        p = max(p0 - 1, 0) if a == 0 else p0 + 1
        self.steps += 1
        goal = p == self.N - 1
        done = goal or self.steps >= max_steps
        self.p, self.steps = (0, 0) if done else (p, self.steps)
        return p0, (10.0 if goal else -1.0), p, done

    def flat_params(self):
        return torch.cat([t.detach().flatten() for t in self.net.parameters()])


def reference_lockstep(members, episodes, prefill, batch, buffer, seed, max_steps, lr, grad_steps, clip=None,
                       order_every=None, probes=50, compaction=False, target_every=10, c_window=10):
    """Several members in lockstep, one torch.Generator, each member in plain torch with python
    data structures, drawing the scripts' batched random numbers (one draw of shape [rows] per tick
    and [rows, batch] per gradient step, rows = the members still in the batch). members: list of
    dict(N, H, pressure) with pressure None or dict(alpha, gamma_u, kappa, weighted, uncertainty).
    compaction: drop the finished members from the batch when at most 3/4 of the rows are still
    active (order_parameter.py's rule). Returns one dict per member: returns, td_norm, order
    (gradient_magnitude at the checkpoints), crystallization, beta_mean, clip_fraction, clip_total,
    final (the nn.Sequential at the end)."""
    gen = torch.Generator().manual_seed(seed)
    Hmax, M = max(m["H"] for m in members), len(members)
    layout = op.mlp_layout(1, Hmax, 2)
    theta = op.init_theta(torch.tensor([m["H"] for m in members]), 1, Hmax, 2, gen)
    mem = [_Member(theta[i], layout, m["N"], m["H"], lr, buffer, m["pressure"]) for i, m in enumerate(members)]
    for _ in range(prefill):
        coin, ra = torch.rand(M, generator=gen), torch.randint(0, 2, (M,), generator=gen)
        for i, m in enumerate(mem):
            a = int(ra[i]) if coin[i] < 0.5 else 1
            p0, r, p, done = m.env_step(a, max_steps)
            m.add((p0, a, r, p, float(done)))
    for m in mem:
        m.p = m.steps = 0
    size, rows = min(prefill, buffer), list(range(M))
    while any(m.episode < episodes for m in mem):
        R = len(rows)
        explore, ra = torch.rand(R, generator=gen), torch.randint(0, 2, (R,), generator=gen)
        active = {i: mem[i].episode < episodes for i in rows}
        ends = {}
        for k, i in enumerate(rows):
            m = mem[i]
            with torch.no_grad():
                q = m.net(torch.tensor([[m.p / m.N]]))
            a = int(ra[k]) if explore[k] < m.eps else int(q.argmax())
            if m.pressure is not None and active[i]:               # V: running mean of max_a Q(s_t, a)
                m.V_sum[m.p] = m.V_sum.get(m.p, 0.0) + float(q.max())
                m.V_cnt[m.p] = m.V_cnt.get(m.p, 0) + 1
            p0, r, p, done = m.env_step(a, max_steps)
            m.add((p0, a, r, p, float(done)))
            ends[i] = (r, done)
        size = min(size + 1, buffer)
        if size > batch:
            for _ in range(grad_steps):
                idx_all = torch.randint(0, size, (R, batch), generator=gen)
                for k, i in enumerate(rows):
                    if active[i]:
                        _grad_step(mem[i], idx_all[k].tolist(), clip)
        for i in rows:
            m = mem[i]
            r, done = ends[i]
            m.ret += r
            if not (done and active[i]):
                continue
            e = m.episode
            m.out["returns"].append(m.ret)
            m.out["td_norm"].append(float(np.mean(m.g_norms)) if m.g_norms else 0.0)
            if e % target_every == 0:
                m.tgt.load_state_dict(m.net.state_dict())
            m.eps = max(0.01, m.eps * 0.99)
            if order_every is not None and e % order_every == 0:
                x = torch.linspace(0, 1, probes).view(-1, 1).requires_grad_(True)
                (dx,) = torch.autograd.grad(m.net(x).sum(), x)
                m.out["order"].append(float(dx.norm()))
            if m.pressure is not None:
                if e >= c_window:                                  # the original's crystallization rule
                    mean = float(np.mean(m.out["returns"][-c_window:]))
                    imp = (mean - m.avg[-1]) / abs(m.avg[-1] + 1e-8) if m.avg else 0.0
                    m.avg.append(mean)
                    m.C = max(0.1, min(2.0, m.C + m.pressure["kappa"] * imp))
                m.out["crystallization"].append(m.C)
                m.out["beta_mean"].append(float(np.mean(m.betas)) if m.betas else 0.0)
                m.out["clip_fraction"].append(float(np.mean(m.clipped)) if m.clipped else 0.0)
            m.episode += 1
        for i in rows:
            if ends[i][1]:
                mem[i].ret, mem[i].g_norms, mem[i].betas, mem[i].clipped = 0.0, [], [], []
        n_active = sum(mem[i].episode < episodes for i in rows)
        if compaction and 0 < n_active <= 0.75 * len(rows):
            rows = [i for i in rows if mem[i].episode < episodes]
    for m in mem:
        m.out["final"], m.out["clip_total"], m.out["step_total"] = m.net, m.clip_total, m.step_total
    return [m.out for m in mem]


def _grad_step(m: _Member, idx, clip):
    """One minibatch of member m: (weighted) MSE TD loss, the original's per-sample pressure loop, clip, Adam."""
    cells = [m.ring[i][0] for i in idx]
    s, a_, r_, s2, d = (torch.tensor([float(m.ring[i][k]) for i in idx]) for k in range(5))
    s, s2, a_ = s / m.N, s2 / m.N, a_.long()
    with torch.no_grad():
        y = r_ + 0.99 * m.tgt(s2[:, None]).max(1).values * (1 - d)
    q_all = m.net(s[:, None])
    err2 = (q_all.gather(1, a_[:, None]).squeeze(1) - y) ** 2
    pr = m.pressure
    if pr is None:
        loss = err2.mean()
    else:
        w = []
        for i, k in enumerate(cells):                               # the original's per-sample loop
            v = m.V_sum[k] / m.V_cnt[k] if k in m.V_sum else 0.0
            u = m.U.get(k, 1.0)                                     # read BEFORE the update
            u_new = float(torch.var(q_all[i].detach())) if pr["uncertainty"] == "variance" else 1.0
            m.U[k] = u_new if k not in m.U else 0.8 * m.U[k] + 0.2 * u_new
            w.append(math.exp(pr["alpha"] * v - pr["gamma_u"] * u) * m.C)
        w = torch.tensor(w)
        m.betas.append(float(w.mean()))
        loss = (w * err2).mean() if pr["weighted"] else err2.mean()
    m.opt.zero_grad()
    loss.backward()
    m.g_norms.append(float(torch.cat([p.grad.flatten() for p in m.net.parameters()]).norm()))
    if clip is not None:
        total = float(torch.nn.utils.clip_grad_norm_(m.net.parameters(), clip))
        clipped = clip / (total + 1e-6) < 1.0
        m.clipped.append(float(clipped))
        m.clip_total += int(clipped)
        m.step_total += 1
    m.opt.step()
