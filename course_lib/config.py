"""Model configurations: the GPT-2 sizes, the smoke model, and the settings → cfg mapping."""
from __future__ import annotations

from typing import Any
from collections.abc import Mapping

BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # longest input GPT-2 was trained on
    "drop_rate": 0.0,        # a choice for short fine-tuning runs (Raschka's chapter 6 BASE_CONFIG does the
                             # same), not a rule: GPT-2 was trained with dropout 0.1 (resid/embd/attn_pdrop)
    "qkv_bias": True,        # GPT-2's query/key/value projections have biases
}

MODEL_SIZES: dict[str, dict[str, int]] = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
    # Not a real GPT-2: a tiny model of the same shape family for fast checks (smoke profile).
    "gpt2-smoke (tiny)": {"emb_dim": 32, "n_layers": 2, "n_heads": 2, "context_length": 128},
}

HF_REPOS: dict[str, str] = {
    "gpt2-small (124M)": "openai-community/gpt2",
    "gpt2-medium (355M)": "openai-community/gpt2-medium",
    "gpt2-large (774M)": "openai-community/gpt2-large",
    "gpt2-xl (1558M)": "openai-community/gpt2-xl",
}

SMOKE_MODEL = "gpt2-smoke (tiny)"

# The `settings` keys of the original project (OpenAI's hparams.json) and the cfg keys they become.
SETTINGS_TO_CFG: dict[str, str] = {
    "n_vocab": "vocab_size",
    "n_ctx": "context_length",
    "n_embd": "emb_dim",
    "n_head": "n_heads",
    "n_layer": "n_layers",
}


def get_config(model_size: str) -> dict[str, Any]:
    """The full cfg dict for one of ``MODEL_SIZES``, e.g. ``"gpt2-small (124M)"``."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"Unknown model size {model_size!r}; choose one of {list(MODEL_SIZES)}.")
    return {**BASE_CONFIG, **MODEL_SIZES[model_size]}


def settings_to_cfg(settings: Mapping[str, Any], drop_rate: float = 0.0,
                    qkv_bias: bool = True) -> dict[str, Any]:
    """Rename the checkpoint's ``settings`` keys to the model's cfg keys.

    Refuses a settings dict with a missing or an unknown key, naming it, because a silently
    dropped key would build a model of the wrong shape.
    """
    missing = [k for k in SETTINGS_TO_CFG if k not in settings]
    if missing:
        raise KeyError(f"settings is missing {missing[0]!r}; it needs exactly {list(SETTINGS_TO_CFG)}.")
    unknown = [k for k in settings if k not in SETTINGS_TO_CFG]
    if unknown:
        raise KeyError(f"settings has an unknown key {unknown[0]!r}; expected only {list(SETTINGS_TO_CFG)}.")
    cfg: dict[str, Any] = {SETTINGS_TO_CFG[k]: int(v) for k, v in settings.items()}
    cfg["drop_rate"] = drop_rate
    cfg["qkv_bias"] = qkv_bias
    return cfg

