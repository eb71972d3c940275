"""How close a LoRA training step comes to the matrix multiplications it cannot avoid.

Not a test. On the GPT-2 124M classifier (random weights: timing does not depend on them), batch
8 × 32 tokens, LoRA rank 4 on every block Linear, it times in one run, the variants interleaved round
by round (so a machine slowing down affects them all alike):

* one training step exactly as ``train_classifier`` runs it (zero_grad, forward under the precision's
  autocast, backward, AdamW step), fp32 and bf16, for three builds of the same model:
  ``written`` (attention, LayerNorm and LoRA written out op by op, as notebooks 01 and 04 teach them),
  ``kernels`` (fused ``scaled_dot_product_attention`` and ``layer_norm``, LoRA as written) and
  ``fast`` (those kernels plus the grouped LoRA path of ``course_lib.lora_fast`` and the fused AdamW of
  ``make_adamw``, and in bf16 on a CPU attention with its softmax in fp32 while it records gradients:
  what ``course experiment`` runs); ``fast_loop_adam`` is ``fast`` with the default (per-parameter loop)
  AdamW, to show what the fused optimizer adds; ``fast_bf16_attention`` is ``fast`` with attention in
  PyTorch's bf16 kernel, and ``fast_fp32_attention`` with attention on fp32 copies of the bf16 queries,
  keys and values in PyTorch's fp32 kernel while it records gradients; ``fast_whole`` is ``fast`` with the
  model run at every position and the logits picked after (``fast`` asks the model for the last real
  tokens only, ``read_at``, so its last block skips the other positions); ``fast_unfolded`` is ``fast`` with
  its evaluation through the rank-wide LoRA path (``fast`` folds B·A into the weights when nothing records
  gradients);
* the GEMM chain a step cannot avoid: per block the q, k, v, out, ff1 and ff2 forward GEMMs and their
  input-gradient GEMMs backward (the frozen weights need no weight gradient), in the compute dtype, for
  every position (``chain``) and with the last block's q, out, ff1 and ff2 at the one position per row a
  classifier reads (``chain_read``: what a step that reads only those positions cannot avoid);
* the evaluation pass (no grad) of each build against the forward half of that chain;

then prints the ratios and projects a 5-epoch ``course experiment --trainable-layers lora`` run with
its evaluations (``train_classifier``'s and the experiment's accuracy passes before and after).

    python benchmarks/roofline.py [--rounds 5] [--threads N] [--builds written,fast] [--device cuda]
                                  [--clock cpu]

Times are the fastest round (``--stat median`` for the median): other work on the machine only adds time.
The ratio table also gives the median of the per-round ratios (each build against the chain timed in the
same round). ``--clock cpu`` (with ``--threads 1``) times the CPU time of the one thread that computes,
which other processes on a loaded machine change far less than the wall clock.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time

import torch
from torch import nn

from _peak import timed

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.lora import LinearWithLoRA
from course_lib.lora_fast import _LoRAGroup, fast_groups, fast_lora
from course_lib.model import GPTModel, LayerNorm, MultiHeadAttention
from course_lib.precision import autocast, bf16_supported, fast_training, frozen_weights_as
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import configure_trainable
from course_lib.training import calc_loss_batch, make_adamw, pool_last_token

BATCH, TOKENS, RANK, ALPHA, EPOCHS = 8, 32, 4, 4, 5
EVAL_FREQ, EVAL_ITER, EVAL_ITER_LOSS = 50, 5, 50  # ExperimentConfig's eval_freq, eval_iter_val, eval_iter


def explicit_attend(self: MultiHeadAttention, queries, keys, values):
    """Attention written out (scores, causal mask, softmax, weighted sum): the ``written`` build."""
    b, t, _ = queries.shape
    q, k, v = self._split_heads(queries), self._split_heads(keys), self._split_heads(values)
    scores = q @ k.transpose(2, 3)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=q.device), diagonal=1)
    weights = torch.softmax(scores.masked_fill(mask, float("-inf")) / self.head_dim ** 0.5, dim=-1)
    return (self.dropout(weights) @ v).transpose(1, 2).contiguous().view(b, t, self.d_out)


def explicit_layer_norm(self: LayerNorm, x):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


@contextlib.contextmanager
def written_out(model: nn.Module):
    """Attention and LayerNorm op by op, as the notebooks write them (the fused kernels' reference)."""
    patched = []
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.attend = explicit_attend.__get__(m)
            patched.append((m, "attend"))
        elif isinstance(m, LayerNorm):
            m.forward = explicit_layer_norm.__get__(m)
            patched.append((m, "forward"))
    try:
        yield
    finally:
        for m, name in patched:
            delattr(m, name)


def fp32_kernel_attend(self: MultiHeadAttention, queries, keys, values):
    """Attention on fp32 copies of bf16 queries, keys and values while recording gradients on a CPU, in
    PyTorch's fp32 kernel: the ``fast_fp32_attention`` build."""
    if not (queries.dtype == torch.bfloat16 and torch.is_grad_enabled() and queries.requires_grad):
        return MultiHeadAttention.attend(self, queries, keys, values)
    with torch.autocast(queries.device.type, enabled=False):
        context = MultiHeadAttention.attend(self, queries.float(), keys.float(), values.float())
    return context.to(queries.dtype)


@contextlib.contextmanager
def attention_as(model: nn.Module, attend):
    """Every attention of ``model`` through ``attend`` within the block."""
    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for m in modules:
        m.attend = attend.__get__(m)
    try:
        yield
    finally:
        for m in modules:
            del m.attend


def build(device: torch.device, model_size: str = "gpt2-small (124M)") -> nn.Module:
    torch.manual_seed(0)
    model = GPTModel(get_config(model_size))
    add_classification_head(model, 2)
    configure_trainable(model, "lora", rank=RANK, alpha=ALPHA)
    return model.to(device)


def held(model: nn.Module, build_name: str, precision: str) -> contextlib.AbstractContextManager:
    """How each build's model is held while it trains (as train_classifier holds it)."""
    stack = contextlib.ExitStack()
    if build_name in ("fast_bf16_attention", "fast_fp32_attention"):  # fast, attention in a PyTorch kernel
        stack.enter_context(frozen_weights_as(model, precision))
        stack.enter_context(fast_lora(model))
        if build_name == "fast_fp32_attention":
            stack.enter_context(attention_as(model, fp32_kernel_attend))
    elif build_name.startswith("fast"):
        stack.enter_context(fast_training(model, precision))
    else:
        stack.enter_context(frozen_weights_as(model, precision))
        if build_name == "written":
            stack.enter_context(written_out(model))
    return stack


def loss_of(build_name: str):
    """The loss each build computes: ``calc_loss_batch`` (the model asked for the positions read), or for
    the builds named ``*_whole`` and the written-out one the model run at every position, logits picked after."""
    if build_name.endswith("_whole") or build_name in ("written", "kernels"):
        return lambda x, y, model, device: nn.functional.cross_entropy(pool_last_token(model(x), x).float(), y)
    return calc_loss_batch


def make_step(model, precision, device, batch, build_name):
    if build_name in ("fast", "fast_unfolded", "fast_whole", "fast_bf16_attention",
                      "fast_fp32_attention"):  # as `course experiment`
        optimizer = make_adamw(model, lr=1e-5, weight_decay=0.1)
    else:  # the loop over parameters torch.optim.AdamW runs by default on a CPU
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.1)
    x, y = batch
    loss_fn = loss_of(build_name)

    def step() -> None:
        optimizer.zero_grad()
        with autocast(precision, device):
            loss = loss_fn(x, y, model, device)
        loss.backward()
        optimizer.step()
    return step


