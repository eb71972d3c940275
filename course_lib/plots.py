"""Training curves against epochs (bottom axis) and examples seen (top axis)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt


def plot_values(epochs_seen, examples_seen, train_values, val_values, label: str = "loss",
                path: str | Path | None = None, title: str | None = None):
    """Plot train and validation values; save a PNG to ``path`` if given. Returns the figure."""
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"validation {label}")
    ax1.set_xlabel("epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()  # the same curve, read against examples seen
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("examples seen")
    if title:
        ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def plot_history(history, num_epochs: int, path_prefix: str | Path | None = None):
    """Loss and accuracy curves of a :class:`~course_lib.training.History`, saved as
    ``<prefix>-loss.png`` and ``<prefix>-accuracy.png``."""
    import torch

    seen = max(history.examples_seen, 1)  # drawn where each loss was measured, not spread evenly over the run
    epochs = [num_epochs * examples / seen for examples in history.eval_examples_seen]
    loss_fig = plot_values(epochs, history.eval_examples_seen, history.train_losses, history.val_losses, "loss",
                           f"{path_prefix}-loss.png" if path_prefix else None)
    acc_epochs = list(range(1, len(history.train_accs) + 1))
    acc_examples = torch.linspace(0, history.examples_seen, len(history.train_accs) + 1)[1:].tolist()
    acc_fig = plot_values(acc_epochs, acc_examples, history.train_accs, history.val_accs, "accuracy",
                          f"{path_prefix}-accuracy.png" if path_prefix else None)
    return loss_fig, acc_fig
