"""GPT-2 weights: download from the Hugging Face hub, read into ``settings`` and ``params``,
load into :class:`~course_lib.model.GPTModel`.

The files are the hub's ``config.json`` and ``model.safetensors``. ``settings`` is the dict of
OpenAI's hparams (n_vocab, n_ctx, n_embd, n_head, n_layer); ``params`` is a tree of tensors:
``wte``, ``wpe``, ``blocks[i]`` (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``,
``ln_1``, ``ln_2``, each with ``w``/``b`` or ``g``/``b``), and the final norm's ``g`` and ``b``.
GPT-2 stores its Linear layers as Conv1D, i.e. weights of shape (in, out): loading transposes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import HF_REPOS, MODEL_SIZES, SMOKE_MODEL, get_config, settings_to_cfg
from .model import GPTModel
from .paths import cache_dir

Params = dict[str, Any]
FILES = ("config.json", "model.safetensors")


# --------------------------------------------------------------------------- download
def download_gpt2(model_size: str, models_dir: str | Path | None = None) -> Path:
    """The folder holding ``config.json`` and ``model.safetensors`` for ``model_size``.

    Real sizes come from the Hugging Face hub through ``huggingface_hub`` (cached, resumable,
    honours ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``). The smoke model is written locally.
    """
    if model_size == SMOKE_MODEL:
        folder = Path(models_dir or cache_dir() / "models") / "gpt2-smoke"
        if not all((folder / f).exists() for f in FILES):
            write_smoke_checkpoint(folder)
        return folder
    if model_size not in HF_REPOS:
        raise ValueError(f"Unknown model size {model_size!r}; choose one of {list(MODEL_SIZES)}.")
    from huggingface_hub import hf_hub_download

    repo = HF_REPOS[model_size]
    paths = []
    for filename in FILES:
        try:
            paths.append(Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=models_dir)))
        except Exception as err:  # network, offline mode, missing repo: one readable sentence
            raise RuntimeError(
                f"Could not download {filename} of {repo} from the Hugging Face hub ({type(err).__name__}); "
                "connect to the internet (or set HF_ENDPOINT to a mirror of the hub) and run "
                "`course fetch` again, or use COURSE_PROFILE=smoke to work without GPT-2 weights."
            ) from err
    return paths[0].parent


# --------------------------------------------------------------------------- read
def load_gpt2_checkpoint(folder: str | Path) -> tuple[dict[str, int], Params]:
    """Read a Hugging Face GPT-2 folder into the original project's ``(settings, params)``."""
    folder = Path(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{name} is missing from {folder}; download the model with "
                                    "`course fetch` or download_gpt2().")
    settings = hf_config_to_settings(json.loads((folder / "config.json").read_text()))
    try:
        state = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{folder / 'model.safetensors'} is damaged or incomplete ({err}); delete it "
                         "and download it again with `course fetch`.") from err
    return settings, state_dict_to_params(state, settings["n_layer"])


def hf_config_to_settings(config: dict[str, Any]) -> dict[str, int]:
    """The five hparams of OpenAI's GPT-2 from a Hugging Face ``config.json``."""
    try:
        return {
            "n_vocab": int(config["vocab_size"]),
            "n_ctx": int(config.get("n_positions", config.get("n_ctx"))),
            "n_embd": int(config["n_embd"]),
            "n_head": int(config["n_head"]),
            "n_layer": int(config["n_layer"]),
        }
    except (KeyError, TypeError) as err:
        raise ValueError(f"config.json is not a GPT-2 config (missing {err}); is this a GPT-2 checkpoint?") from err


# Tensors a GPT-2 checkpoint may hold that are not weights: the hub's files (written by an older
# transformers) keep each block's causal-mask buffer ``attn.bias`` and the constant ``attn.masked_bias``.
# Our attention builds its own mask, so these are skipped; any other extra tensor is refused by name.
IGNORED_SUFFIXES = ("attn.bias", "attn.masked_bias")


