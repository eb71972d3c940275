"""precision = fp32 | bf16 | auto for training: fp32 stays exact, bf16 autocasts where supported."""
import pytest
import torch

from course_lib.dataloaders import create_dataloaders
from course_lib.precision import autocast, bf16_supported, resolve_precision
from course_lib.profiles import set_seed
from course_lib.sms import prepare_sms_splits
from course_lib.strategies import build_classifier
from course_lib.tokenizer import get_tokenizer
from course_lib.training import calc_accuracy_loader, train_classifier

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not bf16_supported(CPU), reason="this CPU has no native bf16")


def test_precision_names_are_checked():
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision='fp32'"):
        resolve_precision("bf16", torch.device("meta"))


def test_auto_precision_follows_the_hardware_rule_not_a_timing(monkeypatch):
    import course_lib.precision as precision

    for has_units, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "bf16_supported", lambda device, has=has_units: has)
        monkeypatch.setattr(precision.os.path, "exists", lambda path: True)
        # the same answer every time, however loaded the machine (no micro-benchmark decides)
        assert {resolve_precision("auto", CPU) for _ in range(3)} == {expected}
        assert precision.describe_precision("auto", CPU).startswith(f"{expected} (auto: cpu ")
    monkeypatch.setattr(precision.os.path, "exists", lambda path: False)  # no /proc/cpuinfo: units unknown
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


@needs_bf16
def test_bf16_autocast_runs_matmuls_in_bf16_and_fp32_does_not():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast("bf16", CPU):
        assert layer(x).dtype == torch.bfloat16
    with autocast("fp32", CPU):
        assert layer(x).dtype == torch.float32


@needs_bf16
def test_bf16_training_reaches_the_accuracy_of_fp32_on_the_smoke_model(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    paths = prepare_sms_splits(tmp_path)
    train, val, _ = create_dataloaders(paths, get_tokenizer(), batch_size=8, context_length=128, max_examples=64,
                                       batching="bucketed")
    accs, histories = {}, {}
    for precision in ("fp32", "bf16"):
        set_seed(123)
        model = build_classifier("gpt2-smoke (tiny)", "lora", rank=4, alpha=8)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
        histories[precision] = train_classifier(model, train, val, opt, CPU, num_epochs=2, eval_freq=4, eval_iter=2,
                                                progress=False, precision=precision)
        accs[precision] = calc_accuracy_loader(val, model, CPU)
    assert histories["fp32"].precision == "fp32" and histories["bf16"].precision == "bf16"
    fp32, bf16 = histories["fp32"].train_losses, histories["bf16"].train_losses
    assert fp32 != bf16  # bf16 really ran
    assert all(abs(a - b) <= 0.15 for a, b in zip(fp32, bf16)), (fp32, bf16)  # bf16 rounding, Adam's sign-like 1st step
    # 64 validation messages: one message is 1.6 points, and Adam's first steps amplify bf16 rounding on
    # the tiny random model; so the tolerance here is 3 messages.
    assert abs(accs["bf16"] - accs["fp32"]) <= 3 / 64, accs


def test_default_precision_is_exact_fp32(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    paths = prepare_sms_splits(tmp_path)
    train, val, _ = create_dataloaders(paths, get_tokenizer(), batch_size=8, context_length=128, max_examples=16,
                                       batching="bucketed")
    set_seed(123)
    model = build_classifier("gpt2-smoke (tiny)", "last_layer")
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = train_classifier(model, train, val, opt, CPU, num_epochs=1, eval_freq=10, eval_iter=1, progress=False)
    assert history.precision == "fp32" and set(seen) == {torch.float32}


def _lora_smoke_model():
    set_seed(7)
    return build_classifier("gpt2-smoke (tiny)", "lora", rank=4, alpha=8)


@needs_bf16
def test_frozen_weights_in_bf16_give_bit_identical_losses_and_gradients_and_are_restored_exactly():
    from course_lib.precision import frozen_weights_as
    from course_lib.training import calc_loss_batch

    x = torch.randint(0, 50257, (4, 12))
    y = torch.tensor([0, 1, 1, 0])
    results = []
    for hold in (False, True):
        model = _lora_smoke_model()
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        with frozen_weights_as(model, "bf16" if hold else "fp32"):
            if hold:  # every frozen Linear weight is held in bf16, nothing trainable is touched
                linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
                assert {m.weight.dtype for m in linears if not m.weight.requires_grad} == {torch.bfloat16}
                assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
            with autocast("bf16", CPU):
                loss = calc_loss_batch(x, y, model, CPU)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        after = dict(model.named_parameters())
        assert all(after[n].dtype == torch.float32 and torch.equal(after[n], v) for n, v in frozen.items())
        results.append((loss.item(), grads))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][n], results[1][1][n]) for n in results[0][1])


