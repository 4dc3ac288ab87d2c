"""Speed of self_critic_lm.py's steps on this machine: a plain LM training step, a phase-1 meta step
(without, with noise and with hotflip adversarial triples), a phase-2 self step (frozen critic: one extra forward of the
3L-token critic sequence under no_grad) on the same batch, and greedy generation with the KV cache.

    python benchmark/self_critic_speed.py --torch-threads 1 --repeats 20

Median wall time over --repeats after 3 warm-up steps, default model and batch of self_critic_lm.py.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import self_critic_lm as S  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=S.Args.block_size)
    ap.add_argument("--batch-size", type=int, default=S.Args.batch_size)
    opts = ap.parse_args()
    torch.set_num_threads(opts.torch_threads)
    torch.manual_seed(0)
    args = S.finalize_args(S.Args(block_size=opts.block_size, batch_size=opts.batch_size))
    tok, train_ids, _, model, info = S.prepare(args, torch.device("cpu"))
    banned = torch.zeros(info["n_rows"], dtype=torch.bool)
    banned[args.loss_id] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = S.sample_windows(train_ids, args.batch_size, args.block_size + 1, g)
    x, y = batch[:, :-1], batch[:, 1:]
    critic = copy.deepcopy(model).eval().requires_grad_(False)

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    steps = {
        "plain LM step (CE vs y)": lambda: update(S.cross_entropy(S.lm_logits(model, x), y)),
        "phase-2 self step (frozen critic)": lambda: update(S.self_loss(model, critic, x, y, args.loss_id, banned)[0]),
        "phase-1 meta step": lambda: update(S.meta_loss(model, x, y, args.loss_id, banned)[0]),
        "phase-1 meta step, adversarial noise": lambda: update(S.meta_loss(model, x, y, args.loss_id, banned,
                                                                            "noise")[0]),
        "phase-1 meta step, adversarial hotflip": lambda: update(S.meta_loss(model, x, y, args.loss_id, banned,
                                                                              "hotflip")[0]),
        "phase-2 step, truth control (no critic)": lambda: update(S.self_loss(model, None, x, y, args.loss_id,
                                                                               banned)[0]),
    }
    tokens = args.batch_size * args.block_size
    print(f"{info['n_params']:,} params, batch {args.batch_size} x {args.block_size} tokens "
          f"(critic {args.critic_len}), {opts.torch_threads} thread(s)")
    print("| step | ms | LM tokens/s | x plain step |\n|---|---|---|---|")
    base = None
    for name, fn in steps.items():
        ms = median_ms(fn, opts.repeats)
        base = base or ms
        print(f"| {name} | {ms:.0f} | {tokens / ms * 1000:,.0f} | {ms / base:.2f} |", flush=True)
    prompts = batch[:4, :S.PROMPT_LEN]
    gen = []
    median_ms(lambda: gen.append(S.greedy_samples(model, prompts, 64, [args.loss_id])[1]), 5)
    print(f"| greedy generation, 4 x 64 new tokens, KV cache | - | {sorted(gen)[len(gen) // 2]:,.0f} (generated) | - |")


if __name__ == "__main__":
    main()
