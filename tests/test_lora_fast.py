"""The grouped fast LoRA path (course_lib.lora_fast) computes LinearWithLoRA's mathematics: same outputs,
same gradients for the same parameters; it falls back to the written layers where it could not."""
import pytest
import torch
from torch import nn

from course_lib import lora_fast
from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.lora import LinearWithLoRA, lora_layers, merge_lora, replace_linear_with_lora
from course_lib.lora_fast import fast_groups, fast_lora
from course_lib.model import GPTModel
from course_lib.precision import bf16_supported, frozen_weights_as
from course_lib.strategies import configure_trainable

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not bf16_supported(CPU), reason="this CPU has no native bf16")


def lora_classifier(seed=0, rank=4, alpha=8):
    """The smoke GPT-2 with LoRA on every block Linear and B made non-zero, so the LoRA path matters."""
    torch.manual_seed(seed)
    model = GPTModel(get_config("gpt2-smoke (tiny)"))
    add_classification_head(model, 2)
    configure_trainable(model, "lora", rank=rank, alpha=alpha)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora.B, std=0.5)
    return model


def outputs_and_grads(model, ids, fast: bool, precision: str = "fp32"):
    model.zero_grad(set_to_none=True)
    with frozen_weights_as(model, precision), (fast_lora(model) if fast else torch.enable_grad()):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(ids)
        (out.float() ** 2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach().float(), grads


def test_fast_path_gives_lora_layers_outputs_and_gradients_in_fp32_to_1e5(monkeypatch):
    model = lora_classifier()
    ids = torch.randint(0, 1000, (3, 13))
    calls = []
    apply = lora_fast._GroupedLoRALinear.apply
    monkeypatch.setattr(lora_fast._GroupedLoRALinear, "apply", lambda *a: calls.append(a[4]) or apply(*a))
    slow_out, slow_grads = outputs_and_grads(model, ids, fast=False)
    assert not calls
    fast_out, fast_grads = outputs_and_grads(model, ids, fast=True)
    n_layers = model.cfg["n_layers"]
    # one call per group: q, k and v together (3 layers), out_proj, ff1, ff2 (one each), per block
    assert sorted(calls) == sorted([3, 1, 1, 1] * n_layers)
    assert (fast_out - slow_out).abs().max() <= 1e-5 * slow_out.abs().max()
    assert fast_grads.keys() == slow_grads.keys() and any(".lora.A" in n for n in fast_grads)
    for name, g in slow_grads.items():
        assert (fast_grads[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


@needs_bf16
def test_fast_path_in_bf16_is_as_close_to_fp32_as_the_written_layers():
    """bf16 rounds differently when the matmuls are grouped, so the tolerance is stated against fp32: the
    fast path's error must not exceed the written layers' error by more than half of it again."""
    model = lora_classifier(seed=1)
    ids = torch.randint(0, 1000, (4, 16))
    ref_out, ref_grads = outputs_and_grads(model, ids, fast=False, precision="fp32")
    results = {fast: outputs_and_grads(model, ids, fast=fast, precision="bf16") for fast in (False, True)}

    def error(out, grads):
        out_err = ((out - ref_out).norm() / ref_out.norm()).item()
        grad_err = max(((grads[n] - g).norm() / g.norm()).item() for n, g in ref_grads.items())
        return out_err, grad_err

    (written_out, written_grad), (fast_out, fast_grad) = error(*results[False]), error(*results[True])
    assert 0 < written_out < 0.02 and 0 < written_grad < 0.1  # bf16 really ran, and is close
    assert fast_out <= 1.5 * written_out and fast_grad <= 1.5 * written_grad, (written_out, fast_out, written_grad,
                                                                               fast_grad)


def test_training_steps_through_the_fast_path_match_the_written_layers():
    ids, labels = torch.randint(0, 1000, (4, 9)), torch.tensor([0, 1, 1, 0])
    params = {}
    for fast in (False, True):
        model = lora_classifier(seed=2)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        with fast_lora(model) if fast else torch.enable_grad():
            for _ in range(3):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(ids)[:, -1], labels).backward()
                optimizer.step()
        params[fast] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, p in params[False].items():
        assert torch.allclose(params[True][name], p, atol=1e-5, rtol=1e-4), name


def test_layers_are_restored_and_merged_or_hooked_layers_run_as_written():
    model = lora_classifier(seed=3).eval()
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        expected = model(ids)
        with fast_lora(model):
            assert "project" in model.trf_blocks[0].att.__dict__
            merge_lora(model)  # writes into the frozen weights: the fast path must not use a stale copy
            merged = model(ids)
        assert not any("forward" in m.__dict__ or "project" in m.__dict__ for m in model.modules())
    assert (merged - expected).abs().max() <= 1e-5
    hooked = []
    model = lora_classifier(seed=3)
    model.trf_blocks[0].att.W_key.register_forward_hook(lambda *a: hooked.append(1))
    with torch.no_grad(), fast_lora(model):
        model(ids)
    assert hooked == [1]  # that block's q, k, v ran as written, so the hook saw its layer


def test_a_changed_frozen_weight_is_seen_by_the_fast_path():
    model = lora_classifier(seed=4).eval()
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad(), fast_lora(model):
        model(ids)  # builds the stacked q/k/v weights
        model.trf_blocks[0].att.W_value.linear.weight.mul_(2)
        fast = model(ids)
    with torch.no_grad():
        assert torch.allclose(fast, model(ids), atol=1e-5)


def test_evaluation_folds_lora_into_the_weights_and_matches_the_written_layers_to_1e5(monkeypatch):
    model = lora_classifier(seed=5).eval()
    ids = torch.randint(0, 1000, (3, 11))
    with torch.no_grad():
        expected = model(ids)
    grouped, rank_wide = [], []
    apply = lora_fast._GroupedLoRALinear.apply
    monkeypatch.setattr(lora_fast._GroupedLoRALinear, "apply", lambda *a: grouped.append(1) or apply(*a))
    forward = type(lora_layers(model)["trf_blocks.0.att.W_query"].lora).forward
    monkeypatch.setattr(type(lora_layers(model)["trf_blocks.0.att.W_query"].lora), "forward",
                        lambda self, x: rank_wide.append(1) or forward(self, x))
    with torch.no_grad(), fast_lora(model):
        folded = model(ids)
        groups = fast_groups(model)
        assert len(groups) == 4 * model.cfg["n_layers"] and all(g._stacked[0][1] for g in groups)  # folded copies
    assert not grouped and not rank_wide   # no rank-wide product ran: LoRA was inside the weights
    assert (folded - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_folded_weights_follow_training_steps_and_training_drops_them():
    model = lora_classifier(seed=6)
    ids, labels = torch.randint(0, 1000, (4, 9)), torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    seen = []
    with fast_lora(model):
        for _ in range(2):
            with torch.no_grad():
                seen.append(model(ids))   # folded with A and B as they are now
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(ids)[:, -1], labels).backward()
            optimizer.step()
            assert not any(g._stacked[0][1] for g in fast_groups(model))   # training put the frozen weights back
        with torch.no_grad():
            seen.append(model(ids))
    assert not torch.allclose(seen[0], seen[-1])   # the steps changed A and B, and evaluation saw it
    with torch.no_grad():
        assert (seen[-1] - model(ids)).abs().max() <= 1e-5 * seen[-1].abs().max()


def test_layers_of_different_rank_or_alpha_are_not_grouped_but_still_fast():
    torch.manual_seed(5)
    model = GPTModel(get_config("gpt2-smoke (tiny)")).eval()
    replace_linear_with_lora(model, 4, 8, target_modules=["W_query", "W_key"])
    replace_linear_with_lora(model, 2, 8, target_modules=["W_value"])
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora.B, std=0.5)
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        expected = model(ids)
        with fast_lora(model):
            assert "forward" not in model.trf_blocks[0].att.__dict__
            assert isinstance(model.trf_blocks[0].att.W_value, LinearWithLoRA)
            assert "forward" in model.trf_blocks[0].att.W_value.__dict__
            got = model(ids)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def _positions_read(ids, seed):
    """One position per row, the first and the last among them: what a classifier reads."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, ids.shape[1], (ids.shape[0],), generator=g)
    index[0], index[-1] = 0, ids.shape[1] - 1
    return index


@pytest.mark.parametrize("fast", [False, True])
def test_reading_some_positions_gives_the_whole_forwards_logits_and_gradients_there(fast):
    torch.manual_seed(5)
    ids = torch.randint(0, 1000, (5, 9))
    index = _positions_read(ids, seed=5)
    rows = torch.arange(5)
    results = []
    for read_at in (None, index):
        model = lora_classifier(seed=6)
        with fast_lora(model) if fast else torch.enable_grad():
            out = model(ids, read_at=read_at)
            logits = out[rows, index] if read_at is None else out[:, 0]
            (logits ** 2).sum().backward()
        assert out.shape == ((5, 9, 2) if read_at is None else (5, 1, 2))
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (whole, whole_grads), (read, read_grads) = results
    assert (read - whole).abs().max() <= 1e-5
    assert whole_grads.keys() == read_grads.keys()
    for name, grad in whole_grads.items():
        assert torch.allclose(read_grads[name], grad, atol=1e-5, rtol=1e-4), name
    # the last block's B gradients come from the positions read alone: a wrong position would change them
    assert read_grads["trf_blocks.1.ff.layers.2.lora.B"].abs().sum() > 0


@needs_bf16
def test_reading_some_positions_in_bf16_training_stays_as_close_to_fp32_as_the_whole_forward():
    from course_lib.precision import fast_training

    torch.manual_seed(7)
    ids = torch.randint(0, 1000, (4, 12))
    index = _positions_read(ids, seed=7)
    rows = torch.arange(4)
    reference = lora_classifier(seed=8)(ids)[rows, index].detach()
    errors = []
    for read_at in (None, index):
        model = lora_classifier(seed=8)
        with fast_training(model, "bf16"), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, read_at=read_at)
        logits = (out[rows, index] if read_at is None else out[:, 0]).float()
        errors.append((logits - reference).abs().max().item())
    assert errors[1] <= max(2 * errors[0], 0.05), errors
