import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib.config import settings_to_cfg
from course_lib.model import GPTModel
from course_lib.weights import (download_gpt2, load_gpt2, load_gpt2_checkpoint, load_weights_into_gpt,
                                state_dict_to_params, write_smoke_checkpoint)

transformers = pytest.importorskip("transformers")


def _hf_tiny(folder: Path, n_embd=32, n_layer=2, n_head=4, vocab=300, n_positions=64, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd,
                                     n_layer=n_layer, n_head=n_head)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def _ours(folder: Path) -> GPTModel:
    settings, params = load_gpt2_checkpoint(folder)
    model = GPTModel(settings_to_cfg(settings))
    return load_weights_into_gpt(model, params).eval()


def _strip_prefix(folder: Path) -> None:
    state = load_file(folder / "model.safetensors")
    assert any(k.startswith("transformer.") for k in state)
    save_file({k.removeprefix("transformer."): v for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


@pytest.mark.parametrize("prefix", ["transformer.", "none"])
def test_loader_matches_transformers_logits_for_both_key_prefixes(tmp_path, prefix):
    hf = _hf_tiny(tmp_path)
    if prefix == "none":
        _strip_prefix(tmp_path)
    ours = _ours(tmp_path)
    ids = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    assert diff <= 1e-5


def test_smoke_checkpoint_is_deterministic_and_loads_in_transformers(tmp_path):
    a = write_smoke_checkpoint(tmp_path / "a")
    b = write_smoke_checkpoint(tmp_path / "b")
    for name in ("config.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    hf = transformers.GPT2LMHeadModel.from_pretrained(a).eval()
    ours = _ours(a)
    ids = torch.arange(20).unsqueeze(0)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-5


def test_gpt2_small_layout_has_148_tensors_and_124m_numbers():
    with torch.device("meta"):  # transformers' GPT-2 124M, shapes only
        state = transformers.GPT2LMHeadModel(transformers.GPT2Config()).state_dict()
    state.pop("lm_head.weight")  # tied to wte (the loader's check of that needs values: tested below)
    params = state_dict_to_params(state, n_layer=12)
    leaves = []

    def walk(t):
        if isinstance(t, torch.Tensor):
            leaves.append(t)
        else:
            for v in (t.values() if isinstance(t, dict) else t):
                walk(v)
    walk(params)
    assert len(leaves) == 148
    assert sum(t.numel() for t in leaves) == 124_439_808


def test_truncated_safetensors_is_refused_with_advice(tmp_path):
    folder = write_smoke_checkpoint(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or incomplete.*download it again"):
        load_gpt2_checkpoint(folder)


def test_missing_file_is_refused_with_advice(tmp_path):
    folder = write_smoke_checkpoint(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing.*course fetch"):
        load_gpt2_checkpoint(folder)


def test_checkpoint_of_another_size_names_tensor_and_both_shapes(tmp_path):
    _hf_tiny(tmp_path, n_embd=48, n_head=4, vocab=300, n_positions=64)
    _, params = load_gpt2_checkpoint(tmp_path)
    model = GPTModel(settings_to_cfg({"n_vocab": 300, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}))
    with pytest.raises(ValueError, match=r"Shape mismatch for wpe: the model expects \(64, 32\) but the checkpoint has \(64, 48\)"):
        load_weights_into_gpt(model, params)


def test_load_gpt2_refuses_a_cached_checkpoint_of_the_wrong_size(tmp_path):
    folder = tmp_path / "gpt2-smoke"
    _hf_tiny(folder, n_embd=48, n_head=4, vocab=50257, n_positions=128)
    with pytest.raises(ValueError, match="emb_dim=48.*emb_dim=32"):
        load_gpt2("gpt2-smoke (tiny)", models_dir=tmp_path)


def test_real_gpt2_download_offline_fails_with_one_sentence(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Could not download config.json of openai-community/gpt2.*smoke"):
        download_gpt2("gpt2-small (124M)", models_dir=tmp_path)


def test_smoke_config_json_describes_the_smoke_model(tmp_path):
    config = json.loads((write_smoke_checkpoint(tmp_path) / "config.json").read_text())
    assert (config["n_embd"], config["n_layer"], config["vocab_size"]) == (32, 2, 50257)


def _add_tensors(folder: Path, extra: dict) -> None:
    state = load_file(folder / "model.safetensors")
    save_file({**state, **extra}, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_hub_legacy_buffers_are_skipped_and_the_model_matches_transformers(tmp_path):
    from rehearsal import add_legacy_buffers

    folder = add_legacy_buffers(write_smoke_checkpoint(tmp_path))
    keys = set(load_file(folder / "model.safetensors"))
    assert {"h.0.attn.bias", "h.1.attn.masked_bias"} <= keys and len(keys) == 4 + 2 * 14
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.arange(30).unsqueeze(0)
    with torch.no_grad():
        assert (hf(ids).logits - _ours(folder)(ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("stray", ["h.0.attn.c_attn.lora_A", "score.weight", "h.7.attn.bias", "h.0.mlp.bias"])
def test_a_tensor_the_model_would_not_use_is_named(tmp_path, stray):
    folder = write_smoke_checkpoint(tmp_path)
    _add_tensors(folder, {stray: torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=f"1 tensor\\(s\\) a GPT-2 of 2 blocks does not use \\('{stray}'\\)"):
        load_gpt2_checkpoint(folder)


def test_an_lm_head_equal_to_wte_loads_but_an_untied_one_is_refused(tmp_path):
    folder = write_smoke_checkpoint(tmp_path)
    wte = load_file(folder / "model.safetensors")["wte.weight"]
    _add_tensors(folder, {"lm_head.weight": wte.clone()})
    load_gpt2_checkpoint(folder)
    _add_tensors(folder, {"lm_head.weight": wte + 1})
    with pytest.raises(ValueError, match="'lm_head.weight'"):
        load_gpt2_checkpoint(folder)


def test_loading_copies_into_the_models_existing_parameters(tmp_path):
    settings, params = load_gpt2_checkpoint(write_smoke_checkpoint(tmp_path))
    model = GPTModel(settings_to_cfg(settings))
    before = {name: p for name, p in model.named_parameters()}
    load_weights_into_gpt(model, params)
    after = dict(model.named_parameters())  # out_head.weight is now tok_emb.weight (tied)
    assert set(after) == set(before) - {"out_head.weight"}
    assert all(after[name] is before[name] for name in after)  # an optimizer built before still holds them
    assert torch.equal(before["trf_blocks.0.norm1.scale"], params["blocks"][0]["ln_1"]["g"])
    assert torch.equal(before["trf_blocks.1.att.W_query.weight"], params["blocks"][1]["attn"]["c_attn"]["w"][:, :32].T)