def test_frozen_weights_are_restored_when_the_step_fails():
    from course_lib.precision import frozen_weights_as

    model = _lora_smoke_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError):
        with frozen_weights_as(model, "bf16"):
            raise RuntimeError("a failing step")
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_writing_into_a_held_weight_is_refused_not_lost():
    from course_lib.lora import LinearWithLoRA
    from course_lib.precision import frozen_weights_as

    model = _lora_smoke_model()
    layer = next(m for m in model.modules() if isinstance(m, LinearWithLoRA))
    before = layer.linear.weight.detach().clone()
    with pytest.raises(RuntimeError, match="merge LoRA or load weights after training"):
        with frozen_weights_as(model, "bf16"):
            with torch.no_grad():
                layer.lora.B.fill_(0.5)
            layer.merge()  # would write W + BA into the bf16 copy, then be thrown away on restore
    assert layer.linear.weight.dtype == torch.float32 and torch.equal(layer.linear.weight, before)


def test_held_weights_come_back_when_holding_them_fails_halfway(monkeypatch):
    from course_lib.precision import frozen_weights_as

    model = _lora_smoke_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    real_to, calls = torch.Tensor.to, []

    def failing_to(self, *args, **kwargs):
        if torch.bfloat16 in args:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("out of memory")
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", failing_to)
    with pytest.raises(RuntimeError, match="out of memory"):
        with frozen_weights_as(model, "bf16"):
            pass
    monkeypatch.undo()
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_auto_precision_on_this_machine_is_what_its_cpu_flags_say():
    import os

    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo: the rule gives fp32, checked above")
    flags = open("/proc/cpuinfo").read()
    units = "avx512_bf16" in flags or "amx_bf16" in flags
    mkldnn = torch.backends.mkldnn.is_available()
    assert resolve_precision("auto", CPU) == ("bf16" if units and mkldnn else "fp32")


def _written_attend(module, queries, keys, values):
    """Attention as the notebooks write it (scores, causal mask, softmax, weighted sum): under bf16 autocast
    the scores are rounded to bf16 before the softmax."""
    b, t, _ = queries.shape
    q, k, v = module._split_heads(queries), module._split_heads(keys), module._split_heads(values)
    scores = q @ k.transpose(2, 3)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    weights = torch.softmax(scores.masked_fill(mask, float("-inf")) / module.head_dim ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, t, module.d_out)


def _attention_outputs_and_grads(dtype, patched: bool, grad: bool = True, written: bool = False, scale: float = 2.0):
    from course_lib.model import MultiHeadAttention
    from course_lib.precision import attention_for_bf16_training

    torch.manual_seed(11)
    att = MultiHeadAttention(48, 48, 16, 0.0, num_heads=4).eval()
    q, k, v = [scale * torch.randn(3, 16, 48, dtype=torch.float64) for _ in range(3)]
    g = torch.randn(3, 16, 48, dtype=torch.float64)
    inputs = [t.to(dtype).requires_grad_(grad) for t in (q, k, v)]
    with attention_for_bf16_training(att) if patched else torch.enable_grad(), torch.set_grad_enabled(grad):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):  # as in training
            out = _written_attend(att, *inputs) if written else att.attend(*inputs)
        if grad:
            out.backward(g.to(dtype))
    assert "attend" not in vars(att)  # the class's kernel again after the block
    return [out.detach().double()] + ([t.grad.double() for t in inputs] if grad else [])


@needs_bf16
@pytest.mark.parametrize("scale", [1.0, 2.0, 4.0])  # attention scores with std about 1, 4 and 16
def test_bf16_training_attention_is_closer_to_fp64_than_the_bf16_kernel_and_the_written_attention(monkeypatch, scale):
    from course_lib import precision

    reference = _attention_outputs_and_grads(torch.float64, patched=False, scale=scale)
    kernel = _attention_outputs_and_grads(torch.bfloat16, patched=False, scale=scale)
    written = _attention_outputs_and_grads(torch.bfloat16, patched=False, written=True, scale=scale)
    apply, seen = precision._CausalAttentionFp32Softmax.apply, []
    monkeypatch.setattr(precision._CausalAttentionFp32Softmax, "apply", lambda *a: seen.append(1) or apply(*a))
    ours = _attention_outputs_and_grads(torch.bfloat16, patched=True, scale=scale)
    assert seen == [1]  # really computed through the fp32-softmax attention, autocast or not

    def err(x, ref):
        return ((x - ref).norm() / ref.norm()).item()

    for name, ref, low, hand, mine in zip(("output", "dq", "dk", "dv"), reference, kernel, written, ours):
        assert 0 < err(mine, ref) <= err(hand, ref) and err(mine, ref) < 0.02, (name, err(hand, ref), err(mine, ref))
        if name != "output":  # the backward is what the bf16 kernel does worst
            assert err(mine, ref) <= 1.05 * err(low, ref), (name, err(low, ref), err(mine, ref))