def state_dict_to_params(state: dict[str, torch.Tensor], n_layer: int) -> Params:
    """Turn flat Hugging Face keys (with or without ``transformer.``) into the params tree.

    Refuses a checkpoint with a tensor it would not use (other than the buffers in
    ``IGNORED_SUFFIXES`` and an ``lm_head.weight`` equal to ``wte``), naming it, so that nothing in
    a file is dropped silently.
    """
    flat = {k.removeprefix("transformer."): v for k, v in state.items()}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in flat:
            raise KeyError(f"The checkpoint has no tensor {key!r}; is it a complete GPT-2 checkpoint?")
        used.add(key)
        return flat[key]

    def linear(prefix: str) -> dict[str, torch.Tensor]:
        return {"w": take(f"{prefix}.weight"), "b": take(f"{prefix}.bias")}

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {"g": take(f"{prefix}.weight"), "b": take(f"{prefix}.bias")}

    blocks = []
    for i in range(n_layer):
        p = f"h.{i}"
        blocks.append({
            "attn": {"c_attn": linear(f"{p}.attn.c_attn"), "c_proj": linear(f"{p}.attn.c_proj")},
            "mlp": {"c_fc": linear(f"{p}.mlp.c_fc"), "c_proj": linear(f"{p}.mlp.c_proj")},
            "ln_1": norm(f"{p}.ln_1"),
            "ln_2": norm(f"{p}.ln_2"),
        })
    ln_f = norm("ln_f")
    wte, wpe = take("wte.weight"), take("wpe.weight")
    head = flat.get("lm_head.weight")
    if head is not None and head.shape == wte.shape and torch.equal(head, wte):
        used.add("lm_head.weight")  # a tied output layer saved twice: it is wte
    unexpected = sorted(k for k in flat if k not in used and not _ignored(k, n_layer))
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise ValueError(f"The checkpoint has {len(unexpected)} tensor(s) a GPT-2 of {n_layer} blocks does not "
                         f"use ({shown}); is it a GPT-2 checkpoint of this size?")
    return {"wte": wte, "wpe": wpe, "blocks": blocks, "g": ln_f["g"], "b": ln_f["b"]}


def _ignored(key: str, n_layer: int) -> bool:
    """Is ``key`` one of the non-weight buffers of a block that exists (``h.3.attn.masked_bias``)?"""
    head, _, rest = key.partition(".")
    index, _, suffix = rest.partition(".")
    return head == "h" and index.isdigit() and int(index) < n_layer and suffix in IGNORED_SUFFIXES


