"""gist_meta.py: oracle tests of the gist mask, the leak, the losses, the meta-gradient (float64 finite
differences), first vs second order and the similarity selection; a bad-input table; runs in
process (all stages, determinism, NaN stop) and through the CLI (a checkpoint with --track offline)."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_bad_input, read_json, read_metrics, run_in_process

import gist_meta as G

SCRIPT = "gist_meta.py"
TINY = ("--n-embd", "32", "--n-layer", "2", "--n-head", "2", "--n-kv-head", "1", "--a-steps", "6", "--b-steps", "4",
        "--c-steps", "3", "--eval-every", "3", "--eval-batches", "2", "--batch-size", "4", "--meta-batch-size", "2",
        "--context-len", "16", "--cont-len", "8", "--c-chunk-len", "8", "--bank-size", "8", "--bank-refresh", "2",
        "--c-eval-episodes", "2", "--eval-inner-steps", "2", "--inner-lr", "0.05", "--c-online-steps", "3")
OFFLINE = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TIMING = ("a/tokens_per_s", "c/sec_per_meta_step")


def tiny_model(vocab=24, layers=2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    spec = SimpleNamespace(model_name_or_path=None, n_embd=16, n_layer=layers, n_head=2, n_kv_head=1)
    model, _ = G.build_lm(spec, vocab, 64, attn_implementation="eager")
    G.init_gist_row_(model, vocab - 1)
    return model.to(dtype)


# ------------------------------------------------------------------------------------------------
# Gist mask
# ------------------------------------------------------------------------------------------------
def rule(q, j, ctx, k, mode):
    """The mask rule written out for one (query, key) pair."""
    if j > q:
        return False                                               # causal
    if mode == "gist" and q >= ctx + k and j < ctx:
        return False                                               # after the last gist, no context
    if mode == "none" and q >= ctx and j < ctx:
        return False                                               # nothing after the context sees it
    if mode == "neg" and q >= ctx + k and j < ctx + k:
        return False                                               # Mu et al.: nor the gists
    return True


def mu_masks(ids, gist_id):
    """Mu et al.'s make_gist_mask / make_neg_control_mask / make_pos_control_mask, written again from
    their definition (two cumulative sums over ids == gist_id), each AND the causal triangle as in
    their decoder-only LLaMA; (B, 1, T, T) bool. No gist in a row: all ones (then causal)."""
    is_gist = ids == gist_id
    up_to_last = is_gist.flip(-1).cumsum(-1).flip(-1) >= 1          # has a gist at or after me
    from_first = is_gist.cumsum(-1) >= 1                             # has a gist at or before me
    pre_q = up_to_last[:, None, :, None]                             # query before or at the last gist
    gist = torch.where(pre_q, up_to_last[:, None, None, :], from_first[:, None, None, :])
    neg = torch.where(pre_q, up_to_last[:, None, None, :], ~up_to_last[:, None, None, :])
    has = is_gist.any(-1)[:, None, None, None]
    T = ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return {"gist": torch.where(has, gist, True) & causal, "neg": torch.where(has, neg, True) & causal,
            "full": torch.ones_like(gist) & causal}


def test_masks_agree_with_mu_et_al_over_many_layouts():
    n = 0
    for ctx in range(1, 7):
        for k in range(1, 5):
            for cont in range(1, 6):
                ids = G.gist_sequences(torch.zeros(1, ctx + cont, dtype=torch.long), ctx, k, 9)
                ref = mu_masks(ids, 9)
                for mode in ("gist", "neg", "full"):
                    ours = G.gist_attention_mask(ctx, k, cont, mode)[0, 0] == 0
                    assert torch.equal(ours, ref[mode][0, 0]), (ctx, k, cont, mode)
                    n += 1
                # our 'none' differs from their neg control: the gists do not see the context
                none = G.gist_attention_mask(ctx, k, cont, "none")[0, 0] == 0
                assert not none[ctx, :ctx].any() and ref["neg"][0, 0, ctx, :ctx].all()
    assert n == 360


@pytest.mark.parametrize("mode", ["gist", "full", "none", "neg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gist_mask_entry_by_entry(mode, dtype):
    ctx, k, cont = 3, 2, 3
    mask = G.gist_attention_mask(ctx, k, cont, mode, dtype=dtype)
    T = ctx + k + cont
    assert mask.shape == (1, 1, T, T) and mask.dtype == dtype and mask.is_floating_point()
    low = torch.finfo(dtype).min
    for q in range(T):
        for j in range(T):
            assert mask[0, 0, q, j].item() == (0.0 if rule(q, j, ctx, k, mode) else low), (q, j)
    later = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (mask[0, 0][later] == low).all()                        # causal: no query sees a later key
    # additive: softmax(scores + mask) puts exactly zero weight on forbidden keys
    weights = torch.softmax(torch.randn(T, T, dtype=dtype) + mask[0, 0], dim=-1)
    forbidden = mask[0, 0] == low
    assert (weights[forbidden] == 0).all() and torch.allclose(weights.sum(-1), torch.ones(T, dtype=dtype))


def test_gist_mask_by_hand():
    m = G.gist_attention_mask(2, 1, 2, "gist")[0, 0] == 0         # [c0 c1 | g | x0 x1]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_sequences_and_stage_a_loss_indexing():
    windows = torch.arange(12).view(2, 6)                          # ctx 3, cont 3
    ids = G.gist_sequences(windows, 3, 2, 99)
    assert ids.tolist() == [[0, 1, 2, 99, 99, 3, 4, 5], [6, 7, 8, 99, 99, 9, 10, 11]]
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 100)
    loss, cont = G.stage_a_losses(logits, ids, 3, 2, context_loss=True)
    assert G.continuation_token_ce(logits, ids, 3, 2).shape == (2, 2)        # x_2, x_3 scored; x_1 not
    ce = lambda b, pos, tgt: -torch.log_softmax(logits[b, pos], -1)[tgt]
    cont_terms = [ce(b, p - 1, ids[b, p]) for b in range(2) for p in (6, 7)]   # never from the last gist
    ctx_terms = [ce(b, p - 1, ids[b, p]) for b in range(2) for p in (1, 2)]
    assert cont.item() == pytest.approx(torch.stack(cont_terms).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(torch.stack(cont_terms + ctx_terms).mean().item(), rel=1e-5)
    assert G.stage_a_losses(logits, ids, 3, 2, context_loss=False)[0].item() == pytest.approx(cont.item())


# ------------------------------------------------------------------------------------------------
# Leak test: the continuation sees the context only through the gist positions
# ------------------------------------------------------------------------------------------------
def post_gist_logits(model, ids, mask, patch=None, record=None, gist_pos=None):
    """Logits after the gists; record: list that receives every layer's gist-position outputs;
    patch: such a list, written back into the gist positions of every layer's output."""
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(mod, inp, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            if record is not None:
                record.append(h[:, gist_pos].clone())
            if patch is not None:
                h = h.clone()
                h[:, gist_pos] = patch[i]
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, gist_pos.stop:]
    finally:
        for h in hooks:
            h.remove()