def test_bf16_training_attention_needs_no_bf32_setting_and_restores_it():
    """Where oneDNN's fp32 precision setting is missing the products run in plain fp32; where it exists it
    is what it was after each product."""
    from course_lib.precision import _fp32_matmuls_on_bf16_units

    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    before = getattr(matmul, "fp32_precision", None)
    with _fp32_matmuls_on_bf16_units():
        if before is not None:
            assert matmul.fp32_precision == "bf16"
    assert getattr(matmul, "fp32_precision", None) == before


def test_attention_keeps_its_kernel_in_fp32_without_gradients_and_with_dropout(monkeypatch):
    from course_lib import precision
    from course_lib.model import MultiHeadAttention

    monkeypatch.setattr(precision._CausalAttentionFp32Softmax, "apply", lambda *a: pytest.fail("not the kernel"))
    for dtype, grad in ((torch.float32, True), (torch.bfloat16, False)):
        plain = _attention_outputs_and_grads(dtype, patched=False, grad=grad)
        held = _attention_outputs_and_grads(dtype, patched=True, grad=grad)
        assert all(torch.equal(a, b) for a, b in zip(plain, held)), dtype
    att = MultiHeadAttention(48, 48, 16, 0.5, num_heads=4).train()
    x = torch.randn(2, 5, 48, dtype=torch.bfloat16, requires_grad=True)
    with precision.attention_for_bf16_training(att):
        att.attend(x, x, x).float().sum().backward()  # dropout on the weights: the kernel, which draws it


@needs_bf16
def test_a_bf16_step_through_fast_training_is_as_close_to_fp32_as_the_plain_bf16_step(monkeypatch):
    """The whole model (q, k, v split from one grouped GEMM, attention with the fp32 softmax, LoRA fast path):
    its loss and LoRA gradients in bf16 are no further from the fp32 ones than plain autocast's."""
    from torch import nn

    from course_lib import precision
    from course_lib.classifier import add_classification_head
    from course_lib.config import get_config
    from course_lib.lora import lora_layers
    from course_lib.model import GPTModel
    from course_lib.strategies import configure_trainable

    torch.manual_seed(7)
    model = GPTModel(get_config("gpt2-smoke (tiny)"))
    add_classification_head(model, 2)
    configure_trainable(model, "lora", rank=4, alpha=8)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora.B, std=0.5)
    ids, labels = torch.randint(0, 1000, (4, 19)), torch.tensor([0, 1, 1, 0])

    def loss_and_grads(precision_name: str, fast: bool):
        model.zero_grad(set_to_none=True)
        held = precision.fast_training if fast else precision.frozen_weights_as
        with held(model, precision_name):
            with autocast(precision_name, CPU):
                loss = nn.functional.cross_entropy(model(ids)[:, -1].float(), labels)
            loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref_grads = loss_and_grads("fp32", fast=False)
    plain_loss, plain_grads = loss_and_grads("bf16", fast=False)
    calls, apply = [], precision._CausalAttentionFp32Softmax.apply
    monkeypatch.setattr(precision._CausalAttentionFp32Softmax, "apply", lambda *a: calls.append(1) or apply(*a))
    fast_loss, fast_grads = loss_and_grads("bf16", fast=True)
    assert len(calls) == model.cfg["n_layers"]

    def grad_error(grads):
        return max(((grads[n] - g).norm() / g.norm()).item() for n, g in ref_grads.items())

    assert 0 < grad_error(plain_grads) < 0.1
    assert grad_error(fast_grads) <= 1.5 * grad_error(plain_grads), (grad_error(plain_grads), grad_error(fast_grads))
    assert abs(fast_loss - ref_loss) <= max(1.5 * abs(plain_loss - ref_loss), 2e-3 * abs(ref_loss))
