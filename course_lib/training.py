"""Classification fine-tuning: loss and accuracy at each message's last real token, the training
loop, and custom messages. Names follow the notebooks (``calc_loss_batch``, ``train_classifier``, ...).

Batches are right-padded with ``PAD_TOKEN_ID``. GPT-2 is causal, so the position that has read the
whole message is its last *real* token, not the last position of the padded row: every classifier
here reads the logits at ``last_token_index`` (computed from where the padding starts, exactly what
an attention mask would say), so a message's logits do not depend on how far it was padded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from .dataloaders import PAD_TOKEN_ID, group_by_length, sequential_loader
from .model import GPTModel
from .precision import autocast, describe_precision, fast_training, resolve_precision


def last_token_index(input_batch: torch.Tensor, pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor:
    """Position of each row's last real token in a right-padded (batch, width) batch: the largest
    position whose token is not ``pad_token_id``, a (batch,) long tensor in 0..width-1.

    Only the trailing run of pad tokens is padding: the pad id may also occur inside a message (GPT-2
    has no pad token, so 50256 = ``<|endoftext|>`` is borrowed), which is why this does not count the
    real tokens as Raschka's ch. 6 bonus code does (``mask.sum(dim=1) - 1``, the same answer while the
    pad id never occurs inside a message). A row that fills the width gives ``width - 1``; an all-pad
    row gives 0. The reference for notebook 07's exercise ``07-last-token``: hidden while it is graded.
    """
    positions = torch.arange(input_batch.shape[1], device=input_batch.device)
    real = input_batch != pad_token_id
    return torch.where(real, positions, torch.zeros_like(positions)).amax(dim=1)


def pool_last_token(logits: torch.Tensor, input_batch: torch.Tensor, lengths: torch.Tensor | None = None,
                    pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor:
    """(batch, classes) logits at each message's last real position of (batch, seq, classes) logits.

    ``lengths`` (real tokens per row) may be given; otherwise the positions come from the padding,
    through :func:`last_token_index`. Either way a message's logits do not depend on how far its row
    was padded, since a causal model's position t has read tokens 0..t only. A model
    whose output has one position (a (batch, classes) classifier wrapped as (batch, 1, classes)) is
    read at that position.
    """
    if logits.shape[1] != input_batch.shape[1]:
        return logits[:, -1, :]
    index = _last_positions(input_batch, lengths, pad_token_id)
    return logits[torch.arange(logits.shape[0], device=logits.device), index.to(logits.device)]


def _last_positions(input_batch: torch.Tensor, lengths: torch.Tensor | None, pad_token_id: int) -> torch.Tensor:
    """Each row's last real position: from ``lengths`` when given, else from the padding."""
    if lengths is None:
        return last_token_index(input_batch, pad_token_id)
    return (lengths.to(input_batch.device) - 1).clamp(min=0)


def last_position_logits(model: nn.Module, input_batch: torch.Tensor) -> torch.Tensor:
    """The logits at the last position of the padded row: what the original recipe read, and what is
    wrong with it (for almost every message that position is a pad token)."""
    return model(input_batch)[:, -1, :]


