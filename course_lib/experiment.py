"""``course experiment``: fine-tune one fresh classifier per trainable-layers strategy and
compare them. Every finished run's files are written before the next run starts, so Ctrl-C
loses only the run in progress."""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch

from .dataloaders import create_dataloaders, sequential_loader
from .lora import count_parameters
from .plots import plot_history
from .precision import autocast, describe_precision, fast_training, resolve_precision
from .profiles import Profile, learning_rate_for, pick_device, set_seed
from .sms import prepare_sms_splits
from .strategies import STRATEGIES, build_classifier, save_checkpoint
from .tokenizer import get_tokenizer
from .training import SplitOutputs, make_adamw, split_outputs, train_classifier

COLUMNS = ["model_size", "profile", "trainable_layers", "lora_rank", "lora_alpha", "learning_rate", "trainable_params",
           "total_params", "num_epochs", "seed", "device", "train_acc_before", "val_acc_before",
           "test_acc_before", "train_acc", "val_acc", "test_acc", "test_spam_recall", "train_loss",
           "val_loss", "wall_time_s", "precision", "batching", "max_examples"]


@dataclass
class ExperimentConfig:
    profile: Profile
    model_size: str
    lora_rank: int = 4
    lora_alpha: float = 4
    trainable_layers: tuple[str, ...] = STRATEGIES
    num_epochs: int = 5
    batch_size: int = 8
    eval_iter: int = 50
    eval_iter_val: int = 5
    learning_rate: float | None = None  # None: each strategy's own (profiles.learning_rate_for); a number: all
    seed: int = 123
    device: str | None = None
    output_dir: Path = Path("outputs")
    eval_freq: int = 50
    max_examples: int | None = None  # per split; None = the profile's (all in full)
    precision: str = "fp32"
    batching: str = "bucketed"
    progress: bool | None = None  # None: shown unless TQDM_DISABLE is set
    compile: bool = False  # train through torch.compile (train_classifier's compile)


def checkpoint_path(cfg: ExperimentConfig, strategy: str) -> Path:
    name = f"llmgpt_rank{cfg.lora_rank}_alpha{cfg.lora_alpha:g}_tl_{strategy}.pth"
    return cfg.output_dir / "trainable_layers_checkpoints" / name


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _accuracies(loaders, model, device, precision: str, progress: bool | None, when: str) -> list[float]:
    return [round(out.accuracy(), 4) for out in _outputs(loaders, model, device, precision, progress, when)]


def _outputs(loaders, model, device, precision: str, progress: bool | None, when: str,
             num_batches: int | None = None) -> list[SplitOutputs]:
    """One evaluation pass (``eval`` mode) over each of the training, validation and test loaders:
    the accuracies, the test set's spam recall and the losses all come from it."""
    names = ("training", "validation", "test")
    was_training = model.training
    model.eval()
    try:
        with fast_training(model, precision), autocast(precision, device):
            return [split_outputs(loader, model, device, num_batches, progress=_show(progress),
                                  desc=f"{name} accuracy {when}") for name, loader in zip(names, loaders)]
    finally:
        model.train(was_training)


def _accuracies_before(loaders, model, device, precision: str, progress: bool | None,
                       shared: dict | None) -> list[float]:
    """The training, validation and test accuracies before training. Every strategy starts from the same
    classifier (the pretrained weights, the head drawn from the seed, LoRA's B at zero, which adds exactly
    nothing), so one experiment measures them once: ``shared`` (a dict kept across its strategies) holds the
    first classifier's accuracies and its logits on the first validation batch, and a later classifier whose
    logits there are the same (within 1e-5 of their scale) reuses them; any other is evaluated in full."""
    check = None
    if shared is not None:
        check = torch.cat([out.logits for out in _outputs(loaders[1:2], model, device, precision, False, "",
                                                          num_batches=1)])
        seen = shared.get("logits")
        if seen is not None and seen.shape == check.shape and check.numel() and \
                (seen - check).abs().max() <= 1e-5 * max(1.0, seen.abs().max().item()):
            return list(shared["accuracies"])
    accuracies = _accuracies(loaders, model, device, precision, progress, "before training")
    if shared is not None and "logits" not in shared:
        shared.update(logits=check, accuracies=accuracies)
    return accuracies


