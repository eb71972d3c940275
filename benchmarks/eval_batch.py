"""What an evaluation pass costs per token as its batches grow (not a test).

The GPT-2 124M classifier (random weights: timing does not depend on them) with LoRA rank 4, in eval
mode under the course's fast path, is read at the last token of random batches of one width
(``--tokens``) and 8 to 128 rows, fp32 and bf16 (where the CPU has bf16 units); rounds interleaved,
the fastest round kept. ``--clock cpu`` (with ``--threads 1``) times this thread's CPU time, which
other work on a loaded machine changes far less than the wall clock. One shape repeated: on the SMS
splits' whole passes, batches of varied widths, running short messages more at a time did not pay
(docs/benchmarks.md), so evaluation keeps the loader's batch size.

    python benchmarks/eval_batch.py [--tokens 24] [--rounds 3] [--threads 1] [--clock cpu]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.model import GPTModel
from course_lib.precision import autocast, bf16_supported, fast_training
from course_lib.strategies import configure_trainable
from course_lib.training import classifier_logits

ROWS = (8, 16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=24, help="tokens per row (the SMS messages' median is about 24)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu times one thread's CPU time: use it with --threads 1.")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    model = GPTModel(get_config("gpt2-small (124M)"))
    add_classification_head(model)
    configure_trainable(model, "lora", rank=4, alpha=4)
    model.eval()
    precisions = ["fp32"] + (["bf16"] if bf16_supported(torch.device("cpu")) else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.clock} clock, {args.tokens} tokens "
          f"per row, {args.rounds} rounds, load average at start {os.getloadavg()[0]:.2f}\n")
    best: dict[tuple[str, int], float] = {}
    for precision in precisions:
        with fast_training(model, precision), torch.no_grad(), autocast(precision, "cpu"):
            for _ in range(args.rounds):
                for rows in ROWS:
                    x = torch.randint(0, 50257, (rows, args.tokens))
                    classifier_logits(model, x)  # warm-up: oneDNN primitives for this shape
                    start = clock()
                    classifier_logits(model, x)
                    per_token = (clock() - start) / x.numel()
                    best[precision, rows] = min(best.get((precision, rows), float("inf")), per_token)
    print("| rows | " + " | ".join(f"{p} µs/token | {p} / 8 rows" for p in precisions) + " |\n|---|"
          + "---|---|" * len(precisions))
    for rows in ROWS:
        print(f"| {rows} | " + " | ".join(f"{1e6 * best[p, rows]:.0f} | {best[p, rows] / best[p, 8]:.2f}"
                                          for p in precisions) + " |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