def test_leak_changing_the_context_changes_post_gist_outputs_only_through_the_gists():
    ctx, k, cont, gist_id = 6, 2, 5, 23
    gist_pos = slice(ctx, ctx + k)
    torch.manual_seed(1)
    windows = torch.randint(0, 23, (3, ctx + cont))
    other = windows.clone()
    other[:, :ctx] = torch.randint(0, 23, (3, ctx))                 # new context, same continuation
    a, b = G.gist_sequences(windows, ctx, k, gist_id), G.gist_sequences(other, ctx, k, gist_id)
    masks = {m: G.gist_attention_mask(ctx, k, cont, m) for m in G.MASK_MODES}
    deep = tiny_model(layers=3)
    # with the gists' activations held at run a's, run b's continuation is run a's, exactly
    saved = []
    ref = post_gist_logits(deep, a, masks["gist"], record=saved, gist_pos=gist_pos)
    patched = post_gist_logits(deep, b, masks["gist"], patch=saved, gist_pos=gist_pos)
    assert torch.equal(patched, ref)
    # the same patch does not hide the context under the full mask (the test can fail)
    saved_full = []
    ref_full = post_gist_logits(deep, a, masks["full"], record=saved_full, gist_pos=gist_pos)
    assert (post_gist_logits(deep, b, masks["full"], patch=saved_full, gist_pos=gist_pos) - ref_full).abs().max() > 1e-4
    # unpatched, the context does reach the continuation through the gists (3 layers)
    assert (post_gist_logits(deep, b, masks["gist"], gist_pos=gist_pos) - ref).abs().max() > 1e-4
    # the none mask removes the context entirely, at any depth
    assert torch.equal(post_gist_logits(deep, a, masks["none"], gist_pos=gist_pos),
                       post_gist_logits(deep, b, masks["none"], gist_pos=gist_pos))
    # one layer: the gists' keys/values come from embeddings only, so nothing changes at all
    shallow = tiny_model(layers=1)
    assert torch.equal(post_gist_logits(shallow, a, masks["gist"], gist_pos=gist_pos),
                       post_gist_logits(shallow, b, masks["gist"], gist_pos=gist_pos))


def scored_context_gradients(model, ids, mask, ctx, k):
    """|d CE(scored token i) / d context embeddings| for every scored continuation token i."""
    emb = model.get_input_embeddings().weight[ids].detach().requires_grad_()
    logits = model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
    tok = G.continuation_token_ce(logits, ids, ctx, k)
    return [torch.autograd.grad(tok[:, i].sum(), emb, retain_graph=True)[0][:, :ctx].abs().max().item()
            for i in range(tok.shape[1])]


def test_no_scored_position_attends_to_the_context():
    """With one layer the gists' keys and values are embeddings only, so under the gist mask no
    scored continuation token may depend on the context at all; under neg and none at no depth.
    (Scoring x_1, which the last gist predicts while attending to the context, makes this fail.)"""
    ctx, k, cont, gist_id = 5, 2, 4, 23
    torch.manual_seed(2)
    ids = G.gist_sequences(torch.randint(0, 23, (2, ctx + cont)), ctx, k, gist_id)
    masks = {m: G.gist_attention_mask(ctx, k, cont, m) for m in G.MASK_MODES}
    shallow, deep = tiny_model(layers=1), tiny_model(layers=3)
    grads = scored_context_gradients(shallow, ids, masks["gist"], ctx, k)
    assert len(grads) == cont - 1 and all(g == 0.0 for g in grads), grads
    for mode in ("none", "neg"):
        assert all(g == 0.0 for g in scored_context_gradients(deep, ids, masks[mode], ctx, k)), mode
    # the check can fail: the full mask, and the gist mask at depth 3 (through the gists), reach the context
    assert all(g > 0 for g in scored_context_gradients(shallow, ids, masks["full"], ctx, k))
    assert all(g > 0 for g in scored_context_gradients(deep, ids, masks["gist"], ctx, k))


def test_stage_a_trains_and_evaluates_each_model_with_its_own_mask(tmp_path, monkeypatch):
    """Every masked forward of stage A, training and evaluation, gets its model's mask: the gist
    model the gist mask, then each control its own, in the order of --a-modes."""
    from transformers import LlamaForCausalLM
    seen, real = [], LlamaForCausalLM.forward

    def spy(self, *a, **kw):
        if kw.get("attention_mask") is not None and kw.get("input_ids") is not None:
            seen.append(kw["attention_mask"].clone())
        return real(self, *a, **kw)
    monkeypatch.setattr(LlamaForCausalLM, "forward", spy)
    code, _ = run_in_process(G, SCRIPT, "step", tmp_path, *TINY, "--stage", "a", "--a-modes", "gist", "neg")
    assert code == 0
    want = {m: G.gist_attention_mask(16, 4, 8, m) for m in ("gist", "neg")}
    per_model = 6 + 3 * 2                                   # 6 training steps, 3 evaluations x 2 batches
    assert len(seen) == 2 * per_model + 5 + 1               # + the speed check (5 reps + warm-up), gist mask
    for i, m in enumerate(seen):
        mode = "gist" if i < per_model or i >= 2 * per_model else "neg"
        assert torch.equal(m, want[mode]), i


def test_gist_row_is_the_vocabulary_mean():
    model = tiny_model(vocab=24)
    w = model.get_input_embeddings().weight
    assert torch.allclose(w[23], w[:23].mean(0))


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def test_soft_embeddings_are_differentiable_and_skip_the_gist():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lg, e: G.soft_embeddings(lg, e, 5, 0.7), (logits, emb))
    out = G.soft_embeddings(logits, emb, 5, 1.0)
    p = torch.softmax(logits[..., :5], -1)
    assert torch.allclose(out, p @ emb[:5])                       # <gist> row gets zero weight


@pytest.mark.parametrize("pred_encoder", ["online", "target"])
def test_semantic_loss_reaches_the_lm_through_the_soft_prediction(pred_encoder):
    model = tiny_model()
    target = tiny_model(seed=1).requires_grad_(False)
    ids = torch.randint(0, 23, (3, 9))
    loss, z_pred, z_true = G.semantic_loss(model, target, ids, 23, 2, 1.0, pred_encoder)
    loss.backward()
    assert z_pred.shape == z_true.shape == (3, 2, 16) and 0 <= loss.item() <= 2
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