def classifier_logits(model: nn.Module, input_batch: torch.Tensor, lengths: torch.Tensor | None = None,
                      pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor:
    """(batch, classes) logits of a GPT classifier, read at each message's last real token.

    The course's ``GPTModel`` (also inside peft's wrapper) is asked for those positions only
    (``read_at``): its last block then skips the positions nobody reads (about 6% of GPT-2 small's matrix
    multiplications), for the same logits up to the last digits (``tests/test_lora_fast.py``). Any other
    model runs whole.
    """
    if _reads_positions(model):
        return model(input_batch, read_at=_last_positions(input_batch, lengths, pad_token_id))[:, 0, :]
    return pool_last_token(model(input_batch), input_batch, lengths, pad_token_id)


def _reads_positions(model: nn.Module) -> bool:
    """Whether ``model`` is the course's GPTModel (plain, or wrapped by peft) and no dropout in its last
    block draws random numbers (reading fewer positions would draw fewer masks and change a run)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, GPTModel):
        return False
    return not any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in base.trf_blocks[-1].modules())


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the last real token's logits against the labels (optionally class-weighted)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    weight = class_weights.to(device) if class_weights is not None else None
    logits = classifier_logits(model, input_batch)
    return nn.functional.cross_entropy(logits.float(), target_batch, weight=weight)


def _batches(loader: DataLoader, num_batches: int | None, progress: bool = False, desc: str = ""):
    n = len(loader) if num_batches is None else min(num_batches, len(loader))
    bar = _bar(n, desc, progress)
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch
        bar.update(1)
    bar.close()


def _bar(total: int, desc: str, progress: bool | None, leave: bool = False):
    from tqdm.auto import tqdm

    if progress is None:  # tqdm.auto's notebook bar ignores TQDM_DISABLE (tqdm 4.70: it passes disable itself)
        progress = not os.environ.get("TQDM_DISABLE")
    return tqdm(total=total, desc=desc, disable=not progress, leave=leave)


@dataclass
class SplitOutputs:
    """A classifier's logits at each example's last real token over (the first batches of) a loader,
    in the loader's order, with the labels and the sizes of the loader's batches: everything a
    whole-split metric needs, from one pass. ``loss`` averages batch means over the batches as the
    loader makes them, the number :func:`calc_loss_loader` reports."""

    logits: torch.Tensor       # (examples, classes), float32, on the CPU
    labels: torch.Tensor       # (examples,)
    batch_sizes: list[int]     # the loader's batches, in its order

    def predicted(self) -> torch.Tensor:
        """The predicted class of each example."""
        if not len(self.logits):
            return torch.empty(0, dtype=torch.long)
        return self.logits.argmax(dim=-1)

    def accuracy(self) -> float:
        """Share of correctly classified examples (nan for none)."""
        return (self.predicted() == self.labels).float().mean().item() if len(self.labels) else float("nan")

    def per_class_accuracy(self, num_classes: int = 2) -> list[float]:
        """Accuracy within each true class (recall); for spam, class 1 is the share of spam caught."""
        predicted, true = self.predicted(), self.labels
        return [((predicted == c) & (true == c)).sum().item() / max(1, (true == c).sum().item())
                for c in range(num_classes)]

    def loss(self, class_weights: torch.Tensor | None = None, num_batches: int | None = None) -> float:
        """Mean over the first ``num_batches`` batches (all by default) of each batch's cross-entropy,
        optionally class-weighted: what ``calc_loss_batch`` gives batch by batch, averaged."""
        weight = class_weights.to(self.logits.device) if class_weights is not None else None
        sizes = self.batch_sizes if num_batches is None else self.batch_sizes[:num_batches]
        losses, start = [], 0
        for size in sizes:
            batch = slice(start, start + size)
            losses.append(nn.functional.cross_entropy(self.logits[batch], self.labels[batch].to(self.logits.device),
                                                      weight=weight).item())
            start += size
        return sum(losses) / len(losses) if losses else float("nan")


@torch.no_grad()
def split_outputs(loader: DataLoader, model: nn.Module, device: torch.device, num_batches: int | None = None,
                  progress: bool = False, desc: str = "evaluation") -> SplitOutputs:
    """Run ``model`` once over the first ``num_batches`` batches of ``loader`` (all by default), in
    the mode it is in, and keep its logits at each example's last real token, in the loader's order.

    A loader that keeps the dataset's order and pads each batch to its longest message is run in
    batches of similar length instead (:func:`~course_lib.dataloaders.group_by_length`): the same
    examples, each read at its last real token, so the same predictions, for about the real tokens'
    cost instead of 1.75 x. The logits are put back in the loader's order. (Every classifier in this
    course reads a message independently of its padding; one that did not would need a loader of its
    own batches, e.g. ``list(loader)``, which is evaluated as it is.)
    """
    grouped = group_by_length(loader, num_batches)
    run_on = grouped.loader if grouped is not None else loader
    logits, labels, sizes = [], [], []
    for x, y in _batches(run_on, None if grouped is not None else num_batches, progress, desc):
        logits.append(classifier_logits(model, x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y).cpu())
        sizes.append(len(y))
    if not logits:
        return SplitOutputs(torch.empty(0, 0), torch.empty(0, dtype=torch.long), [])
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    if grouped is None:
        return SplitOutputs(all_logits, all_labels, sizes)
    in_order_logits, in_order_labels = torch.empty_like(all_logits), torch.empty_like(all_labels)
    in_order_logits[grouped.order], in_order_labels[grouped.order] = all_logits, all_labels
    return SplitOutputs(in_order_logits, in_order_labels, grouped.batch_sizes)


def calc_loss_loader(loader: DataLoader, model: nn.Module, device: torch.device,
                     num_batches: int | None = None, class_weights: torch.Tensor | None = None,
                     progress: bool = False, desc: str = "loss") -> float:
    """Mean batch loss over the first ``num_batches`` batches (all by default), in the mode the model
    is in. The batches are the loader's; the forward passes may regroup their examples by length
    (:func:`split_outputs`), which changes only the last digits."""
    return split_outputs(loader, model, device, num_batches, progress, desc).loss(class_weights)


def predictions(loader: DataLoader, model: nn.Module, device: torch.device,
                num_batches: int | None = None, progress: bool = False,
                desc: str = "predictions") -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) labels over the first ``num_batches`` batches, in the loader's order
    (``progress``: a tqdm bar). Evaluated in ``eval`` mode; the model's mode is restored after."""
    outputs = _eval_outputs(loader, model, device, num_batches, progress, desc)
    return outputs.predicted(), outputs.labels