# --------------------------------------------------------------------------- load
def copy_into(name: str, target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into the model's existing parameter ``target`` (same object, dtype and device),
    refusing a shape mismatch by naming both shapes."""
    if tuple(target.shape) != tuple(value.shape):
        raise ValueError(f"Shape mismatch for {name}: the model expects {tuple(target.shape)} but the "
                         f"checkpoint has {tuple(value.shape)}; was it made for another model size?")
    with torch.no_grad():
        target.copy_(value)


def load_weights_into_gpt(gpt: GPTModel, params: Params) -> GPTModel:
    """Copy ``params`` into ``gpt``'s parameters: split c_attn into query/key/value, transpose
    Conv1D weights, and tie ``out_head`` to the token embedding, as GPT-2 does."""
    if len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"The checkpoint has {len(params['blocks'])} blocks but the model has "
                         f"{len(gpt.trf_blocks)}; build the model from this checkpoint's settings.")
    copy_into("wpe", gpt.pos_emb.weight, params["wpe"])
    copy_into("wte", gpt.tok_emb.weight, params["wte"])
    for i, (block, p) in enumerate(zip(gpt.trf_blocks, params["blocks"])):
        att, ff = block.att, block.ff
        c_attn = p["attn"]["c_attn"]
        for proj, w, b in zip((att.W_query, att.W_key, att.W_value),
                              torch.chunk(c_attn["w"], 3, dim=-1), torch.chunk(c_attn["b"], 3, dim=-1)):
            copy_into(f"blocks[{i}].attn.c_attn.w", proj.weight, w.T)
            copy_into(f"blocks[{i}].attn.c_attn.b", proj.bias, b)
        _load_linear(att.out_proj, p["attn"]["c_proj"], f"blocks[{i}].attn.c_proj")
        _load_linear(ff.layers[0], p["mlp"]["c_fc"], f"blocks[{i}].mlp.c_fc")
        _load_linear(ff.layers[2], p["mlp"]["c_proj"], f"blocks[{i}].mlp.c_proj")
        for norm, key in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
            copy_into(f"blocks[{i}].{key}.g", norm.scale, p[key]["g"])
            copy_into(f"blocks[{i}].{key}.b", norm.shift, p[key]["b"])
    copy_into("g", gpt.final_norm.scale, params["g"])
    copy_into("b", gpt.final_norm.shift, params["b"])
    gpt.out_head.weight = gpt.tok_emb.weight  # weight tying: GPT-2 reuses wte as its output layer
    return gpt


def _load_linear(layer: torch.nn.Linear, p: dict[str, torch.Tensor], name: str) -> None:
    copy_into(f"{name}.w", layer.weight, p["w"].T)
    copy_into(f"{name}.b", layer.bias, p["b"])


def load_gpt2(model_size: str, drop_rate: float = 0.0,
              models_dir: str | Path | None = None) -> tuple[GPTModel, dict[str, int]]:
    """Download (or generate, for the smoke model) and load GPT-2; returns ``(model, settings)``.

    The checkpoint must be the size asked for: a mismatch is refused, naming both.
    """
    settings, params = load_gpt2_checkpoint(download_gpt2(model_size, models_dir))
    cfg = settings_to_cfg(settings, drop_rate=drop_rate)
    expected = get_config(model_size)
    for key in ("emb_dim", "n_layers", "n_heads", "context_length", "vocab_size"):
        if cfg[key] != expected[key]:
            raise ValueError(f"The checkpoint found for {model_size!r} has {key}={cfg[key]}, but that size "
                             f"needs {key}={expected[key]}; delete the cached files and download again.")
    model = GPTModel(cfg)
    load_weights_into_gpt(model, params)
    model.eval()
    return model, settings


# --------------------------------------------------------------------------- generated checkpoints
def write_smoke_checkpoint(folder: str | Path, seed: int = 123) -> Path:
    """Write a deterministic tiny GPT-2 in the hub's exact layout (keys without a prefix,
    Conv1D weights of shape (in, out)), so the smoke profile uses the real loading code."""
    return write_random_checkpoint(folder, SMOKE_MODEL, seed=seed)


def write_random_checkpoint(folder: str | Path, model_size: str, seed: int = 123) -> Path:
    """Write a randomly initialised GPT-2 of ``model_size`` as ``config.json`` + ``model.safetensors``
    in the hub's layout (the smoke profile's model is one; the tests add the hub's legacy buffers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = get_config(model_size)
    e, v, c, n = cfg["emb_dim"], cfg["vocab_size"], cfg["context_length"], cfg["n_layers"]
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def near_one(size: int) -> torch.Tensor:
        return 1.0 + normal(size, std=0.05)

    state = {"wte.weight": normal(v, e), "wpe.weight": normal(c, e, std=0.01),
             "ln_f.weight": near_one(e), "ln_f.bias": normal(e)}
    for i in range(n):
        p = f"h.{i}"
        state.update({
            f"{p}.ln_1.weight": near_one(e), f"{p}.ln_1.bias": normal(e),
            f"{p}.attn.c_attn.weight": normal(e, 3 * e), f"{p}.attn.c_attn.bias": normal(3 * e),
            f"{p}.attn.c_proj.weight": normal(e, e), f"{p}.attn.c_proj.bias": normal(e),
            f"{p}.ln_2.weight": near_one(e), f"{p}.ln_2.bias": normal(e),
            f"{p}.mlp.c_fc.weight": normal(e, 4 * e), f"{p}.mlp.c_fc.bias": normal(4 * e),
            f"{p}.mlp.c_proj.weight": normal(4 * e, e), f"{p}.mlp.c_proj.bias": normal(e),
        })
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
              "vocab_size": v, "n_positions": c, "n_ctx": c, "n_embd": e, "n_head": cfg["n_heads"],
              "n_layer": n, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
              "bos_token_id": 50256, "eos_token_id": 50256}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