def make_eval(model, precision, device, batch, build_name):
    x, y = batch
    loss_fn = loss_of(build_name)
    fold = build_name != "fast_unfolded"   # that build evaluates with the rank-wide LoRA path, as training runs it

    def run() -> None:
        _LoRAGroup.fold_in_evaluation = fold
        try:
            with torch.no_grad(), autocast(precision, device):
                loss_fn(x, y, model, device)
        finally:
            _LoRAGroup.fold_in_evaluation = True
    return run


def make_fold(model: nn.Module, precision: str, device: torch.device):
    """What the fast build's evaluation does once per pass (and again after any training step): every LoRA group's
    frozen weights with B·A folded in, made afresh."""
    groups = fast_groups(model)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def fold() -> None:
        for group in groups:
            group._stacked = None
            group.frozen(dtype, folded=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return fold


def make_chain(model: nn.Module, precision: str, device: torch.device, backward: bool, read: bool = False):
    """The GEMMs a LoRA step (or, with ``backward=False``, an evaluation) cannot avoid, in the compute dtype;
    ``read``: with the last block's q, out, ff1 and ff2 at one position per row (its k and v need them all)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    weights = []
    for block in model.trf_blocks:
        layers = [block.att.W_query, block.att.W_key, block.att.W_value, block.att.out_proj,
                  block.ff.layers[0], block.ff.layers[2]]
        weights.append([(m.linear if isinstance(m, LinearWithLoRA) else m).weight.detach().to(dtype) for m in layers])
    width = weights[0][0].shape[1]
    x = torch.randn(BATCH * TOKENS, width, device=device, dtype=dtype)
    h = torch.randn(BATCH * TOKENS, 4 * width, device=device, dtype=dtype)
    linear = nn.functional.linear

    x_read, h_read = x[:BATCH], h[:BATCH]

    def chain() -> None:
        for i, (wq, wk, wv, wo, w1, w2) in enumerate(weights):
            last = read and i == len(weights) - 1
            xa, ha = (x_read, h_read) if last else (x, h)
            for w in (wk, wv):
                linear(x, w)
            for w in (wq, wo, w1):
                linear(xa, w)
            linear(ha, w2)
            if backward:  # input gradients: grad_out @ W
                for w in (wk, wv):
                    torch.mm(x, w)
                for w in (wq, wo, w2):
                    torch.mm(xa, w)
                torch.mm(ha, w1)
    return chain


def aten_calls(fn) -> int:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def experiment_batches() -> dict[str, float]:
    """What a 5-epoch `course experiment --trainable-layers lora` (full profile) trains and evaluates, in
    batches of BATCH x TOKENS: its bucketed training batches' padded tokens, and the padded tokens of its
    evaluation passes as they run them (regrouped by length, ``group_by_length``), each divided by that size.
    Costs per token fall as batches grow (benchmarks/eval_batch.py), so evaluation is if anything overstated."""
    from course_lib.dataloaders import create_dataloaders, group_by_length, sequential_loader
    from course_lib.tokenizer import get_tokenizer

    size = BATCH * TOKENS
    train, val, test = create_dataloaders(prepare_sms_splits(seed=123), get_tokenizer(), batch_size=BATCH,
                                          context_length=1024, batching="bucketed")
    train_eval = sequential_loader(train)

    def tokens(loader, num_batches=None) -> int:
        grouped = group_by_length(loader, num_batches)
        return sum(x.numel() for x, _ in (grouped.loader if grouped is not None else loader))

    steps = EPOCHS * len(train)
    train_tokens = EPOCHS * sum(x.numel() for x, _ in train)
    inside = (math.ceil(steps / EVAL_FREQ) + EPOCHS) * (tokens(train_eval, EVAL_ITER) + tokens(val, EVAL_ITER))
    whole = tokens(train_eval) + tokens(val) + tokens(test)  # one pass per split before training, one after
    return {"steps": steps, "step_equivalents": train_tokens / size, "train_classifier_evals": inside / size,
            "experiment_evals": 2 * whole / size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each times every variant once)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--builds", default="written,kernels,fast_loop_adam,fast")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="statistic over the rounds (min: other work only adds time)")
    parser.add_argument("--model", default="gpt2-small (124M)", help="another size only to try the script out")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time (needs --threads 1 on a CPU), less sensitive to other load")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu times one thread's CPU time: use it with --threads 1 on a CPU.")
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
    builds = args.builds.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}; {args.model} "
          f"architecture, random weights, 2-class head; batch {BATCH} x {TOKENS} tokens; LoRA rank {RANK} on every "
          f"block Linear; {args.rounds} rounds; {args.clock} clock; load average at start {load:.2f}")

    torch.manual_seed(1)
    batch = (torch.randint(0, 50257, (BATCH, TOKENS), device=device), torch.randint(0, 2, (BATCH,), device=device))
    stack = contextlib.ExitStack()
    fns = {}
    for precision in precisions:
        for b in builds:
            model = build(device, args.model)
            stack.enter_context(held(model, b, precision))
            fns[f"step:{b}:{precision}"] = make_step(model, precision, device, batch, b)
            if b != "fast_loop_adam":  # evaluates exactly as fast
                # its own model: the steps between the rounds change A and B, and the fast build would then fold
                # B·A into the weights again for every batch it evaluates, which a whole pass does once (timed apart)
                evaluated = build(device, args.model)
                stack.enter_context(held(evaluated, b, precision))
                fns[f"eval:{b}:{precision}"] = make_eval(evaluated, precision, device, batch, b)
                if b == "fast":
                    fns[f"fold:{b}:{precision}"] = make_fold(evaluated, precision, device)
        for chain in ("chain", "chain_read"):
            fns[f"step:{chain}:{precision}"] = make_chain(model, precision, device, True, chain == "chain_read")
            fns[f"eval:{chain}:{precision}"] = make_chain(model, precision, device, False, chain == "chain_read")
    names = list(fns)
    for v in names:  # warm-up: allocator, oneDNN primitives, autocast
        fns[v]()
    times: dict[str, list[float]] = {v: [] for v in names}
    for r in range(args.rounds):
        for v in names[r % len(names):] + names[:r % len(names)]:
            if args.clock == "cpu":
                start = time.thread_time()
                fns[v]()
                times[v].append(time.thread_time() - start)
            else:
                times[v].append(timed(fns[v], device))
    ops = {v: aten_calls(fns[v]) for v in names}  # load-independent: operations dispatched per call
    stack.close()
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # Other work on the machine only ever adds time to a call, so the fastest round is the best estimate
    # of what a call costs; the spread says how much the rounds disagreed.
    med = {v: min(t) if args.stat == "min" else statistics.median(t) for v, t in times.items()}
    spread = {v: (max(t) - min(t)) / statistics.median(t) for v, t in times.items()}

    print(f"\nload average at end {load_end:.2f}; times are the {args.stat} over the rounds; "
          "spread = (max - min) / median over the rounds\n")
    print("| | " + " | ".join(f"{p} ms (spread) | {p} aten ops" for p in precisions) + " |\n|---|"
          + "---|---|" * len(precisions))
    for kind, label in (("step", "training step"), ("eval", "evaluation pass")):
        for b in [b for b in builds + ["chain", "chain_read"] if f"{kind}:{b}:fp32" in med]:
            what = "GEMM chain (forward + input grads)" if kind == "step" else "GEMM chain (forward)"
            title = {"chain": what, "chain_read": what + ", last block at the positions read"}.get(b, f"{label}, {b}")
            print(f"| {title} | " + " | ".join(
                f"{1e3 * med[f'{kind}:{b}:{p}']:.0f} ({spread[f'{kind}:{b}:{p}']:.0%}) | {ops[f'{kind}:{b}:{p}']:,}"
                for p in precisions) + " |")
    if "fold:fast:fp32" in med:
        print("| folding B·A into the weights, fast (once per evaluation pass, and after each training step) | "
              + " | ".join(f"{1e3 * med[f'fold:fast:{p}']:.0f} ({spread[f'fold:fast:{p}']:.0%}) | "
                           f"{ops[f'fold:fast:{p}']:,}" for p in precisions) + " |")

    def paired(a: str, b: str) -> str:  # the median of the per-round ratios and their range
        ratios = [x / y for x, y in zip(times[a], times[b])]
        return f"{med[a] / med[b]:.2f} ({statistics.median(ratios):.2f}; {min(ratios):.2f}-{max(ratios):.2f})"

    print(f"\n| ratio (this run): {args.stat}s (median of the per-round ratios; their range) | "
          + " | ".join(precisions) + " |\n|---|" + "---|" * len(precisions))
    for kind in ("step", "eval"):
        for b in [b for b in builds if f"{kind}:{b}:fp32" in med]:
            print(f"| {kind} {b} / GEMM chain | " + " | ".join(
                paired(f"{kind}:{b}:{p}", f"{kind}:chain:{p}") for p in precisions) + " |")
        if "fast" in builds:
            print(f"| {kind} fast / GEMM chain, last block at the positions read | " + " | ".join(
                paired(f"{kind}:fast:{p}", f"{kind}:chain_read:{p}") for p in precisions) + " |")
    if "written" in builds and "fast" in builds:
        for kind in ("step", "eval"):
            print(f"| {kind} written / fast | " + " | ".join(
                paired(f"{kind}:written:{p}", f"{kind}:fast:{p}") for p in precisions) + " |")

    n = experiment_batches()
    print(f"\nProjected 5-epoch `course experiment --trainable-layers lora` (full profile: {n['steps']} steps whose "
          f"padded tokens make {n['step_equivalents']:.0f} steps of {BATCH} x {TOKENS}; evaluation inside "
          f"train_classifier {n['train_classifier_evals']:.0f} and in the experiment's passes before and after "
          f"{n['experiment_evals']:.0f} batches of {BATCH} x {TOKENS}, counted in padded tokens as they run), minutes:\n")
    print("| build | " + " | ".join(f"{p}: train_classifier | {p}: whole experiment" for p in precisions)
          + " |\n|---|" + "---|---|" * len(precisions))
    for b in [b for b in builds + ["chain", "chain_read"] if f"eval:{b}:fp32" in med]:
        cells = []
        for p in precisions:
            train = n["step_equivalents"] * med[f"step:{b}:{p}"] + n["train_classifier_evals"] * med[f"eval:{b}:{p}"]
            whole = train + n["experiment_evals"] * med[f"eval:{b}:{p}"]
            cells += [f"{train / 60:.1f}", f"{whole / 60:.1f}"]
        title = {"chain": "GEMM chain alone", "chain_read": "GEMM chain alone, last block at the positions read"}
        print(f"| {title.get(b, b)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