def _eval_outputs(loader: DataLoader, model: nn.Module, device: torch.device, num_batches: int | None,
                  progress: bool, desc: str) -> SplitOutputs:
    """:func:`split_outputs` in ``eval`` mode, the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return split_outputs(loader, model, device, num_batches, progress, desc)
    finally:
        model.train(was_training)


def calc_accuracy_loader(loader: DataLoader, model: nn.Module, device: torch.device,
                         num_batches: int | None = None, progress: bool = False, desc: str = "accuracy") -> float:
    """Share of correctly classified examples (0 to 1) over the first ``num_batches`` batches of ``loader``
    (all by default), predicted at each example's last real token. Evaluated in ``eval`` mode (no dropout),
    the model's mode restored after; :func:`calc_loss_loader`, unlike it, runs in the mode the model is in."""
    return _eval_outputs(loader, model, device, num_batches, progress, desc).accuracy()


def per_class_accuracy(loader: DataLoader, model: nn.Module, device: torch.device,
                       num_classes: int = 2, num_batches: int | None = None, progress: bool = False,
                       desc: str = "per-class accuracy") -> list[float]:
    """Accuracy within each true class (recall); for spam, class 1 is the share of spam caught."""
    return _eval_outputs(loader, model, device, num_batches, progress, desc).per_class_accuracy(num_classes)