def _show(progress: bool | None) -> bool:
    return (not os.environ.get("TQDM_DISABLE")) if progress is None else progress


def strategy_learning_rate(cfg: ExperimentConfig, strategy: str) -> float:
    """``cfg.learning_rate`` when set (the same for every strategy), else ``strategy``'s own in the profile."""
    if cfg.learning_rate is not None:
        return cfg.learning_rate
    return learning_rate_for(cfg.profile, strategy, cfg.lora_rank, cfg.lora_alpha)


def run_strategy(cfg: ExperimentConfig, strategy: str, loaders, device: torch.device,
                 build: Callable[..., torch.nn.Module] = build_classifier,
                 timings: dict[str, tuple[float, float]] | None = None, before: dict | None = None) -> dict:
    """Train one fresh classifier with ``strategy``; write its CSV, checkpoint and plots.

    ``build(model_size, strategy, rank, alpha, seed=...)`` makes the classifier: GPT-2 by default;
    benchmarks/pretrained_proxy.py passes a pretrained encoder, so that the same loop is measured.
    ``timings``, when given, receives the (wall, process CPU) seconds of each phase (building,
    evaluation before training, training, evaluation after, saving): where a run's time went. ``before``, when
    given (one dict for all the strategies of an experiment), lets strategies that start from the same classifier
    share one measurement of the accuracies before training (:func:`_accuracies_before`)."""
    clock = _Phases(timings if timings is not None else {})
    set_seed(cfg.seed)
    model = build(cfg.model_size, strategy, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed).to(device)
    learning_rate = strategy_learning_rate(cfg, strategy)
    train_loader, val_loader, test_loader = loaders
    precision = resolve_precision(cfg.precision, device)
    train_eval = sequential_loader(train_loader)
    clock.mark("building")
    before = _accuracies_before((train_eval, val_loader, test_loader), model, device, precision, cfg.progress,
                                before)
    clock.mark("evaluation before")
    optimizer = make_adamw(model, lr=learning_rate, weight_decay=0.1)
    start = time.perf_counter()
    history = train_classifier(model, train_loader, val_loader, optimizer, device, cfg.num_epochs,
                               eval_freq=cfg.eval_freq, eval_iter=cfg.eval_iter_val, progress=cfg.progress,
                               precision=precision, compile=cfg.compile)
    wall = time.perf_counter() - start
    clock.mark("training")
    train_out, val_out, test_out = _outputs((train_eval, val_loader, test_loader), model, device, precision,
                                            cfg.progress, "after training")
    after = [round(out.accuracy(), 4) for out in (train_out, val_out, test_out)]
    recall = test_out.per_class_accuracy()[1]
    train_loss, val_loss = train_out.loss(num_batches=cfg.eval_iter), val_out.loss(num_batches=cfg.eval_iter)
    clock.mark("evaluation after")
    count = count_parameters(model)
    row = {"model_size": cfg.model_size, "profile": cfg.profile.name, "trainable_layers": strategy,
           "lora_rank": cfg.lora_rank if strategy == "lora" else "", "lora_alpha": cfg.lora_alpha if strategy == "lora" else "",
           "learning_rate": learning_rate,
           "trainable_params": count.trainable, "total_params": count.total, "num_epochs": cfg.num_epochs,
           "seed": cfg.seed, "device": str(device),
           "train_acc_before": before[0], "val_acc_before": before[1], "test_acc_before": before[2],
           "train_acc": after[0], "val_acc": after[1], "test_acc": after[2],
           "test_spam_recall": round(recall, 4), "train_loss": round(train_loss, 4), "val_loss": round(val_loss, 4),
           "wall_time_s": round(wall, 2), "precision": precision, "batching": cfg.batching,
           "max_examples": cfg.max_examples or ""}
    save_checkpoint(model, checkpoint_path(cfg, strategy), cfg.model_size, strategy,
                    rank=cfg.lora_rank if strategy == "lora" else None,
                    alpha=cfg.lora_alpha if strategy == "lora" else None)
    figs = plot_history(history, cfg.num_epochs, cfg.output_dir / f"tl_{strategy}")
    for fig in figs:
        plt.close(fig)
    _write_csv(cfg.output_dir / f"tl_{strategy}_results.csv", [row])
    clock.mark("saving")
    return row


