"""Classification fine-tuning: loss and accuracy on the last token, the training loop, and
custom messages. Names follow the notebooks (``calc_loss_batch``, ``train_classifier``, ...)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import PAD_TOKEN_ID


def _last_token_logits(model: nn.Module, input_batch: torch.Tensor) -> torch.Tensor:
    # GPT-2 is causal: only the last position has attended to the whole message.
    return model(input_batch)[:, -1, :]


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the last token's logits against the labels (optionally class-weighted)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    weight = class_weights.to(device) if class_weights is not None else None
    return nn.functional.cross_entropy(_last_token_logits(model, input_batch), target_batch, weight=weight)


def _batches(loader: DataLoader, num_batches: int | None):
    n = len(loader) if num_batches is None else min(num_batches, len(loader))
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch


@torch.no_grad()
def calc_loss_loader(loader: DataLoader, model: nn.Module, device: torch.device,
                     num_batches: int | None = None, class_weights: torch.Tensor | None = None) -> float:
    """Mean batch loss over the first ``num_batches`` batches (all by default)."""
    losses = [calc_loss_batch(x, y, model, device, class_weights).item() for x, y in _batches(loader, num_batches)]
    return sum(losses) / len(losses) if losses else float("nan")


@torch.no_grad()
def predictions(loader: DataLoader, model: nn.Module, device: torch.device,
                num_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) labels over the first ``num_batches`` batches."""
    was_training = model.training
    model.eval()
    predicted, true = [], []
    for x, y in _batches(loader, num_batches):
        predicted.append(_last_token_logits(model, x.to(device)).argmax(dim=-1).cpu())
        true.append(y)
    model.train(was_training)
    if not predicted:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(predicted), torch.cat(true)


def calc_accuracy_loader(loader: DataLoader, model: nn.Module, device: torch.device,
                         num_batches: int | None = None) -> float:
    """Share of correctly classified examples."""
    predicted, true = predictions(loader, model, device, num_batches)
    return (predicted == true).float().mean().item() if len(true) else float("nan")


def per_class_accuracy(loader: DataLoader, model: nn.Module, device: torch.device,
                       num_classes: int = 2, num_batches: int | None = None) -> list[float]:
    """Accuracy within each true class (recall); for spam, class 1 is the share of spam caught."""
    predicted, true = predictions(loader, model, device, num_batches)
    return [((predicted == c) & (true == c)).sum().item() / max(1, (true == c).sum().item())
            for c in range(num_classes)]


@dataclass
class History:
    """What ``train_classifier`` measured, for plots and tables."""

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_accs: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    examples_seen: int = 0
    eval_examples_seen: list[int] = field(default_factory=list)


def train_classifier(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                     optimizer: torch.optim.Optimizer, device: torch.device, num_epochs: int,
                     eval_freq: int = 50, eval_iter: int = 5, class_weights: torch.Tensor | None = None,
                     progress: bool | None = None) -> History:
    """The fine-tuning loop: zero_grad, loss, backward, step; every ``eval_freq`` steps the loss on
    ``eval_iter`` batches, and after each epoch the accuracy on ``eval_iter`` batches."""
    from tqdm.std import tqdm

    if progress is None:
        progress = not os.environ.get("TQDM_DISABLE")
    history = History()
    step = -1
    for epoch in range(num_epochs):
        model.train()
        # A bar updated by hand: wrapping the loader in tqdm would change its shuffling.
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress, leave=False)
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device, class_weights)
            loss.backward()
            optimizer.step()
            history.examples_seen += input_batch.shape[0]
            step += 1
            if step % eval_freq == 0:
                model.eval()
                history.train_losses.append(calc_loss_loader(train_loader, model, device, eval_iter, class_weights))
                history.val_losses.append(calc_loss_loader(val_loader, model, device, eval_iter, class_weights))
                history.eval_examples_seen.append(history.examples_seen)
                model.train()
                bar.set_postfix(train_loss=f"{history.train_losses[-1]:.3f}", val_loss=f"{history.val_losses[-1]:.3f}")
            bar.update(1)
        bar.close()
        history.train_accs.append(calc_accuracy_loader(train_loader, model, device, eval_iter))
        history.val_accs.append(calc_accuracy_loader(val_loader, model, device, eval_iter))
    return history


@torch.no_grad()
def classify_text(text: str, model: nn.Module, tokenizer, device: torch.device, max_length: int,
                  labels: tuple[str, ...] = ("ham", "spam"), pad_token_id: int = PAD_TOKEN_ID) -> str:
    """The predicted label of one message, tokenized and padded as in training."""
    ids = tokenizer.encode(text)[:max_length]
    ids += [pad_token_id] * (max_length - len(ids))
    model.eval()
    logits = _last_token_logits(model, torch.tensor([ids], device=device))
    return labels[int(logits.argmax(dim=-1).item())]


def matthews_corrcoef(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Matthews correlation of binary predictions: +1 perfect, 0 no better than chance, -1 inverted.
    GLUE's metric for CoLA, where 70% of sentences are acceptable and accuracy alone flatters."""
    p, t = predicted.long(), true.long()
    tp = float(((p == 1) & (t == 1)).sum())
    tn = float(((p == 0) & (t == 0)).sum())
    fp = float(((p == 1) & (t == 0)).sum())
    fn = float(((p == 0) & (t == 1)).sum())
    denominator = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def accuracy_and_mcc(loader: DataLoader, model: nn.Module, device: torch.device) -> tuple[float, float]:
    """Accuracy and Matthews correlation over a whole loader."""
    predicted, true = predictions(loader, model, device)
    return (predicted == true).float().mean().item(), matthews_corrcoef(predicted, true)