def test_collapse_diagnostics_and_centring():
    same = torch.ones(4, 2, 3)
    assert G.mean_pairwise_cosine(same) == pytest.approx(1.0) and G.effective_rank(same) == 0.0
    eye = torch.eye(4).view(4, 2, 2)                               # 4 orthonormal codes
    assert G.mean_pairwise_cosine(eye) == pytest.approx(0.0, abs=1e-12)
    assert G.effective_rank(eye) == pytest.approx(3.0, rel=1e-9)   # centred: 3 equal singular values
    line = torch.arange(5.0)[:, None, None] * torch.tensor([1.0, 2.0])[None, None, :] + 7
    assert G.effective_rank(line) == pytest.approx(1.0, rel=1e-9)
    z = torch.randn(5, 2, 3)
    assert torch.allclose(G.center_codes(z).mean(0), torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(G.center_codes(z + 3.0), G.center_codes(z), atol=1e-5)   # the common part is gone


def test_grad_cosine():
    w = torch.randn(5, requires_grad=True)
    a, b = (w * torch.arange(5.0)).sum(), (w ** 2).sum()
    assert G.grad_cosine(a, a, [w]) == pytest.approx(1.0) and G.grad_cosine(a, -a, [w]) == pytest.approx(-1.0)
    ga, gb = torch.arange(5.0), 2 * w.detach()
    assert G.grad_cosine(a, b, [w]) == pytest.approx(float(ga @ gb / ga.norm() / gb.norm()), rel=1e-6)


def test_semantic_loss_target_side_is_a_stop_gradient():
    """Even with the live model as its own target, no gradient flows through the truth side."""
    model = tiny_model()
    ids = torch.randint(0, 23, (4, 9), generator=torch.Generator().manual_seed(3))
    loss, z_pred, z_true = G.semantic_loss(model, model, ids, 23, 2, 1.0, "online", center=True)
    g = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, retain_graph=True)
    ref = G.cosine_distance(G.center_codes(z_pred), G.center_codes(z_true.detach()))
    g_ref = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    for a, b in zip(g, g_ref):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-7)
    # centring changes the loss (the test of the flag can fail)
    raw = G.semantic_loss(model, model, ids, 23, 2, 1.0, "online", center=False)[0]
    assert abs(raw.item() - loss.item()) > 1e-4


def test_gist_loss_truth_side_is_a_stop_gradient_for_theta_not_phi():
    model = tiny_model()
    theta = dict(model.named_parameters())
    phi = G.init_phi(model.get_input_embeddings().weight[23], 2, proj=True, scale=False)
    with torch.no_grad():
        phi["gist"].add_(0.3 * torch.randn_like(phi["gist"]))
    ids = torch.randint(0, 23, (3, 9), generator=torch.Generator().manual_seed(4))
    loss = G.gist_loss(model, theta, phi, ids, 23, stopgrad_target=True)
    g = torch.autograd.grad(loss, list(theta.values()) + [phi["gist"]], allow_unused=True)
    # reference: z_both recomputed as a constant for theta, still a function of phi
    emb = theta["model.embed_tokens.weight"]
    logits = G.forward(model, theta, input_ids=ids[:, :-1]).logits
    pred = G.soft_embeddings(logits, emb, 23, 1.0)
    z_own = G.gist_codes(model, theta, pred, phi["gist"]) @ phi["proj"].T
    frozen = {n: p.detach() for n, p in theta.items()}
    z_both = G.gist_codes(model, frozen, torch.cat([pred.detach(), emb.detach()[ids[:, 1:]]], 1), phi["gist"]) @ phi["proj"].T
    ref = G.cosine_distance(z_own, z_both)
    assert ref.item() == pytest.approx(loss.item(), rel=1e-6)
    g_ref = torch.autograd.grad(ref, list(theta.values()) + [phi["gist"]], allow_unused=True)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-7)
    assert g[-1].abs().sum() > 0                                   # phi still gets its gradient
    no_sg = G.gist_loss(model, theta, phi, ids, 23, stopgrad_target=False)
    g_no = torch.autograd.grad(no_sg, list(theta.values()))
    assert max((a - b).abs().max().item() for a, b in zip(g_no, g[:-1])) > 1e-5   # the stop-gradient matters


