"""Training-step time and peak memory of LoRA vs peft vs last_block vs full fine-tuning, and
inference latency of LoRA unmerged / merged vs the base model, on the GPT-2 124M architecture.

Not a test: it prints one table of medians and the ratios the course promises, all measured in
this one run. Timings interleave the variants round by round, so that a machine slowing down
affects them all alike. Peak memory is measured in a fresh process per variant.

    python benchmarks/lora_step.py [--rounds 7] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics

import torch

import _peak
from _peak import peak_bytes, timed

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.lora import freeze_model, mark_only_lora_as_trainable, merge_lora, replace_linear_with_lora, unfreeze
from course_lib.model import GPTModel
from course_lib.strategies import configure_trainable

BATCH, TOKENS, RANK, ALPHA = 8, 120, 8, 16
TARGETS = ["W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2"]
TRAINING = ("ours_lora", "peft_lora", "last_block", "full")


def base_classifier(device: torch.device) -> GPTModel:
    torch.manual_seed(0)
    model = GPTModel(get_config("gpt2-small (124M)"))
    add_classification_head(model, 2)
    return model.to(device)


def build(variant: str, device: torch.device) -> torch.nn.Module:
    model = base_classifier(device)
    if variant == "ours_lora":
        freeze_model(model)
        replace_linear_with_lora(model, RANK, ALPHA, target_modules=TARGETS)
        mark_only_lora_as_trainable(model, also=["out_head"])
    elif variant == "peft_lora":
        import peft

        config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none")
        model = peft.get_peft_model(model, config)
        unfreeze(model.base_model.model.out_head)
    elif variant == "last_block":
        configure_trainable(model, "last_block")
    elif variant == "full":
        configure_trainable(model, "all")
    return model.to(device)


def make_step(model: torch.nn.Module, device: torch.device):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50257, (BATCH, TOKENS), generator=gen).to(device)
    labels = torch.randint(0, 2, (BATCH,), generator=gen).to(device)

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids)[:, -1, :], labels)
        loss.backward()
        optimizer.step()
    return step


def interleaved(fns: dict, rounds: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calling them in rotating order round by round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(fns[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_child(variant: str, device_name: str) -> None:
    """Run in a subprocess: two training steps, then print the peak memory in bytes."""
    device = torch.device(device_name)
    step = make_step(build(variant, device), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    print(json.dumps({"peak": peak_bytes(device)}))


def peak_memory(variant: str, device: torch.device) -> int:
    return _peak.peak_memory(__file__, variant, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.device)
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {BATCH} x {TOKENS} tokens, LoRA rank {RANK} on {len(TARGETS)} Linear layers per block")

    memory = {v: peak_memory(v, device) for v in TRAINING}
    models = {v: build(v, device) for v in TRAINING}
    step_time = interleaved({v: make_step(m, device) for v, m in models.items()}, args.rounds, device)
    del models

    ids = torch.randint(0, 50257, (BATCH, TOKENS), generator=torch.Generator().manual_seed(2)).to(device)
    base = base_classifier(device).eval()
    unmerged = build("ours_lora", device).eval()
    for layer in (m for m in unmerged.modules() if hasattr(m, "lora")):
        torch.nn.init.normal_(layer.lora.B, std=0.01)  # a trained-looking, non-zero update
    merged = copy.deepcopy(unmerged)
    merge_lora(merged)

    def infer(model):
        def run():
            with torch.no_grad():
                model(ids)
        return run
    infer_time = interleaved({"base": infer(base), "lora_unmerged": infer(unmerged), "lora_merged": infer(merged)},
                             args.rounds * 2, device)
    del base, unmerged, merged

    print("\n| training step | median s | peak memory MiB |\n|---|---|---|")
    for v in TRAINING:
        print(f"| {v} | {step_time[v]:.3f} | {memory[v] / 2**20:,.0f} |")
    print("\n| inference (forward, no grad) | median s |\n|---|---|")
    for v, t in infer_time.items():
        print(f"| {v} | {t:.3f} |")
    print("\n| ratio | measured | target |\n|---|---|---|")
    print(f"| ours / peft training step | {step_time['ours_lora'] / step_time['peft_lora']:.3f} | <= 1.05 |")
    print(f"| merged / base inference | {infer_time['lora_merged'] / infer_time['base']:.3f} | <= 1.03 |")
    print(f"| unmerged / base inference | {infer_time['lora_unmerged'] / infer_time['base']:.3f} | (for reference) |")
    print(f"| LoRA / full peak memory | {memory['ours_lora'] / memory['full']:.3f} | < 1 |")


if __name__ == "__main__":
    main()
