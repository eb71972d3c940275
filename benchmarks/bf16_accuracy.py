"""Does bf16 training cost accuracy? The smoke model trained the same way in fp32 and in bf16
(``train_classifier(precision=...)``, frozen weights held in bf16), on every training message,
then the validation and test accuracy of each, over several seeds.

Not a test (it takes minutes). The smoke model is a tiny randomly initialised GPT-2: its accuracies
say nothing about GPT-2, only whether bf16 changes what the same training reaches.

    python benchmarks/bf16_accuracy.py [--epochs 3] [--seeds 123 124 125]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from course_lib.dataloaders import create_dataloaders
from course_lib.precision import bf16_supported
from course_lib.profiles import get_profile, set_seed
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import build_classifier
from course_lib.tokenizer import get_tokenizer
from course_lib.training import calc_accuracy_loader, train_classifier

CPU = torch.device("cpu")


def run(precision: str, seed: int, epochs: int, loaders) -> tuple[float, float]:
    train, val, test = loaders
    profile = get_profile("smoke")
    set_seed(seed)
    model = build_classifier(profile.model_size, "lora", rank=4, alpha=8, seed=seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=profile.learning_rate, weight_decay=0.1)
    train_classifier(model, train, val, optimizer, CPU, num_epochs=epochs, eval_freq=50, eval_iter=5,
                     progress=False, precision=precision)
    return calc_accuracy_loader(val, model, CPU), calc_accuracy_loader(test, model, CPU)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 124, 125])
    args = parser.parse_args()
    if not bf16_supported(CPU):
        raise SystemExit("This CPU has no native bf16: nothing to compare.")
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare_sms_splits(Path(tmp))
        loaders = create_dataloaders(paths, get_tokenizer(), batch_size=8, batching="bucketed")
        print(f"smoke model, LoRA rank 4, {len(loaders[0].dataset)} training / {len(loaders[1].dataset)} validation / "
              f"{len(loaders[2].dataset)} test messages, {args.epochs} epochs, bucketed batches of 8\n")
        print("| seed | val fp32 | val bf16 | test fp32 | test bf16 |\n|---|---|---|---|---|")
        gaps = []
        for seed in args.seeds:
            (v32, t32), (v16, t16) = run("fp32", seed, args.epochs, loaders), run("bf16", seed, args.epochs, loaders)
            gaps.append(v16 - v32)
            print(f"| {seed} | {v32:.1%} | {v16:.1%} | {t32:.1%} | {t16:.1%} |", flush=True)
    print(f"\nvalidation accuracy, bf16 minus fp32: mean {100 * statistics.mean(gaps):+.2f} points, "
          f"largest gap {100 * max(map(abs, gaps)):.2f} points (target: within 1 point)")


if __name__ == "__main__":
    main()
