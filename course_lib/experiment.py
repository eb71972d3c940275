"""``course experiment``: fine-tune one fresh classifier per trainable-layers strategy and
compare them. Every finished run's files are written before the next run starts, so Ctrl-C
loses only the run in progress."""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .data import create_dataloaders, prepare_sms_splits
from .lora import count_parameters
from .plots import plot_history
from .profiles import Profile, pick_device, set_seed
from .strategies import STRATEGIES, build_classifier, save_checkpoint
from .tokenizer import get_tokenizer
from .training import calc_accuracy_loader, calc_loss_loader, per_class_accuracy, train_classifier

COLUMNS = ["model_size", "profile", "trainable_layers", "lora_rank", "lora_alpha", "trainable_params",
           "total_params", "num_epochs", "seed", "device", "train_acc_before", "val_acc_before",
           "test_acc_before", "train_acc", "val_acc", "test_acc", "test_spam_recall", "train_loss",
           "val_loss", "wall_time_s"]


@dataclass
class ExperimentConfig:
    profile: Profile
    model_size: str
    lora_rank: int = 4
    lora_alpha: float = 4
    trainable_layers: tuple[str, ...] = STRATEGIES
    num_epochs: int = 20
    batch_size: int = 8
    eval_iter: int = 50
    eval_iter_val: int = 5
    learning_rate: float = 5e-5
    seed: int = 123
    device: str | None = None
    output_dir: Path = Path("outputs")


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


def _accuracies(loaders, model, device) -> list[float]:
    return [round(calc_accuracy_loader(loader, model, device), 4) for loader in loaders]


def run_strategy(cfg: ExperimentConfig, strategy: str, loaders, device: torch.device) -> dict:
    """Train one fresh classifier with ``strategy``; write its CSV, checkpoint and plots."""
    set_seed(cfg.seed)
    model = build_classifier(cfg.model_size, strategy, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed).to(device)
    train_loader, val_loader, test_loader = loaders
    before = _accuracies(loaders, model, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=0.1)
    start = time.perf_counter()
    history = train_classifier(model, train_loader, val_loader, optimizer, device, cfg.num_epochs,
                               eval_freq=50, eval_iter=cfg.eval_iter_val)
    wall = time.perf_counter() - start
    after = _accuracies(loaders, model, device)
    count = count_parameters(model)
    row = {"model_size": cfg.model_size, "profile": cfg.profile.name, "trainable_layers": strategy,
           "lora_rank": cfg.lora_rank if strategy == "lora" else "", "lora_alpha": cfg.lora_alpha if strategy == "lora" else "",
           "trainable_params": count.trainable, "total_params": count.total, "num_epochs": cfg.num_epochs,
           "seed": cfg.seed, "device": str(device),
           "train_acc_before": before[0], "val_acc_before": before[1], "test_acc_before": before[2],
           "train_acc": after[0], "val_acc": after[1], "test_acc": after[2],
           "test_spam_recall": round(per_class_accuracy(test_loader, model, device)[1], 4),
           "train_loss": round(calc_loss_loader(train_loader, model, device, cfg.eval_iter), 4),
           "val_loss": round(calc_loss_loader(val_loader, model, device, cfg.eval_iter), 4),
           "wall_time_s": round(wall, 2)}
    save_checkpoint(model, checkpoint_path(cfg, strategy), cfg.model_size, strategy,
                    rank=cfg.lora_rank if strategy == "lora" else None,
                    alpha=cfg.lora_alpha if strategy == "lora" else None)
    figs = plot_history(history, cfg.num_epochs, cfg.output_dir / f"tl_{strategy}")
    for fig in figs:
        plt.close(fig)
    _write_csv(cfg.output_dir / f"tl_{strategy}_results.csv", [row])
    return row


def write_summary(cfg: ExperimentConfig, rows: list[dict]) -> None:
    """summary.csv and summary.md comparing the finished strategies."""
    _write_csv(cfg.output_dir / "summary.csv", rows)
    shown = ["trainable_layers", "trainable_params", "test_acc_before", "train_acc", "val_acc", "test_acc",
             "test_spam_recall", "train_loss", "val_loss", "wall_time_s"]
    lines = [f"Profile `{cfg.profile.name}`, model `{cfg.model_size}`, {cfg.num_epochs} epoch(s), seed {cfg.seed}.",
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
    print(f"Profile {cfg.profile.name}, model {cfg.model_size}, device {device}", flush=True)
    from .config import get_config

    loaders = create_dataloaders(prepare_sms_splits(seed=cfg.seed), get_tokenizer(), batch_size=cfg.batch_size,
                                 context_length=get_config(cfg.model_size)["context_length"],
                                 max_examples=cfg.profile.max_examples, seed=cfg.seed)
    rows: list[dict] = []
    try:
        for strategy in cfg.trainable_layers:
            print(f"== trainable_layers={strategy}", flush=True)
            rows.append(run_strategy(cfg, strategy, loaders, device))
            r = rows[-1]
            print(f"   test accuracy {r['test_acc_before']:.3f} -> {r['test_acc']:.3f}, "
                  f"{r['trainable_params']:,} trainable, {r['wall_time_s']} s", flush=True)
    except KeyboardInterrupt:
        print(f"\nInterrupted: {len(rows)} finished run(s) kept in {cfg.output_dir}.", flush=True)
        if rows:
            write_summary(cfg, rows)
        raise
    write_summary(cfg, rows)
    print(f"Summary: {cfg.output_dir / 'summary.md'}")
    return rows
