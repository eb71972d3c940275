"""Does an epoch pay for its many batch widths? (not a test; issue 21)

One epoch of the SMS training set in the course's batches (length-bucketed, 8 messages) through the
GPT-2 124M classifier (random weights: timing does not depend on them) with LoRA rank 4, trained as
``train_classifier`` trains it in bf16 (the fast path, autocast), run ``--passes`` times in one process.
If new shapes cost (oneDNN primitives made per shape, allocator growth), the first pass is the slowest.
``--multiple 8`` pads every batch to a multiple of 8 tokens (fewer distinct widths, more tokens):
the padding the classifier never reads, so only the time can change.

    python benchmarks/batch_widths.py [--multiple 1] [--passes 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.dataloaders import PAD_TOKEN_ID, create_dataloaders
from course_lib.model import GPTModel
from course_lib.precision import autocast, fast_training
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import configure_trainable
from course_lib.tokenizer import get_tokenizer
from course_lib.training import calc_loss_batch, make_adamw


def padded(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` with padding columns added up to a multiple of ``multiple`` tokens."""
    width = -(-x.shape[1] // multiple) * multiple
    return torch.cat([x, torch.full((x.shape[0], width - x.shape[1]), PAD_TOKEN_ID, dtype=x.dtype)], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiple", type=int, default=1, help="pad each batch to a multiple of this many tokens")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPTModel(get_config("gpt2-small (124M)"))
    add_classification_head(model, num_classes=2)
    configure_trainable(model, "lora", rank=4, alpha=8)
    train_loader = create_dataloaders(prepare_sms_splits(seed=123), get_tokenizer(), batch_size=8, context_length=1024,
                                      seed=123, batching="bucketed")[0]
    batches = [(padded(x, args.multiple), y) for x, y in train_loader]
    device = torch.device("cpu")
    optimizer = make_adamw(model, lr=1e-4)
    print(f"{platform.machine()}, torch {torch.__version__}, threads {args.threads}, load average "
          f"{os.getloadavg()[0]:.2f}; {len(batches)} batches, {len({x.shape[1] for x, _ in batches})} distinct widths, "
          f"{sum(x.numel() for x, _ in batches):,} tokens (padded to a multiple of {args.multiple})")
    model.train()
    with fast_training(model, "bf16"):
        for k in range(args.passes):
            start = time.perf_counter()
            for x, y in batches:
                optimizer.zero_grad()
                with autocast("bf16", device):
                    loss = calc_loss_batch(x, y, model, device)
                loss.backward()
                optimizer.step()
            print(f"pass {k + 1}: {time.perf_counter() - start:.1f} s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