# ------------------------------------------------------------------------------------------------
# Meta-gradient
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def float64_llama(monkeypatch):
    """transformers' Llama runs RMSNorm and the eager softmax in float32 even in a float64 model,
    which would swamp a finite difference; here both stay in float64 (same maths otherwise)."""
    from transformers.models.llama import modeling_llama as ML

    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        k, v = ML.repeat_kv(key, module.num_key_value_groups), ML.repeat_kv(value, module.num_key_value_groups)
        w = query @ k.transpose(2, 3) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.softmax(w, dim=-1)
        return (w @ v).transpose(1, 2).contiguous(), w

    monkeypatch.setattr(ML.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(ML, "eager_attention_forward", eager)


def meta_problem(seed=0, stopgrad=True):
    model = tiny_model(dtype=torch.float64, seed=seed)
    theta = dict(model.named_parameters())
    phi = G.init_phi(model.get_input_embeddings().weight[23], 2, proj=True, scale=True)
    with torch.no_grad():                                          # move phi off its symmetric init
        phi["gist"].add_(0.3 * torch.randn_like(phi["gist"]))
        phi["proj"].add_(0.2 * torch.randn_like(phi["proj"]))
        phi["log_scale"].fill_(0.4)
    gen = torch.Generator().manual_seed(seed)
    x_tr, x_val = torch.randint(0, 23, (2, 7), generator=gen), torch.randint(0, 23, (2, 7), generator=gen)
    loss_fn = lambda m, params, ph, ids, **kw: G.gist_loss(m, params, ph, ids, 23, stopgrad_target=stopgrad, **kw)
    return model, theta, phi, x_tr, x_val, loss_fn


def outer_loss(model, theta, phi, x_tr, x_val, loss_fn, lr):
    """F(theta, phi) = CE(theta - lr grad_theta L(theta, phi); x_val), recomputed from scratch."""
    names = list(theta)
    g = torch.autograd.grad(loss_fn(model, theta, phi, x_tr), [theta[n] for n in names])
    return G.lm_ce(model, {n: theta[n] - lr * gi for n, gi in zip(names, g)}, x_val).item()


def central_difference(tensor, index, f, h=1e-6):
    with torch.no_grad():
        old = tensor[index].item()
        tensor[index] = old + h
    up = f()
    with torch.no_grad():
        tensor[index] = old - h
    down = f()
    with torch.no_grad():
        tensor[index] = old
    return (up - down) / (2 * h)


@pytest.mark.parametrize("stopgrad", [True, False])
def test_second_order_meta_gradient_matches_finite_differences_float64(float64_llama, stopgrad):
    """phi's meta-gradient is exact with or without the stop-gradient on z_both (z_both stays a
    function of phi); theta's (--meta-theta) is exact without it (with it, the truth side is a
    constant for theta by construction, so a finite difference of theta sees a different function)."""
    model, theta, phi, x_tr, x_val, loss_fn = meta_problem(stopgrad=stopgrad)
    lr = 0.5
    _, _, grads = G.meta_gradients(model, theta, phi, x_tr, x_val, lr, loss_fn, meta_theta=True)
    f = lambda: outer_loss(model, theta, phi, x_tr, x_val, loss_fn, lr)
    checks = [("gist", phi["gist"], (0, 3)), ("gist", phi["gist"], (1, 7)), ("proj", phi["proj"], (2, 5)),
              ("log_scale", phi["log_scale"], ())]
    if not stopgrad:
        checks += [("model.layers.1.mlp.down_proj.weight", theta["model.layers.1.mlp.down_proj.weight"], (4, 9)),
                   ("model.embed_tokens.weight", theta["model.embed_tokens.weight"], (3, 2))]
    for name, tensor, index in checks:
        fd = central_difference(tensor, index, f)
        assert grads[name][index].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name
    assert abs(grads["log_scale"].item()) > 1e-6                   # the meta-gradient is not trivially zero


def test_first_order_approximates_second_order_but_differs(float64_llama):
    model, theta, phi, x_tr, x_val, loss_fn = meta_problem(seed=1)
    _, outer2, so = G.meta_gradients(model, theta, phi, x_tr, x_val, 0.5, loss_fn, meta_theta=True)
    _, outer1, fo = G.meta_gradients(model, theta, phi, x_tr, x_val, 0.5, loss_fn, first_order=True,
                                     fd_eps=1e-5, meta_theta=True)
    assert outer1.item() == pytest.approx(outer2.item(), rel=1e-12)   # same theta'
    for name in phi:                                                  # phi: forward difference of the HVP
        cos = torch.nn.functional.cosine_similarity(fo[name].flatten(), so[name].flatten(), dim=0)
        assert cos > 0.999, name
        assert not torch.equal(fo[name], so[name])
    # theta: first-order MAML drops the Hessian term (I - alpha H) v
    w = "model.layers.0.self_attn.q_proj.weight"
    assert (fo[w] - so[w]).norm() > 1e-3 * so[w].norm()
    # a coarse eps is a worse approximation than a fine one
    _, _, coarse = G.meta_gradients(model, theta, phi, x_tr, x_val, 0.5, loss_fn, first_order=True, fd_eps=1.0)
    err = lambda g: (g["gist"] - so["gist"]).norm()
    assert err(fo) < err(coarse)


def test_first_order_reuses_the_truth_side_and_matches_the_two_gradient_formula(float64_llama):
    """The first-order phi-gradient -alpha (grad_phi L(theta + eps v) - grad_phi L(theta)) / eps, with the
    truth side kept at theta, written out with the two-pass loss (truth side recomputed at theta)."""
    model, theta, phi, x_tr, x_val, loss_fn = meta_problem(seed=2)
    lr, fd = 0.5, 1e-4
    _, _, fo = G.meta_gradients(model, theta, phi, x_tr, x_val, lr, loss_fn, first_order=True, fd_eps=fd)
    names, tensors, phis = list(theta), list(theta.values()), list(phi.values())
    g = torch.autograd.grad(loss_fn(model, theta, phi, x_tr), tensors)
    fast = {n: (p - lr * gi).detach().requires_grad_() for n, p, gi in zip(names, tensors, g)}
    v = torch.autograd.grad(G.lm_ce(model, fast, x_val), list(fast.values()))
    eps = fd / torch.sqrt(sum((vi * vi).sum() for vi in v))
    shifted = {n: p.detach() + eps * vi for n, p, vi in zip(names, tensors, v)}
    g1 = torch.autograd.grad(loss_fn(model, shifted, phi, x_tr, target_params=theta), phis)
    g0 = torch.autograd.grad(loss_fn(model, theta, phi, x_tr), phis)
    for n, a, b in zip(phi, g1, g0):
        assert torch.allclose(fo[n], -lr * (a - b) / eps, rtol=1e-6, atol=1e-9), n
    # shifting the truth side too (no stop-gradient in the difference) is another quantity
    g1_all = torch.autograd.grad(loss_fn(model, shifted, phi, x_tr, target_params=shifted), phis)
    assert (-lr * (g1_all[0] - g0[0]) / eps - fo["gist"]).norm() > 1e-3 * fo["gist"].norm()


def test_retention_is_reported_only_where_the_positive_control_passes():
    # CE none 3.0, full 1.0 (gap 2), gist 1.5: the gists carry 75 % of what the context is worth
    assert G.retention(1.5, 1.0, 3.0, 0.5) == (pytest.approx(0.75), pytest.approx(0.75), True)
    assert G.retention(1.0, 1.0, 3.0, 0.5)[0] == 1.0 and G.retention(3.0, 1.0, 3.0, 0.5)[0] == 0.0
    # gap 0.1 < 0.5: the full model barely uses the context; the ratio (here 2.0) is not reported
    assert G.retention(2.8, 2.9, 3.0, 0.5) == (None, pytest.approx(2.0), False)
    assert G.retention(2.8, 2.9, 3.0, 0.05)[2] is True                    # the threshold is the flag's
    assert G.retention(3.0, 3.0, 3.0, 0.0) == (None, None, True)          # zero gap: no ratio at all


def test_cached_gist_codes_equal_the_one_pass_codes():
    """The gists on a cached span (span_cache + gist_codes_cached, and gist_codes_and_cache) give the
    codes of the one pass [span | G], and the same gradients (theta through the span and the weights,
    the gist vectors); the cache handed back is detached, and continuing it gives the codes of the
    longer span."""
    model = tiny_model(layers=3)
    theta = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(8)
    span = torch.randn(3, 6, 16, generator=gen, requires_grad=True)
    more = torch.randn(3, 4, 16, generator=gen)
    g = torch.randn(2, 16, generator=gen, requires_grad=True)
    ref = G.gist_codes(model, theta, span, g)
    z, cache = G.gist_codes_and_cache(model, theta, span, g)
    assert torch.allclose(z, ref, atol=1e-6)
    wrt = [span, g] + [p for n, p in theta.items() if "embed" not in n]      # (codes do not use E here)
    w = torch.randn(ref.shape, generator=gen)
    for a, b in zip(torch.autograd.grad((z * w).sum(), wrt), torch.autograd.grad((ref * w).sum(), wrt)):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(not (l.keys.requires_grad or l.values.requires_grad) for l in cache.layers)
    with torch.no_grad():
        G.forward(model, theta, logits_to_keep=1, cache=cache, inputs_embeds=more)
    longer = G.gist_codes_cached(model, theta, cache, g)
    assert torch.allclose(longer, G.gist_codes(model, theta, torch.cat([span, more], 1), g), atol=1e-6)
    (dg,) = torch.autograd.grad(longer.sum(), [g])                # the cached span gives no graph but to G
    assert dg.abs().sum() > 0
    on_cache = G.gist_codes_cached(model, theta, G.span_cache(model, theta, span), g)
    assert torch.allclose(on_cache, ref, atol=1e-6) and not on_cache.detach().equal(longer.detach())


def test_joint_pass_equals_the_two_passes():
    """One pass over [s^ | G | s | G'] with position ids gives z_own and z_both of the two separate passes,
    values and gradients; gist_loss without the stop-gradient uses it."""
    L, k = 5, 2
    mask, pos = G.joint_gist_layout(L, k)
    allowed = mask[0, 0] == 0
    for q in range(2 * L + 2 * k):
        for j in range(2 * L + 2 * k):
            assert bool(allowed[q, j]) == (j <= q and not (q >= L + k and L <= j < L + k)), (q, j)
    assert pos[0].tolist() == list(range(L + k)) + list(range(L, 2 * L + k))
    model = tiny_model(layers=3)
    theta = dict(model.named_parameters())
    phi = G.init_phi(model.get_input_embeddings().weight[23], k, proj=True, scale=True)
    with torch.no_grad():
        phi["gist"].add_(0.3 * torch.randn_like(phi["gist"]))
    ids = torch.randint(0, 23, (3, L + 1), generator=torch.Generator().manual_seed(6))
    emb = theta["model.embed_tokens.weight"]
    pred = G.soft_embeddings(G.forward(model, theta, input_ids=ids[:, :-1]).logits, emb, 23, 1.0)
    z_own, z_both = G.gist_codes_joint(model, theta, pred, emb[ids[:, 1:]], phi["gist"])
    r_own = G.gist_codes(model, theta, pred, phi["gist"])
    r_both = G.gist_codes(model, theta, torch.cat([pred, emb[ids[:, 1:]]], 1), phi["gist"])
    assert torch.allclose(z_own, r_own, atol=1e-5) and torch.allclose(z_both, r_both, atol=1e-5)
    loss = G.gist_loss(model, theta, phi, ids, 23, stopgrad_target=False)
    ref = G.cosine_distance(r_own @ phi["proj"].T, r_both @ phi["proj"].T) * phi["log_scale"].exp()
    # the loss is a 1 - cos near 0 (~1e-4): float32 rounding of cos (~1e-8) sets the tolerance, and it
    # differs with the thread count
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    wrt = list(theta.values()) + [phi["gist"]]
    for a, b in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(ref, wrt)):
        assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Validation-chunk selection
