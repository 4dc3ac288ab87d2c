"""The issue-14 speed targets, side by side in ONE process: P = 10,000 individuals, one 100-step FoodWorld lifetime
each, one torch thread; the rule off (--evolve actor: the plasticity-off throughput), the mpnn rule and the abcd rule
run interleaved (off, mpnn, abcd, off, mpnn, abcd, ...) for ROUNDS rounds, so the machine's load hits all three alike.
Prints individual-steps per CPU-second and per wall-second of each run and the median over rounds of each rule's
ratio to the rule-off run of the same round.
    python benchmark/ga_learning_rule_speed_ratio.py [ROUNDS=5] [SCRIPT=ga_learning_rule.py]
"""
import importlib.util
import statistics
import sys
import time

import torch

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
path = sys.argv[2] if len(sys.argv) > 2 else "ga_learning_rule.py"
spec = importlib.util.spec_from_file_location("ga", path)
M = importlib.util.module_from_spec(spec)
spec.loader.exec_module(M)
torch.set_num_threads(1)
P, STEPS, dev = 10_000, 100, torch.device("cpu")
modes = {"off": dict(evolve="actor"), "mpnn": dict(rule="mpnn"), "abcd": dict(rule="abcd")}
setup = {}
for name, kw in modes.items():
    args = M.finalize_args(M.Args(cuda=False, steps=STEPS, population_size=P, num_survivors=200, num_elites=20,
                                  evals_per_gen=1, eval_lifetimes=2, **kw))
    setup[name] = (args, torch.randn(P, args.genome_size, generator=torch.Generator().manual_seed(0)))
rates = {name: [] for name in modes}
with torch.inference_mode():
    for r in range(rounds):
        for name, (args, pop) in setup.items():
            c0, t0 = time.process_time(), time.perf_counter()
            M.run_lifetimes(args, pop, 1, M.lifetime_generator(1, r, dev), dev)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            rates[name].append((P * STEPS / cpu, P * STEPS / wall))
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        print(f"round {r}: " + "  ".join(f"{n} {rates[n][-1][0]:,.0f}/CPU-s {rates[n][-1][1]:,.0f}/s" for n in modes)
              + f"  load {load}", flush=True)
print("| run | individual-steps per CPU-s (median) | per wall-s (median) | ratio to rule off, CPU (median of rounds) | "
      "ratio, wall (median) |")
print("|---|---|---|---|---|")
for n in modes:
    cpu_ratio = statistics.median(rates[n][i][0] / rates["off"][i][0] for i in range(rounds))
    wall_ratio = statistics.median(rates[n][i][1] / rates["off"][i][1] for i in range(rounds))
    print(f"| {n} | {statistics.median(x[0] for x in rates[n]):,.0f} | {statistics.median(x[1] for x in rates[n]):,.0f} "
          f"| {cpu_ratio:.3f} | {wall_ratio:.3f} |")
