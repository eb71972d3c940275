"""The LoRA path training runs: :class:`~course_lib.lora.LinearWithLoRA`'s mathematics in fewer, larger matmuls.

``LinearWithLoRA`` as notebook 04 writes it costs, per layer and step, a frozen GEMM plus about a
dozen tiny operations (two rank-wide matmuls, a scaling, an add, and under bf16 autocast a cast of the
input and of A and B each time), and as many again backward. For GPT-2 with LoRA on its 72 block
Linear layers that is about 500 matmuls and 1,900 casts per step at batch 8 × 32 tokens: the tiny
operations, not the arithmetic, set the step time.

:func:`fast_lora` computes the same y = x Wᵀ + b + (alpha/rank) · (x Aᵀ) Bᵀ with one autograd
function per group of layers that read the same input: query, key and value become one GEMM against
their three weights side by side, their three A matrices one matmul (rank × 3 columns) and their B
matrices one block-diagonal matmul; out_proj and the feed-forward layers are groups of one. The input
is cast to the compute dtype once per group, and the backward computes exactly the gradients LoRA
needs (the input's, A's and B's, never the frozen weight's) in five matmuls per group. The
parameters are the same tensors (fp32 masters for the optimizer); ``tests/test_lora_fast.py`` proves
outputs and gradients equal to ``LinearWithLoRA``'s.

Without autograd (evaluation) nothing needs the rank-wide path kept apart, so a group multiplies by its
weights with LoRA folded in, W + (alpha/rank) · B A, made once per evaluation and kept until a weight
changes: an evaluation pass then costs the frozen GEMMs and one fold (docs/benchmarks.md measures it: on the
AVX2 development CPU in fp32, 41 % fewer operations dispatched and a time within the rounds' noise).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from .lora import LinearWithLoRA
from .model import MultiHeadAttention


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _GroupedLoRALinear(torch.autograd.Function):
    """y = x Wᵀ + b + s · (x Aᵀ) B_blockdiagᵀ for n LoRA layers sharing the input x (W, b: theirs stacked)."""

    @staticmethod
    def forward(ctx, x, weight, bias, scaling, n, *lora):  # noqa: D102 (autograd's signature)
        a_params, b_params = lora[:n], lora[n:]
        dtype, shape = weight.dtype, x.shape
        x2 = x.reshape(-1, shape[-1]).to(dtype)
        a = (torch.cat(a_params) if n > 1 else a_params[0]).to(dtype)  # (n·rank, in)
        b = (torch.block_diag(*b_params) if n > 1 else b_params[0]).to(dtype)  # (Σ out, n·rank)
        y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        # The rank-wide intermediate, n·rank numbers per token, held transposed (n·rank, tokens): each skinny
        # product below is written with its small dimension first, which CPU BLAS runs several times faster
        # than the same product with the small dimension last (docs/benchmarks.md, stop 27).
        ut = a @ x2.t()
        y.addmm_(ut.t(), b.t(), alpha=scaling)
        ctx.save_for_backward(x2, weight, a, b, ut)
        ctx.scaling, ctx.n, ctx.x_shape, ctx.x_dtype = scaling, n, shape, x.dtype
        ctx.ranks = [p.shape[0] for p in a_params]
        ctx.outs = [p.shape[0] for p in b_params]
        ctx.param_dtype = a_params[0].dtype
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x2, weight, a, b, ut = ctx.saved_tensors
        s, n = ctx.scaling, ctx.n
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(weight.dtype)
        gbt = b.t() @ g.t()  # (n·rank, tokens), transposed as ut is
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(gbt.t(), a, alpha=s).view(ctx.x_shape).to(ctx.x_dtype)
        grad_a = torch.mm(gbt, x2).mul_(s).to(ctx.param_dtype)  # (n·rank, in)
        grad_bt = torch.mm(ut, g).mul_(s).to(ctx.param_dtype)  # (n·rank, Σ out): B's gradient transposed, its diagonal blocks
        if n == 1:
            return (grad_x, None, None, None, None, grad_a, grad_bt.t().contiguous())
        grads_a = list(grad_a.split(ctx.ranks))
        grads_b, row, col = [], 0, 0
        for out, rank in zip(ctx.outs, ctx.ranks):
            grads_b.append(grad_bt[col:col + rank, row:row + out].t().contiguous())
            row, col = row + out, col + rank
        return (grad_x, None, None, None, None, *grads_a, *grads_b)


class _LoRAGroup:
    """LoRA-wrapped Linear layers that read one input, computed as one :class:`_GroupedLoRALinear`."""

    fold_in_evaluation = True   # without autograd, LoRA folded into the weights (benchmarks/roofline.py turns it off)

    def __init__(self, layers: list[LinearWithLoRA]) -> None:
        self.layers = layers
        # (key, weight, bias): the frozen weights side by side, or with LoRA folded in (evaluation). One slot,
        # so that folded copies live only while evaluating: training's next step puts the frozen ones back.
        self._stacked: tuple | None = None

    def usable(self) -> bool:
        """Whether the fast path computes what the layers' own forward would (else they run as written)."""
        scaling = self.layers[0].lora.scaling
        return all(not layer.merged and isinstance(layer.lora.dropout, nn.Identity)
                   and layer.lora.scaling == scaling
                   and not any(p.requires_grad for p in layer.linear.parameters())
                   and not (layer._forward_hooks or layer._forward_pre_hooks)
                   for layer in self.layers)

    def frozen(self, dtype: torch.dtype, folded: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen weights (and biases) side by side in ``dtype``, kept until any of them changes; ``folded``:
        each weight with its LoRA update added, W + scaling · B A (summed in fp32, then rounded to ``dtype``)."""
        linears = [layer.linear for layer in self.layers]
        tensors = [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]
        if folded:
            tensors += [p for layer in self.layers for p in (layer.lora.A, layer.lora.B)]
        key = (dtype, folded, self.layers[0].lora.scaling, tuple((p.data_ptr(), p._version) for p in tensors))
        if self._stacked is None or self._stacked[0] != key:
            self._stacked = None   # the old copy goes before the new one is made
            with torch.no_grad():
                weights = [self._folded(layer) for layer in self.layers] if folded else [lin.weight for lin in linears]
                weight = torch.cat(weights) if len(weights) > 1 else weights[0]
                bias = None
                if linears[0].bias is not None:
                    bias = torch.cat([lin.bias for lin in linears]) if len(linears) > 1 else linears[0].bias
                self._stacked = (key, weight.to(dtype), None if bias is None else bias.to(dtype))
        return self._stacked[1], self._stacked[2]

    @staticmethod
    def _folded(layer: LinearWithLoRA) -> torch.Tensor:
        lora = layer.lora
        return torch.addmm(layer.linear.weight.float(), lora.B.float(), lora.A.float(), alpha=lora.scaling)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold_in_evaluation and not torch.is_grad_enabled():   # evaluation: one GEMM per group, LoRA folded in
            weight, bias = self.frozen(_compute_dtype(x), folded=True)
            x2 = x.reshape(-1, x.shape[-1]).to(weight.dtype)
            y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
            return y.view(*x.shape[:-1], y.shape[-1])
        weight, bias = self.frozen(_compute_dtype(x))
        loras = [layer.lora for layer in self.layers]
        return _GroupedLoRALinear.apply(x, weight, bias, loras[0].scaling, len(loras),
                                        *[lora.A for lora in loras], *[lora.B for lora in loras])


def _fast_linear_forward(module: LinearWithLoRA, group: _LoRAGroup, x: torch.Tensor) -> torch.Tensor:
    if not group.usable():
        return LinearWithLoRA.forward(module, x)
    return group(x)


def _fast_attention_project(module: MultiHeadAttention, group: _LoRAGroup,
                            x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not group.usable():
        return MultiHeadAttention.project(module, x)
    return tuple(group(x).split([layer.linear.out_features for layer in group.layers], dim=-1))


def _groupable(layers: list[nn.Module]) -> bool:
    return (all(isinstance(layer, LinearWithLoRA) for layer in layers)
            and len({(layer.linear.in_features, layer.lora.scaling, layer.linear.bias is None,
                      layer.linear.weight.dtype, layer.linear.weight.device) for layer in layers}) == 1
            and _LoRAGroup(layers).usable())


def fast_groups(model: nn.Module) -> list[_LoRAGroup]:
    """The groups :func:`fast_lora` installed on ``model`` (inside its block; empty outside)."""
    return [bound.args[1] for module in model.modules() for name in ("project", "forward")
            if isinstance(bound := module.__dict__.get(name), functools.partial)]


@contextlib.contextmanager
def fast_lora(model: nn.Module):
    """Within the block, ``model``'s LoRA layers compute through the grouped fast path (same parameters,
    same mathematics); outside it they run exactly as written. A layer that is merged, has LoRA dropout,
    a trainable base weight or a forward hook runs as written inside the block too.
    """
    patched: list[nn.Module] = []
    grouped: set[int] = set()
    try:
        for module in model.modules():
            if isinstance(module, MultiHeadAttention):
                qkv = [module.W_query, module.W_key, module.W_value]
                if _groupable(qkv):
                    module.project = functools.partial(_fast_attention_project, module, _LoRAGroup(qkv))
                    patched.append(module)
                    grouped.update(id(layer) for layer in qkv)
        for module in model.modules():
            if isinstance(module, LinearWithLoRA) and id(module) not in grouped and _groupable([module]):
                module.forward = functools.partial(_fast_linear_forward, module, _LoRAGroup([module]))
                patched.append(module)
        yield
    finally:
        for module in patched:  # the class's methods again
            vars(module).pop("project" if isinstance(module, MultiHeadAttention) else "forward")