class _Phases:
    """(wall, process CPU) seconds between successive marks, by phase name."""

    def __init__(self, into: dict[str, tuple[float, float]]) -> None:
        self.into, self.last = into, (time.perf_counter(), time.process_time())

    def mark(self, phase: str) -> None:
        now = (time.perf_counter(), time.process_time())
        wall, cpu = self.into.get(phase, (0.0, 0.0))
        self.into[phase] = (wall + now[0] - self.last[0], cpu + now[1] - self.last[1])
        self.last = now


def write_summary(cfg: ExperimentConfig, rows: list[dict]) -> None:
    """summary.csv and summary.md comparing the finished strategies."""
    _write_csv(cfg.output_dir / "summary.csv", rows)
    shown = ["trainable_layers", "learning_rate", "trainable_params", "test_acc_before", "train_acc", "val_acc", "test_acc",
             "test_spam_recall", "train_loss", "val_loss", "wall_time_s", "precision", "batching", "max_examples"]
    subset = f", at most {cfg.max_examples} examples per split" if cfg.max_examples else ""
    lines = [f"Profile `{cfg.profile.name}`, model `{cfg.model_size}`, {cfg.num_epochs} epoch(s), seed {cfg.seed}, "
             f"{rows[0]['precision'] if rows else cfg.precision}, {cfg.batching} batching{subset}.",
             "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in shown) + " |")
    (cfg.output_dir / "summary.md").write_text("\n".join(lines) + "\n")


def run_experiment(cfg: ExperimentConfig) -> list[dict]:
    """Run every strategy in ``cfg.trainable_layers``; returns one result row per finished run."""
    for strategy in cfg.trainable_layers:
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown trainable layers {strategy!r}; choose from {list(STRATEGIES)}.")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device, cfg.profile)
    if cfg.max_examples is None:
        cfg.max_examples = cfg.profile.max_examples
    print(f"Profile {cfg.profile.name}, model {cfg.model_size}, device {device}, precision "
          f"{describe_precision(cfg.precision, device)}, {cfg.num_epochs} epoch(s)", flush=True)
    if cfg.max_examples:
        print(f"Using at most {cfg.max_examples} examples per split (a subset, not the full data).", flush=True)
    from .config import get_config

    loaders = create_dataloaders(prepare_sms_splits(seed=cfg.seed), get_tokenizer(), batch_size=cfg.batch_size,
                                 context_length=get_config(cfg.model_size)["context_length"],
                                 max_examples=cfg.max_examples, seed=cfg.seed, batching=cfg.batching)
    rows: list[dict] = []
    before: dict = {}   # the accuracies before training, measured once for the strategies that share them
    try:
        for strategy in cfg.trainable_layers:
            print(f"== trainable_layers={strategy}, learning rate {strategy_learning_rate(cfg, strategy):g}", flush=True)
            timings: dict[str, tuple[float, float]] = {}
            rows.append(run_strategy(cfg, strategy, loaders, device, timings=timings, before=before))
            r = rows[-1]
            print(f"   test accuracy {r['test_acc_before']:.3f} -> {r['test_acc']:.3f}, "
                  f"{r['trainable_params']:,} trainable, {r['wall_time_s']} s", flush=True)
            print("   wall (CPU) time: " + ", ".join(f"{phase} {wall:.1f} s ({cpu:.1f} s)"
                                                  for phase, (wall, cpu) in timings.items()), flush=True)
    except KeyboardInterrupt:
        print(f"\nInterrupted: {len(rows)} finished run(s) kept in {cfg.output_dir}.", flush=True)
        if rows:
            write_summary(cfg, rows)
        raise
    write_summary(cfg, rows)
    print(f"Summary: {cfg.output_dir / 'summary.md'}")
    return rows
