"""Speed ratios of gist_meta.py's pieces, measured in one process, interleaved (A, B, C, ... then
again, `--reps` rounds) so that a change of machine load hits every piece alike; each ratio is the
median over the rounds of the ratio within one round (and the medians of the times are printed).
Pieces, all on the same chunks: one CE forward+backward (the reference), the second-order and the
first-order meta step of stage C, the floor of any first-order step (L_gist fwd+bwd + CE fwd+bwd),
theta's L_gist forward+backward (phi constant) in one joint pass [s^ | G | s | G'] against two
separate passes, with and without the stop-gradient, and the gist-masked against the unmasked
forward of a stage-A batch. Model: the defaults (1.0M parameters), one thread.
Run:  OMP_NUM_THREADS=1 python benchmark/gist_meta_speed.py [--reps 9] [--small] [--meta-batch-size 32
      --c-chunk-len 64] [--compare OTHER_gist_meta.py]   (--small: the 0.14M model of the issue-13
      experiments; the batch flags: a larger meta batch, where FLOPs rather than per-call overhead set the
      cost; --compare: e.g. `git show e6e03b8:gist_meta.py > /tmp/old.py`, the code before the cached truth
      side, timed in the same rounds)"""
import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gist_meta as G  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--reps", type=int, default=9)
parser.add_argument("--small", action="store_true")
parser.add_argument("--meta-batch-size", type=int, default=None, help="chunks per meta batch (default: the script's)")
parser.add_argument("--c-chunk-len", type=int, default=None, help="tokens per chunk (default: the script's)")
parser.add_argument("--compare", default=None, help="another copy of gist_meta.py (e.g. an older commit's): its meta "
                    "steps are timed in the same rounds, on the same model, phi and chunks")
cli = parser.parse_args()
torch.set_num_threads(1)
size = dict(n_embd=64, n_layer=2, n_head=4, n_kv_head=2) if cli.small else {}
over = {k: v for k, v in (("meta_batch_size", cli.meta_batch_size), ("c_chunk_len", cli.c_chunk_len)) if v is not None}
args = G.finalize_args(G.Args(stage="all", **size, **over))
tok, train_ids, _, _ = G.load_data(args)
model, info = G.load_model(args)
theta = dict(model.named_parameters())
phi = G.init_phi(model.get_input_embeddings().weight[args.gist_id], args.num_gist_tokens, True, True)
phi_const = {n: p.detach() for n, p in phi.items()}
gen = torch.Generator().manual_seed(0)
_, chunks = G.draw_train_chunks(train_ids, args.c_chunk_len, args.meta_batch_size, gen)
loss = functools.partial(G.gist_loss, gist_id=args.gist_id, temperature=1.0, stopgrad_target=True)
Lc, k, Lx = args.context_len, args.num_gist_tokens, args.cont_len
ids = G.gist_sequences(G.sample_windows(train_ids, args.batch_size, Lc + Lx, gen), Lc, k, args.gist_id)
mask = G.gist_attention_mask(Lc, k, Lx, "gist")
params = list(theta.values())


nosg = functools.partial(G.gist_loss, gist_id=args.gist_id, temperature=1.0, stopgrad_target=False)


def lgist_parts(ids_):
    """(z_own, z_both) for L_gist by hand: the LM pass, then the codes (two passes, or the joint one)."""
    emb = theta[G.embedding_name(model)]
    pred = G.soft_embeddings(G.forward(model, theta, input_ids=ids_[:, :-1]).logits, emb, args.gist_id, 1.0)
    return pred, emb[ids_[:, 1:]]


def nosg_two_pass(ids_):
    """L_gist without the stop-gradient, z_own and z_both in two separate passes (the pre-joint path)."""
    pred, truth = lgist_parts(ids_)
    z_own = G.gist_codes(model, theta, pred, phi_const["gist"])
    z_both = G.gist_codes(model, theta, torch.cat([pred, truth], 1), phi_const["gist"])
    return torch.autograd.grad(G.cosine_distance(z_own, z_both), params)


def sg_joint(ids_):
    """L_gist with the stop-gradient as one joint pass and z_both detached (phi constant): exact for theta,
    but theta's backward then runs over all 2L + 2k positions."""
    pred, truth = lgist_parts(ids_)
    z_own, z_both = G.gist_codes_joint(model, theta, pred, truth, phi_const["gist"])
    return torch.autograd.grad(G.cosine_distance(z_own, z_both.detach()), params)


