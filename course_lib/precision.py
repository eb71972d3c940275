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


@contextlib.contextmanager
def _fp32_matmuls_on_bf16_units():
    """Within the block, oneDNN may multiply fp32 matrices on bf16 units, rounding their inputs to bf16 and
    accumulating in fp32 (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``, PyTorch >= 2.9, docs:
    "Bfloat16 (BF16) on MKLDNN backend"); where the setting does not exist they stay plain fp32."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    try:
        old = matmul.fp32_precision
    except AttributeError:
        yield
        return
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = old


class _CausalAttentionFp32Softmax(torch.autograd.Function):
    """softmax(q kᵀ · scale, future masked) v for bf16 (batch, heads, tokens, head_dim) q, k, v: the scores,
    the softmax and its backward in fp32, the two products with v in bf16.

    A product of two bf16 numbers is exact in fp32 (8 + 8 significant bits fit in 24), so the scores are
    computed on the bf16 units with fp32 accumulation (:func:`_fp32_matmuls_on_bf16_units`), losing nothing
    against an fp32 matmul of the same bf16 inputs beyond fp32's rounding of the sums; so are the score
    gradients' products with k and q.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale):  # noqa: D102 (autograd's signature)
        tokens = q.shape[-2]
        with _fp32_matmuls_on_bf16_units():
            scores = q.float() @ k.float().transpose(-2, -1)
        future = torch.ones(tokens, tokens, dtype=torch.bool, device=q.device).triu_(1)
        probs = torch.softmax(scores.masked_fill_(future, float("-inf")).mul_(scale), dim=-1)
        probs_low = probs.to(v.dtype)
        ctx.save_for_backward(q, k, v, probs, probs_low)
        ctx.scale = scale
        return probs_low @ v

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        q, k, v, probs, probs_low = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):  # a backward called inside autocast keeps these dtypes too
            grad = grad.to(v.dtype)
            grad_v = probs_low.transpose(-2, -1) @ grad
            grad_probs = (grad @ v.transpose(-2, -1)).float()
            # softmax's backward: dS = P ⊙ (dP − Σ_j dP_j P_j), then the scale; masked positions have P = 0
            grad_scores = probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdim=True))
            grad_scores.mul_(ctx.scale)
            with _fp32_matmuls_on_bf16_units():
                grad_q = (grad_scores @ k.float()).to(q.dtype)
                grad_k = (grad_scores.transpose(-2, -1) @ q.float()).to(k.dtype)
        return grad_q, grad_k, grad_v, None


def _attend_with_fp32_softmax(module: MultiHeadAttention, queries: torch.Tensor, keys: torch.Tensor,
                              values: torch.Tensor) -> torch.Tensor:
    """``module.attend`` through :class:`_CausalAttentionFp32Softmax` for bf16 inputs recording gradients on a
    CPU (without attention dropout); the class's kernel otherwise."""
    low = queries.dtype == torch.bfloat16 and queries.device.type == "cpu"
    dropout = module.training and module.dropout.p > 0
    if not (low and torch.is_grad_enabled() and queries.requires_grad) or dropout:
        return MultiHeadAttention.attend(module, queries, keys, values)
    b, t, _ = queries.shape
    with torch.autocast("cpu", enabled=False):  # autocast would cast the fp32 scores back to bf16
        context = _CausalAttentionFp32Softmax.apply(
            module._split_heads(queries), module._split_heads(keys), module._split_heads(values),
            module.head_dim ** -0.5)
    return context.transpose(1, 2).reshape(b, t, module.d_out)


@contextlib.contextmanager
def attention_for_bf16_training(model: nn.Module):
    """Within the block, ``model``'s attention records gradients in bf16 on a CPU through a written-out
    attention whose scores and softmax are fp32 (:class:`_CausalAttentionFp32Softmax`).

    PyTorch's CPU flash-attention backward in bf16 is slower than its fp32 version at the course's short
    sequences (on the development machine it was most of the gap between a bf16 LoRA step and its GEMM
    chain), and the fp32 kernel on upcast copies pays for the copies and for fp32 products; the
    written-out form multiplies on the bf16 units and keeps only the softmax in fp32 (a bf16 LoRA step
    about 3 % faster than with the fp32 kernel on the development machine's CPU, docs/benchmarks.md). Its
    gradients are about as close to fp64 as the bf16 kernel's or closer, and output and gradients closer
    than the notebooks' attention written out under autocast (``tests/test_precision.py``). Evaluation (no
    gradients), fp32, attention dropout and other devices keep the class's kernel.
    """
    patched = [m for m in model.modules() if isinstance(m, MultiHeadAttention) and "attend" not in vars(m)]
    try:
        for module in patched:
            module.attend = functools.partial(_attend_with_fp32_softmax, module)
        yield
    finally:
        for module in patched:
            vars(module).pop("attend", None)


@contextlib.contextmanager
def fast_training(model: nn.Module, precision: str):
    """How ``train_classifier`` holds ``model`` while it trains or evaluates: frozen Linear weights in bf16
    when training in bf16 (:func:`frozen_weights_as`), LoRA layers through the grouped fast path
    (:func:`course_lib.lora_fast.fast_lora`: the same mathematics in fewer, larger matmuls) and, in bf16 on
    a CPU, attention with its softmax in fp32 while it records gradients (:func:`attention_for_bf16_training`)."""
    with frozen_weights_as(model, precision), fast_lora(model), attention_for_bf16_training(model):
        yield