def make_adamw(model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, fused where PyTorch has the kernel (CPU, CUDA, MPS).

    The fused kernel applies the same update to all parameters in one pass; the loop it replaces costs
    about 30 small operations per parameter tensor (LoRA on GPT-2: 146 tensors, 4,500 operations a
    step). ``tests/test_training.py`` shows both give the same parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameter; configure what trains (configure_trainable) first.")
    fused = all(p.device.type in ("cpu", "cuda", "mps") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


@dataclass
class History:
    """What ``train_classifier`` measured, for plots and tables."""

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_accs: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    examples_seen: int = 0
    eval_examples_seen: list[int] = field(default_factory=list)
    precision: str = "fp32"


def train_classifier(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                     optimizer: torch.optim.Optimizer, device: torch.device, num_epochs: int,
                     eval_freq: int = 50, eval_iter: int = 5, class_weights: torch.Tensor | None = None,
                     progress: bool | None = None, precision: str = "fp32", compile: bool = False) -> History:
    """The fine-tuning loop: zero_grad, loss, backward, step; every ``eval_freq`` steps the training and
    validation losses on ``eval_iter`` batches (in eval mode; steps are counted from 0 across epochs, so
    the first measurement follows the first step), and after each epoch the accuracies on ``eval_iter``
    batches. The model is handed back in training mode. Notebook 07's ``train_classifier_simple`` is the
    same loop, without precision, class weights, progress bars or compiling.

    The training set is evaluated through its own non-shuffling loader, so evaluating never
    consumes the training loader's shuffling: ``eval_freq`` does not change what the model sees.
    ``precision``: ``fp32`` (default, exact), ``bf16`` (autocast) or ``auto`` (bf16 where the hardware
    has bf16 units; the choice is printed). LoRA layers train through :func:`fast_training`.
    ``compile``: train and evaluate through ``torch.compile(model)`` (off by default: on the development
    CPU compiling took minutes and the compiled step was no faster, docs/benchmarks.md).
    """
    history = History(precision=resolve_precision(precision, device))
    if precision == "auto":
        print(f"precision {describe_precision(precision, device)}", flush=True)
    with fast_training(model, history.precision):
        _train(torch.compile(model) if compile else model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
               class_weights, progress, history)
    return history


def _train(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, optimizer: torch.optim.Optimizer,
           device: torch.device, num_epochs: int, eval_freq: int, eval_iter: int,
           class_weights: torch.Tensor | None, progress: bool | None, history: History) -> None:
    train_eval_loader = sequential_loader(train_loader)
    step = -1
    for epoch in range(num_epochs):
        model.train()
        bar = _bar(len(train_loader), f"epoch {epoch + 1}/{num_epochs}", progress)
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            with autocast(history.precision, device):
                loss = calc_loss_batch(input_batch, target_batch, model, device, class_weights)
            loss.backward()
            optimizer.step()
            history.examples_seen += input_batch.shape[0]
            step += 1
            if step % eval_freq == 0:
                model.eval()
                with autocast(history.precision, device):
                    history.train_losses.append(calc_loss_loader(train_eval_loader, model, device, eval_iter, class_weights))
                    history.val_losses.append(calc_loss_loader(val_loader, model, device, eval_iter, class_weights))
                history.eval_examples_seen.append(history.examples_seen)
                model.train()
                bar.set_postfix(train_loss=f"{history.train_losses[-1]:.3f}", val_loss=f"{history.val_losses[-1]:.3f}")
            bar.update(1)
        bar.close()
        with autocast(history.precision, device):
            history.train_accs.append(calc_accuracy_loader(train_eval_loader, model, device, eval_iter))
            history.val_accs.append(calc_accuracy_loader(val_loader, model, device, eval_iter))


@torch.no_grad()
def classify_text(text: str, model: nn.Module, tokenizer, device: torch.device, max_length: int | None = None,
                  labels: tuple[str, ...] = ("ham", "spam"), pad_token_id: int = PAD_TOKEN_ID) -> str:
    """The predicted label of one message, read at its last real token (truncated to ``max_length``;
    padding it, as in training, changes nothing). Leaves the model in eval mode."""
    ids = tokenizer.encode(text)
    if max_length is not None:
        ids = ids[:max_length] + [pad_token_id] * (max_length - len(ids[:max_length]))
    model.eval()
    logits = classifier_logits(model, torch.tensor([ids], device=device), pad_token_id=pad_token_id)
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
