"""Speed ratios of gist_meta.py's pieces, measured side by side in one process (min over repeats):
one CE forward+backward, the second-order and the first-order meta step (stage C), on the same
chunks; the gist-masked and the unmasked forward of a stage-A batch. Model: the defaults
(1.0M parameters), one thread. Run:  OMP_NUM_THREADS=1 python benchmark/gist_meta_speed.py"""
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gist_meta as G  # noqa: E402

torch.set_num_threads(1)
args = G.finalize_args(G.Args(stage="all"))
tok, train_ids, _, _ = G.load_data(args)
model, info = G.load_model(args)
theta = dict(model.named_parameters())
phi = G.init_phi(model.get_input_embeddings().weight[args.gist_id], args.num_gist_tokens, True, True)
gen = torch.Generator().manual_seed(0)
_, chunks = G.draw_train_chunks(train_ids, args.c_chunk_len, args.meta_batch_size, gen)
loss = functools.partial(G.gist_loss, gist_id=args.gist_id, temperature=1.0, stopgrad_target=True)
reps = 5
t_ce = G.min_time(G.ce_backward_step, model, theta, chunks[0], reps=reps)
t_so = G.min_time(G.meta_gradients, model, theta, phi, chunks[0], chunks[1], args.inner_lr, loss, False, reps=reps)
t_fo = G.min_time(G.meta_gradients, model, theta, phi, chunks[0], chunks[1], args.inner_lr, loss, True, reps=reps)
Lc, k, Lx = args.context_len, args.num_gist_tokens, args.cont_len
ids = G.gist_sequences(G.sample_windows(train_ids, args.batch_size, Lc + Lx, gen), Lc, k, args.gist_id)
mask = G.gist_attention_mask(Lc, k, Lx, "gist")
with torch.no_grad():
    t_mask = G.min_time(model, reps=reps, input_ids=ids, attention_mask=mask, use_cache=False)
    t_plain = G.min_time(model, reps=reps, input_ids=ids, use_cache=False)
print(f"{info['n_params']} params, meta batch {args.meta_batch_size} x {args.c_chunk_len} tokens, 1 thread")
print(f"CE fwd+bwd {t_ce * 1e3:.1f} ms; second-order meta step {t_so * 1e3:.1f} ms = {t_so / t_ce:.2f}x; "
      f"first-order {t_fo * 1e3:.1f} ms = {t_fo / t_ce:.2f}x; first/second {t_fo / t_so:.2f}")
print(f"gist-masked forward {t_mask * 1e3:.1f} ms, unmasked {t_plain * 1e3:.1f} ms = {t_mask / t_plain:.2f}x")
