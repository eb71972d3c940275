"""Training in bf16: which precision a device supports, autocast, and frozen weights held in bf16."""
from __future__ import annotations

import contextlib
import functools
import os
from functools import lru_cache

import torch
from torch import nn

from .lora_fast import fast_lora
from .model import MultiHeadAttention

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


def _attend_in_fp32_for_backward(module: MultiHeadAttention, queries: torch.Tensor, keys: torch.Tensor,
                                 values: torch.Tensor) -> torch.Tensor:
    """``module.attend`` on fp32 copies of bf16 queries, keys and values while gradients are recorded on a CPU."""
    low = queries.dtype in (torch.bfloat16, torch.float16) and queries.device.type == "cpu"
    if not (low and torch.is_grad_enabled() and queries.requires_grad):
        return MultiHeadAttention.attend(module, queries, keys, values)
    with torch.autocast("cpu", enabled=False):  # autocast would cast them back to bf16
        context = MultiHeadAttention.attend(module, queries.float(), keys.float(), values.float())
    return context.to(queries.dtype)


@contextlib.contextmanager
def attention_backward_in_fp32(model: nn.Module):
    """Within the block, ``model``'s attention runs in fp32 on a CPU whenever it records gradients in bf16.

    PyTorch's CPU flash-attention backward in bf16 is slower than its fp32 version at the course's short
    sequences (on the development machine's CPU it was most of the gap between a bf16 LoRA step and its
    GEMM chain: ``benchmarks/roofline.py``'s ``fast_bf16_attention`` and ``fast`` builds, docs/benchmarks.md);
    attention's own arithmetic is a few percent of a step, so computing it on fp32 copies of the bf16
    queries, keys and values costs less and is at least as exact (``tests/test_precision.py``). The
    forward pass without gradients (evaluation) and every other device keep the bf16 kernel.
    """
    patched = [m for m in model.modules() if isinstance(m, MultiHeadAttention) and "attend" not in vars(m)]
    try:
        for module in patched:
            module.attend = functools.partial(_attend_in_fp32_for_backward, module)
        yield
    finally:
        for module in patched:
            vars(module).pop("attend", None)


@contextlib.contextmanager
def fast_training(model: nn.Module, precision: str):
    """How ``train_classifier`` holds ``model`` while it trains or evaluates: frozen Linear weights in bf16
    when training in bf16 (:func:`frozen_weights_as`), LoRA layers through the grouped fast path
    (:func:`course_lib.lora_fast.fast_lora`: the same mathematics in fewer, larger matmuls) and, in bf16 on
    a CPU, attention's backward in fp32 (:func:`attention_backward_in_fp32`)."""
    with frozen_weights_as(model, precision), fast_lora(model), attention_backward_in_fp32(model):
        yield
