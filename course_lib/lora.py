"""LoRA: a frozen weight W plus a trainable low-rank update (alpha / rank) · B A.

``B`` (out_dim × rank) starts at zero, so B A = 0 and a freshly wrapped layer computes exactly what
the original did. ``A`` (rank × in_dim) starts random: Kaiming-uniform with a = √5, as peft
initialises ``lora_A`` by default and as ``nn.Linear`` initialises its weight (Hu et al. 2021,
Section 4.1, draw A from a random Gaussian instead; the start is the same either way, B A = 0).
Which factor is zero is not a free choice: B = 0 tolerates larger learning rates than A = 0 (Hayou
et al. 2024, "The Impact of Initialization on LoRA Finetuning Dynamics", NeurIPS). The names (A, B,
alpha, scaling = alpha / rank) follow Hu et al. and peft, so weights can be compared one to one.
"""
from __future__ import annotations

import math
from typing import NamedTuple
from collections.abc import Iterable

import torch
from torch import nn


def _check_rank_alpha(rank: int, alpha: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer (e.g. 4, 8 or 16), got {rank!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number (often equal to rank or twice it), got {alpha!r}.")


class LoRALayer(nn.Module):
    """The low-rank path alone: x ↦ (alpha / rank) · dropout(x) Aᵀ Bᵀ, for x of shape (..., in_dim).

    A is (rank × in_dim), B (out_dim × rank), so (alpha / rank) · B A has the shape of the wrapped
    weight. Dividing by the rank lets alpha be set once while the rank changes (Hu et al. 2021, Section
    4.1; notebook 04, "Why α / r"). ``dropout`` (peft's ``lora_dropout``) applies to this path's input
    only, in training mode; the default 0 is the identity. Notebook 04's exercise is this class without
    dropout.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        _check_rank_alpha(rank, alpha)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_dim))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear and peft initialise lora_A
        self.B = nn.Parameter(torch.zeros(out_dim, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (alpha / rank) scales the rank-wide intermediate: rank numbers per token, not out_dim
        return (self.dropout(x) @ self.A.T * self.scaling) @ self.B.T

    def delta_weight(self) -> torch.Tensor:
        """The update this layer adds to a (out_dim × in_dim) weight: (alpha / rank) · B A."""
        return self.scaling * (self.B @ self.A)


class LinearWithLoRA(nn.Module):
    """A frozen ``nn.Linear`` plus a :class:`LoRALayer`: h = W x + b + (alpha / rank) · B A x.

    The constructor freezes the wrapped layer's weight and bias, and only those: A and B are what trains.
    ``merge()`` folds the update into the weight, ``unmerge()`` takes it out again; each acts once, however
    often it is called (the ``merged`` flag).
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LinearWithLoRA wraps an nn.Linear, not a {type(linear).__name__}.")
        self.linear = linear
        for p in self.linear.parameters():
            p.requires_grad_(False)
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha, dropout)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.linear(x)
        return self.linear(x) + self.lora(x)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (alpha/rank)·B A: inference then costs exactly what the base layer costs. In eval mode
        the output is unchanged (up to rounding); with LoRA dropout in training mode it is not, since the
        merged weight sees x without dropout."""
        if not self.merged:
            self.linear.weight += self.lora.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`, so that training can go on."""
        if self.merged:
            self.linear.weight -= self.lora.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.lora.rank}, alpha={self.lora.alpha}, merged={self.merged}"


def _matches(name: str, keys: Iterable[str]) -> str | None:
    """The key that names module ``name`` exactly or as its last dotted part(s), as peft matches."""
    for key in keys:
        if name == key or name.endswith("." + key):
            return key
    return None


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float,
                             target_modules: Iterable[str] | None = None,
                             exclude: Iterable[str] = ("out_head",), dropout: float = 0.0) -> list[str]:
    """Wrap ``nn.Linear`` layers of ``model`` in :class:`LinearWithLoRA`, in place.

    ``target_modules`` (None = every Linear) and ``exclude`` match a module's name or its dotted
    suffix, e.g. ``"W_query"`` or ``"att.W_query"`` (a name matches a key when it equals it or ends
    with ``"." + key``, as peft 0.21.2's ``check_target_module_exists`` in ``peft/tuners/tuners_utils.py``
    matches a list); a layer named in ``exclude`` is left out even when a target names it, as peft's
    ``exclude_modules``. Layers already wrapped are left alone, so a second call changes nothing.
    Only the wrapped layers change (their weight and bias frozen, A and B trainable): freeze the rest of
    the model first, as notebook 05 does. Returns the full dotted names of the layers it wrapped; a
    target that names no Linear layer raises ValueError.
    """
    _check_rank_alpha(rank, alpha)
    targets = list(target_modules) if target_modules is not None else None
    exclude = list(exclude)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
               and not name.endswith(".linear")]  # a wrapped layer's inner Linear is not a target
    if targets is not None:
        if not targets:
            raise ValueError("target_modules is empty; pass None to wrap every Linear layer.")
        unknown = [t for t in targets if not any(_matches(n, [t]) for n in linears)]
        if unknown:
            raise ValueError(f"No Linear layer is named {unknown[0]!r}; names look like "
                             f"{linears[:3] or ['W_query']} (a suffix such as 'W_query' matches every block).")
    replaced: list[str] = []
    _replace(model, "", rank, alpha, targets, exclude, dropout, replaced)
    already = any(isinstance(m, LinearWithLoRA) for m in model.modules())
    if not replaced and not already:
        raise ValueError("The model has no nn.Linear layer to wrap (after `exclude` and `target_modules`); "
                         "check those arguments.")
    return replaced


def _replace(module: nn.Module, prefix: str, rank: int, alpha: float, targets: list[str] | None,
             exclude: list[str], dropout: float, replaced: list[str]) -> None:
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, LinearWithLoRA):
            continue  # idempotent: never wrap twice
        if isinstance(child, nn.Linear):
            if _matches(name, exclude) or (targets is not None and not _matches(name, targets)):
                continue
            setattr(module, child_name, LinearWithLoRA(child, rank, alpha, dropout))
            replaced.append(name)
        else:
            _replace(child, name + ".", rank, alpha, targets, exclude, dropout, replaced)


def lora_layers(model: nn.Module) -> dict[str, LinearWithLoRA]:
    """Every wrapped layer of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearWithLoRA)}


def freeze_model(model: nn.Module) -> None:
    """Make every parameter of ``model`` untrainable."""
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """Make every parameter of ``module`` trainable (e.g. a new classification head)."""
    for p in module.parameters():
        p.requires_grad_(True)


def mark_only_lora_as_trainable(model: nn.Module, also: Iterable[str] = ()) -> None:
    """Freeze everything but the LoRA matrices, plus the modules named in ``also``."""
    freeze_model(model)
    for layer in lora_layers(model).values():
        unfreeze(layer.lora)
    for name in also:
        unfreeze(model.get_submodule(name))


class ParameterCount(NamedTuple):
    trainable: int
    total: int
    fraction: float

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} ({100 * self.fraction:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable parameters, all parameters, and the trainable fraction."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCount(trainable, total, trainable / total if total else 0.0)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer of ``model`` into its weight."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge()
