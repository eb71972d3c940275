import pytest
import torch
from torch import nn

from course_lib.classifier import add_classification_head
from course_lib.config import get_config
from course_lib.lora import (LinearWithLoRA, LoRALayer, count_parameters, freeze_model, lora_layers,
                             mark_only_lora_as_trainable, merge_lora, replace_linear_with_lora, unfreeze,
                             unmerge_lora)
from course_lib.model import GPTModel
from support import smoke_model


def gpt2_small():
    """GPT-2 small's shapes on the meta device: counts without memory for 124M numbers."""
    with torch.device("meta"):
        return GPTModel(get_config("gpt2-small (124M)"))


def test_lora_layer_shapes_init_and_scaling():
    torch.manual_seed(0)
    layer = LoRALayer(10, 6, rank=4, alpha=8)
    assert layer.A.shape == (4, 10) and layer.B.shape == (6, 4)
    assert torch.count_nonzero(layer.B) == 0 and torch.count_nonzero(layer.A) == 40
    bound = 1 / 10 ** 0.5  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert layer.A.abs().max() <= bound
    assert layer.scaling == 2.0


@pytest.mark.parametrize("rank,alpha", [(4, 6), (4, 3), (3, 8.0)])
def test_lora_scaling_is_alpha_over_rank_when_not_an_integer(rank, alpha):
    torch.manual_seed(0)
    layer = LoRALayer(7, 5, rank=rank, alpha=alpha)
    nn.init.normal_(layer.B)
    x = torch.randn(2, 3, 7)  # (batch, tokens, features)
    assert layer.scaling == pytest.approx(alpha / rank)
    assert torch.allclose(layer(x), (alpha / rank) * x @ layer.A.T @ layer.B.T, atol=1e-6)


def test_wrapped_linear_is_identical_at_init_and_frozen():
    torch.manual_seed(0)
    linear = nn.Linear(10, 6)
    x = torch.randn(3, 10)
    wrapped = LinearWithLoRA(linear, rank=2, alpha=4)
    assert torch.equal(wrapped(x), linear(x))
    assert not linear.weight.requires_grad and not linear.bias.requires_grad
    assert {n for n, p in wrapped.named_parameters() if p.requires_grad} == {"lora.A", "lora.B"}


def test_merge_matches_unmerged_and_unmerge_restores_the_weight():
    torch.manual_seed(0)
    wrapped = LinearWithLoRA(nn.Linear(16, 12), rank=4, alpha=8)
    original = wrapped.linear.weight.clone()
    nn.init.normal_(wrapped.lora.B)
    x = torch.randn(5, 16)
    unmerged = wrapped(x)
    wrapped.merge()
    merged_weight = wrapped.linear.weight.detach().clone()
    assert (wrapped(x) - unmerged).abs().max() <= 1e-6
    assert torch.allclose(merged_weight, original + 2.0 * wrapped.lora.B @ wrapped.lora.A, atol=1e-6)
    assert not wrapped.linear.weight.requires_grad  # merging keeps W frozen
    wrapped.merge()  # a second merge adds nothing
    assert torch.equal(wrapped.linear.weight, merged_weight) and (wrapped(x) - unmerged).abs().max() <= 1e-6
    wrapped.unmerge()
    assert (wrapped.linear.weight - original).abs().max() <= 1e-6
    assert (wrapped(x) - unmerged).abs().max() <= 1e-6


@pytest.mark.parametrize("rank,alpha", [(0, 1), (-2, 1), (2.5, 1), (4, 0), (4, -1), (True, 1)])
def test_invalid_rank_or_alpha_is_refused(rank, alpha):
    with pytest.raises(ValueError, match="rank|alpha"):
        LoRALayer(4, 4, rank, alpha)


def test_rank8_on_every_block_linear_of_gpt2_small_gives_the_published_count():
    with torch.device("meta"):
        model = gpt2_small()
        freeze_model(model)
        replaced = replace_linear_with_lora(model, rank=8, alpha=16)
        assert len(replaced) == 72 and "out_head" not in replaced
        count = count_parameters(model)
        assert (count.trainable, count.total) == (1_327_104, 164_364_288)
        assert f"{100 * count.fraction:.2f}" == "0.81"


def test_rank16_with_trainable_two_class_head_gives_the_published_count():
    with torch.device("meta"):
        model = gpt2_small()
        add_classification_head(model, 2)
        freeze_model(model)
        replace_linear_with_lora(model, rank=16, alpha=16)
        unfreeze(model.out_head)
        count = count_parameters(model)
        assert (count.trainable, count.total) == (2_655_746, 127_095_554)
        assert f"{100 * count.fraction:.2f}" == "2.09"


def test_rank16_on_every_linear_including_the_head_gives_the_published_count():
    with torch.device("meta"):
        model = gpt2_small()
        add_classification_head(model, 2)
        base_total = count_parameters(model).total
        assert base_total == 124_441_346
        freeze_model(model)
        replace_linear_with_lora(model, rank=16, alpha=16, exclude=())
        count = count_parameters(model)
        assert count.trainable == 2_666_528 and count.total == base_total + 2_666_528


def test_second_injection_wraps_nothing_although_a_count_could_not_tell():
    once16 = smoke_model()
    freeze_model(once16)
    replace_linear_with_lora(once16, rank=16, alpha=16)
    twice8 = smoke_model()
    freeze_model(twice8)
    first = replace_linear_with_lora(twice8, rank=8, alpha=8)
    assert replace_linear_with_lora(twice8, rank=8, alpha=8) == []
    assert count_parameters(twice8).trainable == count_parameters(once16).trainable // 2
    assert all(not isinstance(m.linear, LinearWithLoRA) for m in lora_layers(twice8).values())
    assert list(lora_layers(twice8)) == first


def test_targets_match_by_name_suffix_like_peft():
    model = smoke_model()
    replaced = replace_linear_with_lora(model, 4, 8, target_modules=["W_query", "W_value"])
    assert replaced == ["trf_blocks.0.att.W_query", "trf_blocks.0.att.W_value",
                        "trf_blocks.1.att.W_query", "trf_blocks.1.att.W_value"]


def test_unknown_target_is_refused_by_name():
    with pytest.raises(ValueError, match="'W_querry'"):
        replace_linear_with_lora(smoke_model(), 4, 8, target_modules=["W_querry"])


def test_model_with_nothing_to_wrap_is_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_linear_with_lora(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), 4, 8)


def test_only_lora_and_head_receive_gradients():
    model = smoke_model()
    add_classification_head(model, 2)
    replace_linear_with_lora(model, 4, 8)
    mark_only_lora_as_trainable(model, also=["out_head"])
    model(torch.randint(0, 100, (2, 7)))[:, -1].sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora." in n or n.startswith("out_head.") for n in with_grad)
    assert {n for n in with_grad if n.endswith(".lora.B")} == {f"{name}.lora.B" for name in lora_layers(model)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == with_grad


def test_model_level_merge_and_unmerge_round_trip():
    model = smoke_model()
    replace_linear_with_lora(model, 4, 8)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora.B, std=0.1)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        before = model(ids)
        merge_lora(model)
        merged = model(ids)
        unmerge_lora(model)
        after = model(ids)
    assert (before - merged).abs().max() <= 1e-5 and (before - after).abs().max() <= 1e-6
