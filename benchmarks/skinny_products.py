"""The rank-wide products of a LoRA step, written with the small dimension last or first (not a test).

``course_lib.lora_fast`` computes, per group of LoRA layers and step, four products whose one side is
only ``n·rank`` wide: the forward's ``u = x Aᵀ`` and, backward, ``g B``, A's gradient ``(g B)ᵀ x`` and
B's gradient ``gᵀ u``. Each can be computed as written (tokens × rank, the small dimension last) or
transposed (rank × tokens, the small dimension first, e.g. ``A xᵀ``); the results are the same numbers.
For GPT-2 small's four group shapes (query-key-value with 3 × rank 4, out_proj, ff1, ff2) at 8 × 32
tokens this times the four products both ways, rounds interleaved, and prints the fastest round of each.

    python benchmarks/skinny_products.py [--threads 1] [--rounds 5] [--tokens 256]
"""
from __future__ import annotations

import argparse
import time

import torch

# (group, input width, output width, n·rank) for GPT-2 small with LoRA rank 4 on every block Linear
GROUPS = [("query-key-value", 768, 3 * 768, 12), ("out_proj", 768, 768, 4), ("ff1", 768, 3072, 4),
          ("ff2", 3072, 768, 4)]


def products(x: torch.Tensor, g: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool):
    """The four rank-wide products of one group's step, as written (``first=False``) or transposed."""
    if first:
        ut = a @ x.t()
        gbt = b.t() @ g.t()
        return ut, gbt, gbt @ x, ut @ g
    u = x @ a.t()
    gb = g @ b
    return u, gb, gb.t() @ x, g.t() @ u


def mean_time(args: tuple, repeats: int = 20) -> float:
    """Mean seconds of one call of :func:`products` with ``args``, after a warm-up call."""
    products(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        products(*args)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per batch (8 × 32 by default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.tokens} tokens, fp32, "
          f"fastest of {args.rounds} interleaved rounds of 20 calls")
    print("\n| group | in × out, n·rank | small dimension last, µs | small dimension first, µs | last / first |")
    print("|---|---|---|---|---|")
    total = {False: 0.0, True: 0.0}
    for name, d_in, d_out, r in GROUPS:
        x, g = torch.randn(args.tokens, d_in), torch.randn(args.tokens, d_out)
        a, b = torch.randn(r, d_in), torch.randn(d_out, r)
        last, first = products(x, g, a, b, False), products(x, g, a, b, True)
        for p, q in zip(last, first):   # the same numbers either way, up to the order of the sums (fp32 rounding)
            torch.testing.assert_close(p, q if p.shape == q.shape else q.t(), rtol=1e-5,
                                       atol=1e-5 * p.abs().max().item())
        times = {False: [], True: []}
        for _ in range(args.rounds):
            for first_flag in (False, True):
                times[first_flag].append(mean_time((x, g, a, b, first_flag)))
        best = {k: min(v) * 1e6 for k, v in times.items()}
        for k in total:
            total[k] += best[k]
        print(f"| {name} | {d_in} × {d_out}, {r} | {best[False]:,.0f} | {best[True]:,.0f} | "
              f"{best[False] / best[True]:.2f} |")
    print(f"| one block (4 groups) | | {total[False]:,.0f} | {total[True]:,.0f} | {total[False] / total[True]:.2f} |")


if __name__ == "__main__":
    main()
