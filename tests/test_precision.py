"""precision = fp32 | bf16 | auto for training: fp32 stays exact, bf16 autocasts where supported."""
import pytest
import torch

from course_lib.data import create_dataloaders, prepare_sms_splits
from course_lib.profiles import set_seed
from course_lib.strategies import build_classifier
from course_lib.tokenizer import get_tokenizer
from course_lib.training import (autocast, bf16_supported, calc_accuracy_loader, resolve_precision,
                                 train_classifier)

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not bf16_supported(CPU), reason="this CPU has no native bf16")


def test_precision_names_are_checked():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("auto", CPU) in {"fp32", "bf16"}
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision='fp32'"):
        resolve_precision("bf16", torch.device("meta"))


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
