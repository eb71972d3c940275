"""Two PyTorch processes side by side, as two pytest workers run them: threads each, and OpenMP's wait policy
(not a test; issue 21's suite time).

Each process trains the GPT-2 124M architecture (random weights) for ``--steps`` full fine-tuning steps on a
batch of 8 x 48 tokens. Pairs are started together, ``--threads`` each, under ``OMP_WAIT_POLICY=PASSIVE``
(what conftest.py sets for every test and kernel) and under OpenMP's default (threads spin before they sleep),
rounds interleaved; the wall time of each pair is printed.

    python benchmarks/thread_pairs.py [--rounds 2] [--steps 4]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORK = """
import time, torch
from course_lib.config import get_config
from course_lib.model import GPTModel
torch.manual_seed(0)
model = GPTModel(get_config("gpt2-small (124M)"))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
x = torch.randint(0, 50257, (8, 48))
for _ in range({steps}):
    loss = model(x).logsumexp(-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


def pair(threads: int, policy: str | None, steps: int) -> float:
    """Wall seconds for two processes started together, each on ``threads`` threads."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORK.format(steps=steps)], env=env) for _ in range(2)]
    if any(p.wait() for p in procs):
        raise SystemExit("a worker failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; load average at the start {os.getloadavg()[0]:.2f}")
    variants = [(2, "PASSIVE"), (1, "PASSIVE"), (2, None), (1, None)]
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for threads, policy in variants:
            times[(threads, policy)].append(pair(threads, policy, args.steps))
    print("| threads per process | OMP_WAIT_POLICY | pair wall, s (each round) |\n|---|---|---|")
    for (threads, policy), walls in times.items():
        print(f"| {threads} | {policy or 'default'} | {' / '.join(f'{w:.1f}' for w in walls)} |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
