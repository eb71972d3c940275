"""One LoRA training epoch on the real SMS training messages and the GPT-2 124M architecture
(random weights: timing does not depend on them): padding every message to 120 tokens vs padding
each batch to its longest message vs length buckets, fp32 vs bf16, and our LoRA vs peft's under
the same batching.

Not a test. Per variant it counts the tokens an epoch processes (padding included), times a
fixed number of training steps on batches spread over the epoch's range of lengths (interleaved
round by round with the other variants, so a machine slowing down affects them all alike),
projects the epoch and a 5-epoch run (with train_classifier's evaluations), and measures the peak
memory in a fresh process. Each model is held as train_classifier holds it (``fast_training``): in bf16
frozen Linear weights in bf16, ours and peft's alike, and our LoRA layers through the grouped fast path
(peft's layers are not ours, so they run as peft writes them); both use the fused AdamW of
``make_adamw``. All ratios come from this one run. ``--bare`` adds the same step with no LoRA at all (every
block frozen, the position embedding trained so that the backward still computes every block's input
gradient): what neither LoRA path can go below, hence the best ours / peft any LoRA path could reach here.

    python benchmarks/epoch_benchmark.py [--steps 8] [--device cuda] [--threads 1 --clock cpu] [--bare]

``--clock cpu`` (with ``--threads 1``) times the CPU time of the one thread that computes, which other
processes on a loaded machine change far less than the wall clock (the projected minutes then assume
the machine to yourself).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time

import _peak
import pandas as pd
import torch
from _peak import peak_bytes

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.dataloaders import SpamDataset, make_loader, sequential_loader
from course_lib.lora import LinearWithLoRA, unfreeze
from course_lib.model import GPTModel
from course_lib.precision import autocast, bf16_supported, fast_training
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import configure_trainable
from course_lib.tokenizer import get_tokenizer
from course_lib.training import calc_loss_batch, make_adamw

BATCH, RANK, ALPHA, EPOCHS, SEED = 8, 4, 4, 5, 123
FIXED_LENGTH = 120  # the training set's longest message: what every message was padded to before
EVAL_BATCHES_PER_EPOCH = 3 * 2 * 5 + 2 * 5  # train_classifier, eval_freq 50, eval_iter 5: 131 steps -> 3 evals


def training_set() -> SpamDataset:
    paths = prepare_sms_splits(seed=SEED)
    return SpamDataset(pd.read_csv(paths["train"]), get_tokenizer(), max_length=FIXED_LENGTH)


def epoch_batches(ds: SpamDataset, batching: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first epoch's batches exactly as training sees them."""
    if batching == "fixed120":
        return list(make_loader(ds, BATCH, "fixed", shuffle=True, seed=SEED, drop_last=True))
    return list(make_loader(ds, BATCH, batching, shuffle=True, seed=SEED))


def spread(batches: list, k: int) -> list:
    """k batches at evenly spaced quantiles of width: their mean step time estimates the epoch's."""
    ordered = sorted(batches, key=lambda b: b[0].shape[1])
    return [ordered[min(len(ordered) - 1, int((i + 0.5) * len(ordered) / k))] for i in range(k)]


def build(kind: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = GPTModel(get_config("gpt2-small (124M)"))
    add_classification_head(model, 2)
    if kind == "ours":
        configure_trainable(model, "lora", rank=RANK, alpha=ALPHA)
    elif kind == "bare":  # no LoRA at all, the same backward: the step no LoRA path can beat on this model
        for p in model.parameters():
            p.requires_grad_(False)
        unfreeze(model.out_head)
        model.pos_emb.weight.requires_grad_(True)  # its gradient needs every block's input gradient, as LoRA's does
    else:  # peft's LoRA on exactly the Linear layers ours wraps
        import peft

        ours = GPTModel(get_config("gpt2-small (124M)"))
        add_classification_head(ours, 2)
        configure_trainable(ours, "lora", rank=RANK, alpha=ALPHA)
        targets = sorted({n.split("trf_blocks.")[1].split(".", 1)[1] for n, m in ours.named_modules()
                          if isinstance(m, LinearWithLoRA)})
        del ours
        config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets, bias="none")
        model = peft.get_peft_model(model, config)
        unfreeze(model.base_model.model.out_head)
    return model.to(device)