def fomaml_floor(x_tr, x_val):
    """The least any first-order meta step costs: L_gist fwd+bwd, then CE fwd+bwd (no phi-gradient)."""
    torch.autograd.grad(loss(model, theta, phi_const, x_tr), params)
    return torch.autograd.grad(G.lm_ce(model, theta, x_val), params)


pieces = {
    "ce_fwd_bwd": lambda: G.ce_backward_step(model, theta, chunks[0]),
    "second_order": lambda: G.meta_gradients(model, theta, phi, chunks[0], chunks[1], args.inner_lr, loss, False),
    "first_order": lambda: G.meta_gradients(model, theta, phi, chunks[0], chunks[1], args.inner_lr, loss, True),
    "fomaml_floor": lambda: fomaml_floor(chunks[0], chunks[1]),
    "lgist_sg_two_pass": lambda: torch.autograd.grad(loss(model, theta, phi_const, chunks[0]), params),
    "lgist_sg_joint": lambda: sg_joint(chunks[0]),
    "lgist_nosg_joint": lambda: torch.autograd.grad(nosg(model, theta, phi_const, chunks[0]), params),
    "lgist_nosg_two_pass": lambda: nosg_two_pass(chunks[0]),
}
if cli.compare:                                                   # the other copy's meta steps, same inputs
    import importlib.util
    spec = importlib.util.spec_from_file_location("gist_meta_other", cli.compare)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    o_loss = functools.partial(other.gist_loss, gist_id=args.gist_id, temperature=1.0, stopgrad_target=True)
    pieces["other_second_order"] = lambda: other.meta_gradients(model, theta, phi, chunks[0], chunks[1], args.inner_lr,
                                                                o_loss, False)
    pieces["other_first_order"] = lambda: other.meta_gradients(model, theta, phi, chunks[0], chunks[1], args.inner_lr,
                                                               o_loss, True)
fwd = {
    "fwd_gist_mask": lambda: model(input_ids=ids, attention_mask=mask, use_cache=False),
    "fwd_unmasked": lambda: model(input_ids=ids, use_cache=False),
}
times = {n: [] for n in list(pieces) + list(fwd)}
for fn in list(pieces.values()):                                  # warm-up
    fn()
with torch.no_grad():
    for fn in fwd.values():
        fn()
for r in range(cli.reps):
    for n, fn in pieces.items():
        t0 = time.perf_counter()
        fn()
        times[n].append(time.perf_counter() - t0)
    with torch.no_grad():
        for n, fn in fwd.items():
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)


def ratio(a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
print(f"{info['n_params']} params, meta batch {args.meta_batch_size} x {args.c_chunk_len} tokens, 1 thread, "
      f"{cli.reps} interleaved rounds; median ms: " + ", ".join(f"{n} {m:.1f}" for n, m in med.items()))
print(f"second-order meta step / CE fwd+bwd {ratio('second_order', 'ce_fwd_bwd'):.2f}x (target <= 6)")
print(f"first-order meta step / CE fwd+bwd {ratio('first_order', 'ce_fwd_bwd'):.2f}x (target <= 3); "
      f"first / second order {ratio('first_order', 'second_order'):.2f}")
print(f"floor of any first-order step (L_gist fwd+bwd + CE fwd+bwd) / CE fwd+bwd {ratio('fomaml_floor', 'ce_fwd_bwd'):.2f}x")
print(f"L_gist fwd+bwd (theta), one joint pass / two passes: without the stop-gradient "
      f"{ratio('lgist_nosg_joint', 'lgist_nosg_two_pass'):.2f}, with it {ratio('lgist_sg_joint', 'lgist_sg_two_pass'):.2f}")
print(f"gist-masked / unmasked forward {ratio('fwd_gist_mask', 'fwd_unmasked'):.2f}x (target <= 1.2)")
if cli.compare:
    print(f"{cli.compare}: second order {ratio('other_second_order', 'ce_fwd_bwd'):.2f}x, first order "
          f"{ratio('other_first_order', 'ce_fwd_bwd'):.2f}x a CE fwd+bwd; this copy / that copy: second order "
          f"{ratio('second_order', 'other_second_order'):.2f}, first order {ratio('first_order', 'other_first_order'):.2f}")
