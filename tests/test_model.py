import pytest
import torch

from course_lib.config import MODEL_SIZES, get_config, settings_to_cfg
from course_lib.generate import generate
from course_lib.model import GPTModel, count_model_parameters
from support import smoke_model


def test_gpt2_small_architecture_counts_163m_untied_and_124m_tied():
    with torch.device("meta"):  # shapes only: counting needs no memory for 163M numbers
        model = GPTModel(get_config("gpt2-small (124M)"))
    assert count_model_parameters(model) == 163_037_184
    assert count_model_parameters(model, tied=True) == 124_439_808
    model.out_head.weight = model.tok_emb.weight  # actually tied: shared tensor counted once
    assert count_model_parameters(model) == 124_439_808
    assert count_model_parameters(model, tied=True) == 124_439_808


def test_blocks_have_separate_qkv_linear_layers_with_bias():
    model = GPTModel(get_config("gpt2-smoke (tiny)"))
    att = model.trf_blocks[0].att
    for layer in (att.W_query, att.W_key, att.W_value, att.out_proj):
        assert isinstance(layer, torch.nn.Linear) and layer.bias is not None
    assert model.out_head.bias is None


# Hugging Face's published parameter counts (tied head) of openai-community/gpt2-medium, -large and -xl.
@pytest.mark.parametrize("size,published", [
    ("gpt2-medium (355M)", 354_823_168), ("gpt2-large (774M)", 774_030_080), ("gpt2-xl (1558M)", 1_557_611_200)])
def test_bigger_configs_build_the_published_architectures(size, published):
    cfg = get_config(size)
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = GPTModel(cfg)
    assert count_model_parameters(model, tied=True) == published
    assert cfg["emb_dim"] // cfg["n_heads"] == 64 and cfg["emb_dim"] % cfg["n_heads"] == 0  # GPT-2's head size
    assert len(model.trf_blocks) == cfg["n_layers"] and model.trf_blocks[0].att.num_heads == cfg["n_heads"]


def test_unknown_model_size_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="gpt2-small"):
        get_config("gpt2-huge")


def test_settings_to_cfg_renames_all_five_keys():
    # every value distinct, so that a swapped pair of keys cannot pass
    cfg = settings_to_cfg({"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1024, "n_head": 16, "n_layer": 24},
                          drop_rate=0.1, qkv_bias=False)
    assert cfg == {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1024, "n_heads": 16,
                   "n_layers": 24, "drop_rate": 0.1, "qkv_bias": False}
    assert settings_to_cfg({"n_vocab": 7, "n_ctx": 5, "n_embd": 4, "n_head": 2, "n_layer": 3}) == {
        "vocab_size": 7, "context_length": 5, "emb_dim": 4, "n_heads": 2, "n_layers": 3, "drop_rate": 0.0,
        "qkv_bias": True}


@pytest.mark.parametrize("settings,name", [
    ({"n_vocab": 1, "n_ctx": 1, "n_embd": 1, "n_head": 1}, "n_layer"),
    ({"n_vocab": 1, "n_ctx": 1, "n_embd": 1, "n_head": 1, "n_layer": 1, "n_foo": 3}, "n_foo")])
def test_settings_to_cfg_names_a_missing_or_unknown_key(settings, name):
    with pytest.raises(KeyError, match=name):
        settings_to_cfg(settings)


def test_input_longer_than_context_is_refused_clearly():
    model = GPTModel(get_config("gpt2-smoke (tiny)"))
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_greedy_generation_takes_the_argmax_each_step():
    model = smoke_model()
    idx = torch.tensor([[1, 2, 3]])
    out = generate(model, idx, max_new_tokens=3, context_size=128)
    assert out.shape == (1, 6)
    with torch.no_grad():
        first = model(idx)[:, -1].argmax(-1)
    assert out[0, 3] == first[0]


def test_top_k_sampling_only_draws_from_the_k_most_likely_tokens():
    model = smoke_model()
    idx = torch.tensor([[5, 6]])
    with torch.no_grad():
        top = set(torch.topk(model(idx)[0, -1], 3).indices.tolist())
    for seed in range(20):
        out = generate(model, idx, 1, 128, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(seed))
        assert out[0, -1].item() in top


def test_generation_rejects_negative_temperature():
    with pytest.raises(ValueError, match="temperature"):
        generate(smoke_model(), torch.tensor([[1]]), 1, 128, temperature=-1)


def test_every_listed_size_builds():
    assert {"gpt2-small (124M)", "gpt2-medium (355M)", "gpt2-large (774M)", "gpt2-xl (1558M)"} <= set(MODEL_SIZES)
    for size in MODEL_SIZES:
        with torch.device("meta"):
            model = GPTModel(get_config(size))
        assert model.tok_emb.weight.shape == (get_config(size)["vocab_size"], get_config(size)["emb_dim"])


def _written_out_logits(model, ids):
    """The forward pass with attention and LayerNorm written op by op (scores, causal mask, softmax;
    mean, biased variance): the reference the fused kernels must reproduce."""
    def norm(ln, x):
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True, unbiased=False)
        return ln.scale * (x - mean) / torch.sqrt(var + ln.eps) + ln.shift

    def heads(att, z):
        b, t, _ = z.shape
        return z.view(b, t, att.num_heads, att.head_dim).transpose(1, 2)

    b, t = ids.shape
    x = model.tok_emb(ids) + model.pos_emb(torch.arange(t))
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    for block in model.trf_blocks:
        att, h = block.att, norm(block.norm1, x)
        q, k, v = heads(att, att.W_query(h)), heads(att, att.W_key(h)), heads(att, att.W_value(h))
        weights = torch.softmax((q @ k.transpose(2, 3)).masked_fill(mask, float("-inf")) / att.head_dim ** 0.5, dim=-1)
        x = x + att.out_proj((weights @ v).transpose(1, 2).reshape(b, t, att.d_out))
        x = x + block.ff(norm(block.norm2, x))
    return model.out_head(norm(model.final_norm, x))


def test_fused_attention_and_layer_norm_match_the_written_out_forward_on_a_hub_checkpoint(tmp_path):
    from course_lib.weights import load_gpt2

    model, _ = load_gpt2("gpt2-smoke (tiny)", models_dir=tmp_path)  # written in the hub's layout, then loaded
    model.eval()
    ids = torch.randint(0, model.cfg["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused, written = model(ids), _written_out_logits(model, ids)
    assert fused.dtype == torch.float32 and written.abs().max() > 0.1
    assert (fused - written).abs().max() <= 1e-5
    assert torch.equal(fused.argmax(dim=-1), written.argmax(dim=-1))