# ------------------------------------------------------------------------------------------------
def test_select_similar_on_constructed_embeddings():
    bank = torch.eye(5) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[:, None]   # directions e_0..e_4, any norm
    query = torch.tensor([[0.1, 0.0, 0.9, 0.0, 0.0],     # closest to e_2
                          [0.0, 0.0, 0.0, 0.2, 0.1],     # closest to e_3 (cosine, not dot product)
                          [0.7, 0.6, 0.0, 0.0, 0.0]])    # e_0, but excluded below -> e_1
    exclude = torch.zeros(3, 5, dtype=torch.bool)
    assert G.select_similar(query, bank, exclude).tolist() == [2, 3, 0]
    exclude[2, 0] = True
    assert G.select_similar(query, bank, exclude).tolist() == [2, 3, 1]


def online_problem():
    model = tiny_model()
    chunks = torch.randint(0, 23, (4, 2, 7), generator=torch.Generator().manual_seed(5))   # N = 3 steps
    phi = G.init_phi(model.get_input_embeddings().weight[23], 2, proj=True, scale=True)
    loss_fn = lambda m, params, ph, ids, **kw: G.gist_loss(m, params, ph, ids, 23, **kw)
    return model, chunks, phi, loss_fn


def test_online_ce_stream_keeps_every_step():
    """theta_{t+1} = theta_t - lr grad CE(theta_t; chunk t), kept; CE of chunk t recorded before."""
    model, chunks, _, _ = online_problem()
    ces, theta = G.online_stream(model, "ce", chunks, 0.5, loss_fn=G.ce_online_loss)
    ref = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    for t in range(3):
        assert ces[t].item() == pytest.approx(G.lm_ce(model, ref, chunks[t]).item(), rel=1e-6)
        g = torch.autograd.grad(G.lm_ce(model, ref, chunks[t]), list(ref.values()))
        ref = {n: (p - 0.5 * gi).detach().requires_grad_() for (n, p), gi in zip(ref.items(), g)}
    assert ces[3].item() == pytest.approx(G.lm_ce(model, ref, chunks[3]).item(), rel=1e-6)
    assert all(torch.allclose(theta[n], ref[n], atol=1e-6) for n in ref)
    start = dict(model.named_parameters())
    assert max((theta[n] - start[n]).abs().max().item() for n in start) > 1e-3
    none, theta_none = G.online_stream(model, "none", chunks, 0.5)
    assert all(torch.equal(theta_none[n], start[n]) for n in start)
    same = chunks[:1].expand(4, -1, -1)                            # a stream that repeats one chunk
    learned, _ = G.online_stream(model, "ce", same, 0.5, loss_fn=G.ce_online_loss)
    assert learned[-1] < learned[0] - 0.1                          # what theta keeps, it uses


def test_online_gist_meta_keeps_theta_and_updates_phi():
    model, chunks, phi, loss_fn = online_problem()
    phi0 = {n: p.detach().clone() for n, p in phi.items()}
    meta, theta_m = G.online_stream(model, "gist_meta", chunks, 0.5, phi=phi, loss_fn=loss_fn, meta_lr=0.05)
    fixed, theta_f = G.online_stream(model, "gist_fixed", chunks, 0.5, phi=phi, loss_fn=loss_fn)
    assert all(torch.equal(phi[n], phi0[n]) for n in phi)         # the caller's phi is not touched
    start = dict(model.named_parameters())
    # step 0: the same inner step for both; theta_1 is kept, so the CE of chunk 1 is the outer loss
    _, outer, _ = G.meta_gradients(model, start, phi, chunks[0], chunks[1], 0.5, loss_fn)
    assert meta[1].item() == pytest.approx(outer.item(), rel=1e-6) and fixed[1].item() == pytest.approx(outer.item(), rel=1e-6)
    # theta moved; phi's online outer steps make the later inner steps differ from the frozen phi's
    assert max((theta_m[n] - start[n]).abs().max().item() for n in start) > 1e-4
    assert max((theta_m[n] - theta_f[n]).abs().max().item() for n in start) > 1e-7
    assert not torch.equal(meta[2:], fixed[2:])


