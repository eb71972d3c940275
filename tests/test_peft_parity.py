"""Our LoRA against Hugging Face peft's on the same GPTModel, with the same A and B."""
import copy

import pytest
import torch

from course_lib.config import get_config
from course_lib.lora import count_parameters, freeze_model, lora_layers, replace_linear_with_lora
from course_lib.model import GPTModel

peft = pytest.importorskip("peft")

TARGETS = ["W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2"]


def _pair(rank=8, alpha=16):
    torch.manual_seed(0)
    base = GPTModel(get_config("gpt2-smoke (tiny)"))
    ours = copy.deepcopy(base)
    freeze_model(ours)
    replace_linear_with_lora(ours, rank, alpha, target_modules=TARGETS)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    gen = torch.Generator().manual_seed(1)
    for name, layer in lora_layers(ours).items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        a = torch.randn(layer.lora.A.shape, generator=gen) * 0.1
        b = torch.randn(layer.lora.B.shape, generator=gen) * 0.1
        with torch.no_grad():
            layer.lora.A.copy_(a)
            layer.lora.B.copy_(b)
            peft_layer.lora_A["default"].weight.copy_(a)
            peft_layer.lora_B["default"].weight.copy_(b)
    return ours, theirs


def test_same_logits_gradients_and_trainable_count_as_peft():
    ours, theirs = _pair()
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(2))
    out_ours, out_theirs = ours(ids), theirs(ids)
    assert (out_ours - out_theirs).abs().max().item() <= 1e-6
    out_ours.square().mean().backward()
    out_theirs.square().mean().backward()
    for name, layer in lora_layers(ours).items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        assert (layer.lora.A.grad - peft_layer.lora_A["default"].weight.grad).abs().max().item() <= 1e-6
        assert (layer.lora.B.grad - peft_layer.lora_B["default"].weight.grad).abs().max().item() <= 1e-6
    trainable_peft, _ = theirs.get_nb_trainable_parameters()
    assert count_parameters(ours).trainable == trainable_peft


def test_peft_wrapped_model_is_read_at_the_last_real_tokens_like_ours():
    from course_lib.dataloaders import PAD_TOKEN_ID
    from course_lib.training import classifier_logits, pool_last_token

    ours, theirs = _pair()
    ids = torch.randint(0, 1000, (3, 7))
    ids[1, 4:] = PAD_TOKEN_ID
    asked = []
    theirs.get_base_model().register_forward_pre_hook(lambda m, a, kw: asked.append(kw.get("read_at")), with_kwargs=True)
    with torch.no_grad():
        got = classifier_logits(theirs, ids)
        assert asked[0].tolist() == [6, 3, 6]  # peft passed the positions through to our GPTModel
        assert torch.allclose(got, pool_last_token(theirs(ids), ids), atol=1e-5)
        assert torch.allclose(got, classifier_logits(ours, ids), atol=1e-5)
