"""Which layers train: LoRA, the last block, the head alone, or everything; and checkpoints
that store exactly what a strategy changed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .classifier import add_classification_head
from .lora import freeze_model, mark_only_lora_as_trainable, replace_linear_with_lora, unfreeze
from .profiles import STRATEGIES, learning_rate_for  # noqa: F401  (each strategy's learning rate)
from .weights import load_gpt2


def configure_trainable(model: nn.Module, strategy: str, rank: int = 4, alpha: float = 4,
                        target_modules: list[str] | None = None) -> None:
    """Set what trains in a classifier (its head already replaced):

    ``lora``: base frozen, LoRA on the blocks' Linear layers, head trainable;
    ``last_block``: last transformer block, final norm and head; ``last_layer``: head only;
    ``all``: full fine-tuning.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown trainable_layers {strategy!r}; choose one of {list(STRATEGIES)}.")
    freeze_model(model)
    if strategy == "all":
        unfreeze(model)
    elif strategy == "lora":
        replace_linear_with_lora(model, rank, alpha, target_modules=target_modules)
        mark_only_lora_as_trainable(model, also=["out_head"])
    else:
        unfreeze(model.out_head)
        if strategy == "last_block":
            unfreeze(model.trf_blocks[-1])
            unfreeze(model.final_norm)


def build_classifier(model_size: str, strategy: str, rank: int = 4, alpha: float = 4,
                     num_classes: int = 2, target_modules: list[str] | None = None,
                     seed: int = 123) -> nn.Module:
    """A fresh pretrained GPT-2 with a ``num_classes`` head, configured for ``strategy``."""
    model, _ = load_gpt2(model_size)
    add_classification_head(model, num_classes, seed=seed)
    configure_trainable(model, strategy, rank, alpha, target_modules)
    return model


def save_checkpoint(model: nn.Module, path: str | Path, model_size: str, strategy: str,
                    rank: int | None = None, alpha: float | None = None,
                    target_modules: list[str] | None = None) -> Path:
    """Save what ``strategy`` trained, and only that: for ``lora`` the LoRA matrices and the head
    (with the rank, alpha and targets to rebuild them), for ``last_layer`` the head, for
    ``last_block`` the last block, final norm and head; for ``all`` the full state. A fresh
    pretrained base model plus this file rebuilds the classifier (``load_checkpoint``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if strategy == "lora":
        state = {k: v for k, v in state.items() if ".lora." in k or k.startswith("out_head.")}
    elif strategy != "all":
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trained}
    meta = {"model_size": model_size, "strategy": strategy, "rank": rank, "alpha": alpha,
            "target_modules": target_modules, "num_classes": model.out_head.out_features
            if isinstance(model.out_head, nn.Linear) else None}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"meta": meta, "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()}}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, model_size: str, rank: int | None = None) -> nn.Module:
    """Rebuild a fine-tuned classifier: a fresh base model of ``model_size`` plus the checkpoint.

    A checkpoint made for another model size or LoRA rank is refused, naming both.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; train one first (e.g. `course experiment`).")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict[str, Any] = saved["meta"]
    if meta["model_size"] != model_size:
        raise ValueError(f"{path.name} was trained on {meta['model_size']!r}, not {model_size!r}; "
                         "load it with the model size it was trained on.")
    if rank is not None and meta["rank"] != rank:
        raise ValueError(f"{path.name} holds LoRA rank {meta['rank']}, not rank {rank}; use rank={meta['rank']}.")
    model = build_classifier(model_size, meta["strategy"], rank=meta["rank"] or 4, alpha=meta["alpha"] or 4,
                             num_classes=meta["num_classes"], target_modules=meta["target_modules"])
    result = model.load_state_dict(saved["state_dict"], strict=meta["strategy"] == "all")
    if result.unexpected_keys:
        raise ValueError(f"{path.name} has tensors this model does not: {result.unexpected_keys[:3]}.")
    model.eval()
    return model