def test_synthetic_corpora_make_the_context_decide_the_continuation():
    rng = lambda: __import__("numpy").random.default_rng(0)
    line = G.synthetic_line("repeat", rng(), 40, 6, 0, 0)
    assert len(line) == 40 and all(line[i] == line[i + 6] for i in range(34)) and len(set(line[:6])) > 1
    line = G.synthetic_line("letters", rng(), 400, 0, 5, 0)
    assert len(line) == 400 and len(set(line)) == 5
    line = G.synthetic_line("kv", rng(), 400, 0, 0, 4)
    keys, vals = line[0::2], line[1::2]
    assert keys.islower() and vals.isupper() and len(set(keys)) == 4
    assert all(len({v for k2, v in zip(keys, vals) if k2 == k}) == 1 for k in set(keys))   # a map per line
    args = G.check_args(G.Args(corpus="repeat", synth_chars=10_000, synth_line_len=99))
    tr, va, src = G.synthetic_corpus(args)
    assert len(tr) + len(va) == 100 * (10_000 // 100) and "synthetic repeat (P=8" in src
    assert G.synthetic_corpus(args) == (tr, va, src)               # fixed by --corpus-seed
    assert G.synthetic_corpus(G.check_args(G.Args(corpus="repeat", synth_chars=10_000, synth_line_len=99,
                                                  corpus_seed=1)))[0] != tr


def test_consecutive_chunks_overlap_by_one_token():
    data = torch.arange(100)
    chunks = G.consecutive_chunks(data, torch.tensor([0, 50]), 4, 3)
    assert chunks.shape == (3, 2, 5)
    assert chunks[0, 0].tolist() == [0, 1, 2, 3, 4] and chunks[1, 0].tolist() == [4, 5, 6, 7, 8]
    assert chunks[2, 1].tolist() == [58, 59, 60, 61, 62]


# ------------------------------------------------------------------------------------------------
# Argument checks (in-process) and positions
# ------------------------------------------------------------------------------------------------
def write_inputs(root):
    """Broken and too-short input files and folders, under root, for the bad-input table."""
    (root / "not_a_tokenizer.json").write_text('{"a": 1}')
    (root / "empty.json").write_text("")
    (root / "empty.txt").write_text("")
    (root / "short.txt").write_text("hello world\n" * 3)
    (root / "empty_dir").mkdir()
    (root / "bad_config").mkdir()
    (root / "bad_config" / "config.json").write_text("{ not json")
    model = tiny_model(vocab=256)
    model.config.save_pretrained(root / "config_only")               # a config, but no weights
    model.save_pretrained(root / "ckpt")                             # 64 positions


BAD_INPUTS = [
    # the cases: tracebacks or late failures before this change
    (("--n-head", "0"), "--n-head must be positive, got 0"),
    (("--n-kv-head", "0"), "--n-kv-head must be positive, got 0"),
    (("--n-layer", "0"), "--n-layer must be positive, got 0"),
    (("--n-embd", "-32"), "--n-embd must be positive, got -32"),
    (("--weight-decay", "-1"), "--weight-decay must lie in [0, 1)"),
    (("--a-min-gap", "-0.1"), "--a-min-gap must be a finite number >= 0, got -0.1"),
    (("--tokenizer", "not_a_tokenizer.json"), "--tokenizer 'not_a_tokenizer.json' could not be loaded"),
    (("--tokenizer", "empty.json"), "--tokenizer 'empty.json' could not be loaded"),
    (("--tokenizer", "empty_dir"), "--tokenizer 'empty_dir' could not be loaded"),
    (("--tokenizer", "no_such_file.json"), "is neither byte, bpe nor an existing file or folder"),
    (("--text-path", "missing.txt"), "--text-path 'missing.txt' is not a file"),
    (("--text-path", "empty_dir"), "--text-path 'empty_dir' is not a file"),
    (("--text-path", "empty.txt"), "the corpus (file empty.txt) is empty"),
    (("--text-path", "short.txt"), "the corpus is too short"),
    (("--model-name-or-path", "missing"), "--model-name-or-path 'missing' is not a folder"),
    (("--model-name-or-path", "empty_dir"), "--model-name-or-path 'empty_dir' could not be loaded"),
    (("--model-name-or-path", "bad_config"), "--model-name-or-path 'bad_config' could not be loaded"),
    (("--model-name-or-path", "config_only"), "--model-name-or-path 'config_only' could not be loaded"),
    (("--model-name-or-path", "ckpt"), "the run needs 76 positions"),              # context of 64 only
    (("--text-path", "short.txt", "--hf-dataset", "x"), "give at most one of --text-path and --hf-dataset"),
    (("--hf-dataset", "no/such_dataset"), "--hf-dataset"),
    # shapes
    (("--n-head", "3"), "--n-head 3 does not divide --n-embd 128"),
    (("--n-kv-head", "3"), "--n-kv-head 3 does not divide --n-head 4"),
    (("--n-embd", "12"), "head width --n-embd / --n-head = 3 must be even"),
    (("--tokenizer", "bpe", "--vocab-size", "100"), "--vocab-size 100 must be at least 257"),
    # sizes, steps, intervals, windows
    (("--num-gist-tokens", "0"), "--num-gist-tokens (k) must be at least 1"),
    (("--context-len", "1"), "--context-len must be at least 2"),
    (("--cont-len", "1"), "--cont-len must be at least 2"),
    (("--c-chunk-len", "0"), "--c-chunk-len must be at least 2"),
    (("--a-head-tokens", "8"), "--a-head-tokens must lie in [1, --cont-len - 1]"),
    (("--a-head-tokens", "0"), "--a-head-tokens must lie in [1, --cont-len - 1]"),
    (("--corpus", "zipf"), "unknown --corpus 'zipf'"),
    (("--corpus", "repeat", "--text-path", "short.txt"), "--corpus repeat is synthetic"),
    (("--repeat-period", "0"), "--repeat-period must lie in [1, 1000]"),
    (("--letters-support", "63"), "--letters-support must lie in [1, 62]"),
    (("--kv-keys", "27"), "--kv-keys must lie in [1, 26]"),
    (("--synth-chars", "100"), "--synth-chars at least two lines"),
    (("--corpus-seed", "-1"), "--corpus-seed must lie in [0, 2**32)"),
    (("--c-online-steps", "0"), "--c-online-steps must be positive"),
    (("--c-online-rules", "sgd"), "unknown --c-online-rules"),
    (("--corpus", "repeat", "--synth-chars", "1200", "--synth-line-len", "100"), "the corpus is too short"),
    (("--a-steps", "0"), "--a-steps must be positive"),
    (("--b-steps", "0"), "--b-steps must be positive"),
    (("--c-steps", "-1"), "--c-steps must be positive"),
    (("--batch-size", "0"), "--batch-size must be positive"),
    (("--meta-batch-size", "0"), "--meta-batch-size must be positive"),
    (("--eval-every", "0"), "--eval-every must be positive"),
    (("--eval-batches", "0"), "--eval-batches must be positive"),
    (("--bank-size", "0"), "--bank-size must be positive"),
    (("--bank-refresh", "0"), "--bank-refresh must be positive"),
    (("--eval-inner-steps", "0"), "--eval-inner-steps must be positive"),
    (("--c-eval-episodes", "0"), "--c-eval-episodes must be positive"),
    (("--torch-threads", "0"), "--torch-threads must be positive"),
    (("--seed", "-1"), "--seed must lie in [0, 2**32)"),
    # rates, temperatures, decays, fractions
    (("--a-lr", "0"), "--a-lr must be a finite number > 0"),
    (("--b-lr", "-1"), "--b-lr must be a finite number > 0"),
    (("--meta-lr", "nan"), "--meta-lr must be a finite number > 0"),
    (("--inner-lr", "inf"), "--inner-lr must be a finite number > 0"),
    (("--inner-lr", "0"), "--inner-lr must be a finite number > 0"),
    (("--soft-temperature", "0"), "--soft-temperature must be a finite number > 0"),
    (("--fd-eps", "-0.1"), "--fd-eps must be a finite number > 0"),
    (("--max-grad-norm", "0"), "--max-grad-norm must be a finite number > 0"),
    (("--b-ema", "1"), "--b-ema must lie in [0, 1)"),
    (("--b-ema", "-0.5"), "--b-ema must lie in [0, 1)"),
    (("--weight-decay", "1"), "--weight-decay must lie in [0, 1)"),
    (("--val-fraction", "0"), "--val-fraction must lie in (0, 1)"),
    (("--val-fraction", "1"), "--val-fraction must lie in (0, 1)"),
    # choices
    (("--stage", "d"), "unknown --stage 'd'"),
    (("--val-select", "random"), "unknown --val-select 'random'"),
    (("--sim-repr", "max"), "unknown --sim-repr"),
    (("--b-target", "online"), "unknown --b-target"),
    (("--b-pred-encoder", "x"), "unknown --b-pred-encoder"),
    (("--a-modes", "gist", "half"), "unknown --a-modes"),
    (("--b-losses", "mse"), "unknown --b-losses"),
    # buffers that cannot fit: refused with the estimate
    (("--batch-size", "100000000"), "GiB"),
    (("--n-embd", "65536", "--n-head", "64", "--n-kv-head", "64", "--n-layer", "64"), "GiB"),
    (("--stage", "c", "--c-chunk-len", "4000", "--eval-inner-steps", "1", "--c-online-steps", "1",
      "--meta-batch-size", "1000"), "GiB"),
    # tyro's own parse box
    (("--n-head", "abc"), None),
    (("--no-such-flag", "1"), None),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_bad_input_fails_fast_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    write_inputs(tmp_path)
    assert_bad_input(G, SCRIPT, argv, message, capsys, tmp_path, monkeypatch)


def test_memory_refusal_names_the_estimate(capsys, tmp_path, monkeypatch):
    err = assert_bad_input(G, SCRIPT, ("--batch-size", "100000000"), "needs about", capsys, tmp_path, monkeypatch)
    assert "1.017M parameters" in err and "GiB available" in err


def test_bad_input_in_a_subprocess_leaves_no_folder(run, tmp_path):
    (tmp_path / "broken.json").write_text("{}")
    proc, run_dir = run(SCRIPT, "--tokenizer", str(tmp_path / "broken.json"), extra_env=OFFLINE)
    assert proc.returncode == 2 and run_dir is None and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gist_meta.py: error: --tokenizer ") and "could not be loaded" in lines[0]


def test_check_args_is_pure_and_one_line():
    for changes, message in [({"num_gist_tokens": 0}, "--num-gist-tokens (k) must be at least 1"),
                             ({"inner_lr": 0.0}, "--inner-lr must be a finite number > 0"),
                             ({"n_head": 0}, "--n-head must be positive")]:
        with pytest.raises(ValueError) as e:
            G.check_args(G.Args(**changes))
        assert message in str(e.value) and "\n" not in str(e.value)


def test_too_short_corpus_is_one_line():
    args = G.check_args(G.Args(context_len=64, cont_len=16, c_chunk_len=32, eval_inner_steps=5, stage="a"))
    assert G.required_tokens(args) == 6 * 32 + 2                    # K + 1 consecutive chunks
    with_c = G.check_args(G.Args(c_chunk_len=32, c_online_steps=100, stage="c"))
    assert G.required_tokens(with_c) == 101 * 32 + 2                # the online stream
    ids = torch.zeros(G.required_tokens(args) - 1, dtype=torch.long)
    with pytest.raises(ValueError, match="the corpus is too short") as e:
        G.check_token_counts(ids, ids, G.required_tokens(args), "x")
    assert "\n" not in str(e.value)
    G.check_token_counts(torch.zeros(194), torch.zeros(194), G.required_tokens(args), "x")


def test_positions_and_derived_fields():
    args = G.check_args(G.Args(context_len=64, num_gist_tokens=4, cont_len=16, c_chunk_len=40, stage="b"))
    assert args.n_positions == 84 and args.run_stages == ("b",) and args.a_run_modes == ("gist",)
    assert G.check_args(G.Args(a_modes=("none", "full"))).a_run_modes == ("gist", "none", "full")
    G.check_positions(84, 84)
    with pytest.raises(ValueError, match="needs 85 positions"):
        G.check_positions(85, 84)


def test_stage_a_steps_default_per_corpus():
    # letters and kv need ~1000 steps for their positive control to reach 1 nat; an explicit value wins
    steps = {c: G.check_args(G.Args(corpus=c)).a_steps for c in G.CORPORA}
    assert steps == {"text": 300, "repeat": 300, "letters": 1000, "kv": 1000}
    assert G.check_args(G.Args(corpus="kv", a_steps=7)).a_steps == 7


def test_finalize_args_reads_the_tokenizer_and_estimates_memory():
    args = G.finalize_args(G.Args())
    assert args.gist_id == 256 and args.n_vocab == 257
    n_params = 1_017_088                                            # the defaults (docs/gist_meta.md)
    est = G.memory_estimate(args, n_params, 257, 128, 4, 4, 400_000)
    assert 4 * 10 * n_params < est < 2**31                           # weights and activations, well under 2 GiB
    bigger = G.memory_estimate(G.check_args(G.Args(batch_size=32)), n_params, 257, 128, 4, 4, 400_000)
    assert bigger > est


# ------------------------------------------------------------------------------------------------
# Runs (in process, temporary directory) and the real CLI path (subprocess)
# ------------------------------------------------------------------------------------------------
def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_all_stages_write_every_output(tmp_path):
    code, run_dir = run_in_process(G, SCRIPT, "step", tmp_path, *TINY)
    assert code == 0
    config = read_json(run_dir / "config.json")
    assert config["x_axis"] == "step" and config["args"]["stage"] == "all" and config["args"]["gist_id"] == 256
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps)
    starts = [r for r in rows if r["stage"] == "a" and r["stage_step"] == 0]     # CE at the init, every mask
    assert [r["step"] for r in starts] == [0, 6, 12, 18] and all("a/train_loss" not in r for r in starts)
    assert {r["a/mode"] for r in rows if r["stage"] == "a"} == {"gist", "full", "none", "neg"}
    assert any("b/pair_cos_pred" in r for r in rows) and any("c/outer_ce" in r for r in rows)
    c_rows = [r for r in rows if r["stage"] == "c" and "c/phi_gist_drift" in r]
    assert all(r["c/phi_gist_drift"] > 0 for r in c_rows)                 # phi is learned at every meta step
    assert len({r["c/loss_scale"] for r in c_rows}) == len(c_rows)
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "ok" and s["rows_logged"] == len(rows) and s["last_step"] == rows[-1]["step"]
    for key in ("a_ce_gist", "a_ce_full", "a_ce_none", "a_ce_neg", "a_retention_unchecked",
                "a_retention_neg_unchecked", "a_retention_head_unchecked", "a_control_ok", "a_ce_head_none", "a_gap_none_full", "a_gap_neg_full", "a_fwd_masked_ratio",
                "b_val_ce_gist", "b_val_ce_ce", "b_val_ce_none", "b_pair_cos_pred_final", "b_eff_rank_true_final",
                "b_grad_cos_ce_mean", "c_sec_per_meta_step", "c_meta_vs_plain", "c_loss_scale_final",
                *(f"c_eval_gain_{r}" for r in G.EVAL_RULES), *(f"c_online_ce_{r}" for r in G.ONLINE_RULES)):
        assert key in s and s[key] is not None, key
    assert s["a_gap_none_full"] == pytest.approx(s["a_ce_none"] - s["a_ce_full"])
    assert s["c_online_gain_none"] == 0.0 and s["c_online_ce_gist_meta"] != s["c_online_ce_gist_fixed"]
    assert -1 <= s["b_grad_cos_ce_mean"] <= 1 and s["b_grad_cos_ce_mean"] != 0
    raw = (s["a_ce_none"] - s["a_ce_gist"]) / (s["a_ce_none"] - s["a_ce_full"])
    assert s["a_retention_unchecked"] == pytest.approx(raw)
    assert s["a_control_ok"] == (s["a_gap_none_full"] >= 0.5)           # --a-min-gap 0.5 (default)
    assert s["a_retention"] == (pytest.approx(raw) if s["a_control_ok"] else None)
    head = [r["a/val_head_ce"] for r in rows if "a/val_head_ce" in r]
    assert head and all(math.isfinite(h) for h in head)
    assert s["a_ce_gist"] < math.log(257) - 0.1                   # stage A learns from a uniform start
    assert s["b_val_ce_ce"] < s["b_val_ce_none"]                  # true-CE updates help
    assert s["c_eval_gain_none"] == 0.0
    for png in ("stage_a.png", "stage_b.png", "stage_c.png"):
        assert (run_dir / png).stat().st_size > 1000


def test_stage_c_similar_second_order_is_deterministic(tmp_path):
    args = (*TINY, "--stage", "c", "--val-select", "similar", "--sim-repr", "mean", "--first-order", "False",
            "--meta-theta", "True", "--gist-proj", "False", "--learn-loss-scale", "False")
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()
    (c1, d1), (c2, d2) = (run_in_process(G, SCRIPT, "step", tmp_path / n, *args) for n in ("1", "2"))
    assert c1 == 0 and c2 == 0
    r1, r2 = read_metrics(d1), read_metrics(d2)
    assert comparable(r1) == comparable(r2)
    assert {r["a/mode"] for r in r1 if r["stage"] == "a"} == {"gist"}      # only the gist model for C
    assert not any(r["stage"] == "b" for r in r1)
    s1, s2 = read_json(d1 / "summary.json"), read_json(d2 / "summary.json")
    assert all(s1[f"c_eval_ce_{r}"] == s2[f"c_eval_ce_{r}"] for r in G.EVAL_RULES)
    assert "c_loss_scale_final" not in s1 and not (d1 / "stage_b.png").exists()


def test_stage_b_from_a_pretrained_checkpoint_with_ema_target_bpe_and_offline_tracking(run, tmp_path):
    model = tiny_model(vocab=256)
    model.save_pretrained(tmp_path / "ckpt")
    proc, run_dir = run(SCRIPT, *TINY, "--stage", "b", "--model-name-or-path", str(tmp_path / "ckpt"),
                        "--b-target", "ema", "--b-pred-encoder", "target", "--tokenizer", "bpe", "--vocab-size", "300",
                        "--b-losses", "gist", "none", "--track=True", "--wandb-project-name", "test", extra_env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    s = read_json(run_dir / "summary.json")
    assert s["n_params"] == sum(p.numel() for p in model.parameters()) + 44 * 16     # resized 256 -> 300 rows (tied)
    assert "b_val_ce_gist" in s and "b_val_ce_ce" not in s and "c_eval_ce_ce" not in s
    assert (run_dir / "tokenizer.json").exists()
    assert list((run_dir / "wandb").glob("offline-run-*/*.wandb"))


@pytest.mark.parametrize("where", ["stage_a", "stage_c"])
def test_non_finite_loss_stops_and_keeps_the_rows(where, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    if where == "stage_a":                      # NaN loss from the 4th stage-A step: caught at the step-6 row
        real = G.stage_a_losses

        def poisoned(*a, **kw):
            loss, cont = real(*a, **kw)
            calls["n"] += 1
            return (loss * float("nan"), cont) if calls["n"] >= 4 else (loss, cont)
        monkeypatch.setattr(G, "stage_a_losses", poisoned)
    else:                                       # NaN outer loss at the second meta step
        real = G.meta_gradients

        def poisoned(*a, **kw):
            inner, outer, grads = real(*a, **kw)
            calls["n"] += 1
            return inner, (outer * float("nan") if calls["n"] == 2 else outer), grads
        monkeypatch.setattr(G, "meta_gradients", poisoned)
    code, run_dir = run_in_process(G, SCRIPT, "step", tmp_path, *TINY, "--stage", "c")
    err = capsys.readouterr().err
    assert code == 1 and "stopped: non-finite loss" in err and "Traceback" not in err
    rows = read_metrics(run_dir)                                 # strict JSON: NaN became null
    s = read_json(run_dir / "summary.json")
    assert s["status"].startswith("non-finite loss nan at step") and s["rows_logged"] == len(rows)
    assert s["last_step"] == rows[-1]["step"]
    if where == "stage_a":
        assert [r["stage_step"] for r in rows] == [0, 3, 6] and rows[1]["a/train_loss"] is not None
        assert rows[2]["a/train_loss"] is None and "stage A" in s["status"]
    else:
        a_rows, c_rows = [r for r in rows if r["stage"] == "a"], [r for r in rows if r["stage"] == "c"]
        assert [r["stage_step"] for r in a_rows] == [0, 3, 6] and [r["stage_step"] for r in c_rows] == [1, 2]
        assert c_rows[0]["c/outer_ce"] is not None and c_rows[1]["c/outer_ce"] is None
        assert "stage C, outer loss" in s["status"] and "a_ce_gist" in s


def test_curve_table_reports_retention_only_over_passing_controls(capsys):
    """benchmark/gist_meta_issue13_tables.py curve: retention averages only the runs whose gap none - full
    reaches 1 nat, says how many passed, is undefined where none did, and uses the t quantile of n."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(G.__file__).parent / "benchmark"))
    T = importlib.import_module("gist_meta_issue13_tables")

    def run(seed, full, gist, none=3.0):
        r, raw, _ = G.retention(gist, full, none, 0.5)
        return {"seed": seed, "a_ce_full": full, "a_ce_gist": gist, "a_ce_none": none, "a_gap_none_full": none - full,
                "a_retention": r, "a_retention_unchecked": raw}

    runs = {"curve_P8_k4_n1000": [run(1, 1.0, 1.0), run(2, 1.0, 2.0), run(3, 2.5, 2.9)],   # gaps 2, 2, 0.5
            "curve_P16_k4_n1000": [run(1, 3.0, 2.0), run(2, 2.9, 2.9)]}                  # no control passes
    T.curve_table(runs)
    rows = {" | ".join(line.split(" | ")[:2]): line for line in capsys.readouterr().out.splitlines() if line[2:3].isdigit()}
    assert "0.750 ± 3.178 (2 of 3 runs pass)" in rows["| 8 | 4"]            # mean of 1.0 and 0.5; t(1) = 12.71
    assert "2.00 / 1.00, 2.00 / 0.50, 0.50 / —" in rows["| 8 | 4"]
    assert "undefined: positive control fails in all 2 runs" in rows["| 16 | 4"]
    assert T.ci([1.0, 2.0, 3.0]) == f"2.000 ± {4.303 * 1 / math.sqrt(3):.3f}"