def make_step(model: torch.nn.Module, precision: str, device: torch.device):
    optimizer = make_adamw(model, lr=1e-5)  # fused, as `course experiment` makes it, for ours and peft's alike

    def step(batch) -> None:
        x, y = batch
        optimizer.zero_grad()
        with autocast(precision, device):
            loss = calc_loss_batch(x, y, model, device)
        loss.backward()
        optimizer.step()
    return step


def make_eval(model: torch.nn.Module, precision: str, device: torch.device):
    def run(batch) -> None:
        with torch.no_grad(), autocast(precision, device):
            calc_loss_batch(batch[0], batch[1], model, device)
    return run


def timed(fn, batch, device: torch.device, clock: str = "wall") -> float:
    if clock == "cpu":  # this thread's CPU time: one thread computes everything
        start = time.thread_time()
        fn(batch)
        return time.thread_time() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def memory_child(variant: str, device_name: str) -> None:
    """In a fresh process: two training steps on the epoch's widest batch; print the peak memory."""
    device = torch.device(device_name)
    kind, batching, precision = variant.split(":")
    batch = max(epoch_batches(training_set(), batching), key=lambda b: b[0].shape[1])
    model = build(kind, device)
    step = make_step(model, precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with fast_training(model, precision):
        for _ in range(2):
            step(batch)
    print(json.dumps({"peak": peak_bytes(device)}))


def peak_memory(variant: str, device: torch.device) -> int:
    return _peak.peak_memory(__file__, variant, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--bare", action="store_true",
                        help="also time the same step with no LoRA at all (the position embedding trained instead, so "
                             "the backward still reaches every block): the floor of ours / peft")
    parser.add_argument("--batchings", default="fixed120,per_batch,bucketed",
                        help="comma-separated subset (bucketed is what training uses)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time (needs --threads 1 on a CPU), less sensitive to other load")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.device)
        return
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu times one thread's CPU time: use it with --threads 1 on a CPU.")
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
    ds = training_set()
    real = sum(ds.lengths)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{len(ds)} training messages, {real:,} real tokens (mean {real / len(ds):.1f}); batch {BATCH}; "
          f"GPT-2 124M architecture, random weights; LoRA rank {RANK}; {args.steps} timed steps per variant; "
          f"{args.clock} clock; load average at start {os.getloadavg()[0]:.2f}")

    batchings = args.batchings.split(",")
    variants = [f"ours:{b}:{p}" for b in batchings for p in precisions]
    if not args.no_peft:
        variants += [f"peft:bucketed:{p}" for p in precisions]
    if args.bare:
        variants += [f"bare:bucketed:{p}" for p in precisions]
    epochs = {b: epoch_batches(ds, b) for b in batchings}
    tokens = {b: sum(x.numel() for x, _ in epochs[b]) for b in batchings}
    eval_batches = list(sequential_loader(make_loader(ds, BATCH, "bucketed", seed=SEED)))
    # one model per (LoRA, precision), held as train_classifier holds it (frozen weights in bf16 for bf16)
    stack = contextlib.ExitStack()
    models = {}
    for kind, precision in {tuple(v.split(":")[::2]) for v in variants}:
        models[kind, precision] = build(kind, device)
        stack.enter_context(fast_training(models[kind, precision], precision))
    fns = {v: make_step(models[v.split(":")[0], v.split(":")[2]], v.split(":")[2], device) for v in variants}
    fns.update({f"eval:{p}": make_eval(models["ours", p], p, device) for p in precisions})
    samples = {v: spread(epochs[v.split(":")[1]], args.steps) for v in variants}
    samples.update({f"eval:{p}": spread(eval_batches, args.steps) for p in precisions})
    for v in fns:  # warm-up
        fns[v](samples[v][0])
    times: dict[str, list[float]] = {v: [] for v in fns}
    names = list(fns)
    for r in range(args.steps):
        for v in names[r % len(names):] + names[:r % len(names)]:
            times[v].append(timed(fns[v], samples[v][r], device, args.clock))
    stack.close()
    print(f"load average at end of the timed rounds {os.getloadavg()[0]:.2f}")
    del models, fns
    memory = {} if args.no_memory else {v: peak_memory(v, device) for v in variants}

    rows = {}
    print("\n| variant | tokens/epoch | x real | s/step (mean) | s/epoch (projected) | 5 epochs, min (projected) "
          "| peak memory MiB |\n|---|---|---|---|---|---|---|")
    for v in variants:
        kind, batching, precision = v.split(":")
        step = statistics.mean(times[v])
        epoch = step * len(epochs[batching])
        eval_epoch = statistics.mean(times[f"eval:{precision}"]) * EVAL_BATCHES_PER_EPOCH
        five = EPOCHS * (epoch + eval_epoch) / 60
        rows[v] = (step, epoch, five)
        mem = f"{memory[v] / 2**20:,.0f}" if v in memory else "-"
        print(f"| {'no' if kind == 'bare' else kind} LoRA, {batching}, {precision} | {tokens[batching]:,} | {tokens[batching] / real:.2f} | "
              f"{step:.3f} | {epoch:.0f} | {five:.1f} | {mem} |")

    best = min((v for v in variants if v.startswith("ours")), key=lambda v: rows[v][2])
    print("\n| ratio (this run) | measured | target |\n|---|---|---|")
    print(f"| tokens/epoch, bucketed / real | {tokens['bucketed'] / real:.3f} | <= 1.15 |")
    if "fixed120" in batchings:
        print(f"| tokens/epoch, fixed-120 / real | {tokens['fixed120'] / real:.3f} | (before) |")
        print(f"| epoch time, fixed-120 / bucketed (fp32) | "
              f"{rows['ours:fixed120:fp32'][1] / rows['ours:bucketed:fp32'][1]:.2f} | |")
    if "bf16" in precisions:
        for b in batchings:
            print(f"| epoch time, fp32 / bf16 ({b}) | {rows[f'ours:{b}:fp32'][1] / rows[f'ours:{b}:bf16'][1]:.2f} | >= 1.5 |")
    if not args.no_peft:
        for p in precisions:
            print(f"| epoch time, ours / peft (bucketed, {p}) | "
                  f"{rows[f'ours:bucketed:{p}'][1] / rows[f'peft:bucketed:{p}'][1]:.3f} | <= 0.9 |")
        for p in precisions:  # each round times both on the same batch, so their ratio is steadier under load
            per_round = sorted(a / b for a, b in zip(times[f"ours:bucketed:{p}"], times[f"peft:bucketed:{p}"]))
            print(f"| step time, ours / peft (bucketed, {p}), median of the {len(per_round)} same-batch rounds "
                  f"(min-max) | {statistics.median(per_round):.3f} ({per_round[0]:.2f}-{per_round[-1]:.2f}) | <= 0.9 |")
    for p in precisions if args.bare else []:  # what no LoRA path could improve on: the rest of the step
        if not args.no_peft:
            per_round = sorted(a / b for a, b in zip(times[f"bare:bucketed:{p}"], times[f"peft:bucketed:{p}"]))
            print(f"| step time, no LoRA at all / peft (bucketed, {p}): the floor of ours / peft, median of the "
                  f"{len(per_round)} same-batch rounds (min-max) | {statistics.median(per_round):.3f} "
                  f"({per_round[0]:.2f}-{per_round[-1]:.2f}) | |")
        per_round = sorted(a / b for a, b in zip(times[f"ours:bucketed:{p}"], times[f"bare:bucketed:{p}"]))
        print(f"| step time, ours / no LoRA at all (bucketed, {p}): what our LoRA path adds, median (min-max) | "
              f"{statistics.median(per_round):.3f} ({per_round[0]:.2f}-{per_round[-1]:.2f}) | |")
    print(f"| 5-epoch LoRA run, fastest ({best.split(':', 1)[1]}), projected min | {rows[best][2]:.1f} | <= 8 |")
    if "fixed120" in batchings:
        print(f"| 5-epoch LoRA run, fixed-120 fp32 (before), projected min | {rows['ours:fixed120:fp32'][2]:.1f} | |")


if __name__ == "__main__":
    main()
