"""Training in bf16: which precision a device supports, autocast, and frozen weights held in bf16."""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch
from torch import nn

from .lora_fast import fast_lora

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` (CUDA with bf16, or a CPU with native bf16 units)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and _cpu_has_bf16()
    return False


@lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:  # not Linux: bf16 may run (explicit precision='bf16'), but 'auto' will not choose it
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic units, the rule ``precision='auto'`` chooses bf16 by: CUDA with
    bf16 support, or a Linux CPU listing ``avx512_bf16`` or ``amx_bf16`` (bf16 dot products in hardware;
    without them bf16 matmuls are emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cpu" and not os.path.exists("/proc/cpuinfo"):
        return False
    return bf16_supported(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``; ``auto`` picks bf16 where the hardware has bf16 units (:func:`bf16_native`),
    fp32 elsewhere: a rule, so the same command on the same machine always trains in the same precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}.")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise ValueError(f"bf16 is not supported on {device} here; use precision='fp32' (or 'auto').")
    return precision


def describe_precision(precision: str, device: torch.device) -> str:
    """One line saying which precision ``precision`` resolves to on ``device`` and why, for logs."""
    chosen = resolve_precision(precision, device)
    if precision != "auto":
        return chosen
    device = torch.device(device)
    why = "has bf16 units" if chosen == "bf16" else "has no bf16 units"
    return f"{chosen} (auto: {device.type} {why})"


def autocast(precision: str, device: torch.device):
    """A context manager running the forward pass in ``precision`` (bf16 autocast, or nothing for fp32)."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def frozen_weights_as(model: nn.Module, precision: str):
    """While running in bf16, hold the frozen ``nn.Linear`` weights in bf16 and restore them exactly after.

    Autocast caches its bf16 copies only of trainable weights, so without this every step casts all
    frozen weights again (124M numbers for GPT-2 small, most of a LoRA step's memory traffic). The
    results are bit for bit what autocast computes anyway: it multiplies in bf16 either way. Writing
    into a held weight meanwhile (``merge()``, ``load_state_dict``) is refused on exit, not lost silently.
    For untied models such as the course's GPTModel: a frozen Linear weight tied to an embedding would
    make that embedding's output bf16 too.
    """
    saved = []
    try:
        if precision == "bf16":
            for module in model.modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, nn.Linear) and weight.dtype == torch.float32 and not weight.requires_grad:
                    original, held = weight.data, weight.data.to(torch.bfloat16)
                    weight.data = held
                    saved.append((weight, original, weight._version))
        yield
    finally:
        changed = [weight for weight, _, version in saved if weight._version != version]
        for weight, data, _ in saved:
            weight.data = data
    if changed:
        raise RuntimeError(f"{len(changed)} frozen weight(s) were changed while training held them in bf16 "
                           "(merge LoRA or load weights after training, not during it); they are back as before.")


@contextlib.contextmanager
def fast_training(model: nn.Module, precision: str):
    """How ``train_classifier`` holds ``model`` while it trains or evaluates: frozen Linear weights in bf16
    when training in bf16 (:func:`frozen_weights_as`) and LoRA layers through the grouped fast path
    (:func:`course_lib.lora_fast.fast_lora`: the same mathematics in fewer, larger matmuls)."""
    with frozen_weights_as(model, precision), fast_lora(model):
        yield
