"""Turning GPT-2 into a classifier: a small head in place of the 50,257-way output layer."""
from __future__ import annotations

import torch
from torch import nn


def add_classification_head(model: nn.Module, num_classes: int = 2, seed: int | None = 123) -> nn.Linear:
    """Replace ``model.out_head`` with a fresh, trainable ``Linear(emb_dim, num_classes)``.

    A new layer (not an edit of the old one) matters: GPT-2's head shares its tensor with the
    token embedding, which must stay as it is. ``seed`` fixes the head's initial weights without
    touching the global random state the caller's own code draws from.
    """
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}.")
    emb_dim = model.tok_emb.weight.shape[1]
    if seed is None:
        head = nn.Linear(emb_dim, num_classes)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Linear(emb_dim, num_classes)
    head = head.to(model.tok_emb.weight.device)
    model.out_head = head
    return head
