"""What the full profile downloads, randomly initialised, written into a Hugging Face hub cache
exactly where ``hf_hub_download`` finds it offline: a rehearsal of the full profile without a download.
Random weights time like trained ones; their accuracies mean nothing.

GPT-2 gets the hub's exact layout, legacy buffers included. RoBERTa-base gets ``FacebookAI/roberta-base``'s
configuration and a tokenizer with RoBERTa's tokens (GPT-2's byte-level BPE and merges), so texts have
their real lengths; the ids are GPT-2's shifted past the four special tokens, not fairseq's frequency
order, and only the size (50,265) and ``<mask>`` at 50264 match the real vocabulary. AG News gets the
hub's parquet layout; offline only the 7,600-row test split exists (the mirror), so the 120,000-row
train file repeats those rows: real headlines and real lengths.
"""
from __future__ import annotations

import json
from pathlib import Path

import course_lib

import torch

ASSETS = Path(course_lib.__file__).resolve().parent / "assets" / "gpt2_tokenizer"  # shipped with the library
REVISION = "0" * 40
ROBERTA_CONFIG = {  # FacebookAI/roberta-base's config.json
    "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 514,
    "model_type": "roberta", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "type_vocab_size": 1, "vocab_size": 50265}


def _snapshot(hub: Path, repo_id: str, repo_type: str) -> Path:
    """The folder ``hf_hub_download`` reads offline for ``repo_id`` (refs/main -> snapshots/<rev>)."""
    repo = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    folder = repo / "snapshots" / REVISION
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_legacy_buffers(folder: str | Path) -> Path:
    """Add each block's ``attn.bias`` (the causal mask) and ``attn.masked_bias`` (the masking constant) to
    the checkpoint in ``folder``, as older transformers saved them and the hub's ``openai-community/gpt2``
    files still hold them (124M: 172 tensors instead of 148); the loader must skip them."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    config = json.loads((Path(folder) / "config.json").read_text())
    c, state = config["n_ctx"], load_file(path)
    for i in range(config["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(c, c)).view(1, 1, c, c)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(path), metadata={"format": "pt"})
    return Path(folder)


def write_hub_cache_model(hub_cache: str | Path, model_size: str = "gpt2-small (124M)", seed: int = 123) -> Path:
    """A random ``model_size`` GPT-2 as ``HF_REPOS[model_size]``, legacy buffers included; its folder."""
    from course_lib.weights import HF_REPOS, write_random_checkpoint

    folder = _snapshot(Path(hub_cache), HF_REPOS[model_size], "model")
    return add_legacy_buffers(write_random_checkpoint(folder, model_size, seed=seed))


def write_roberta(hub: Path | str) -> None:
    """A random RoBERTa-base and a tokenizer with RoBERTa's tokens (see the module's docstring)."""
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    from course_lib.peft_tuning import ROBERTA_REPO

    folder = _snapshot(Path(hub), ROBERTA_REPO, "model")
    gpt2 = json.loads((ASSETS / "encoder.json").read_text())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({token: i + 4 for token, i in gpt2.items()})
    vocab.update({f"madeupword{i:04d}": len(gpt2) + 4 + i for i in range(3)})
    vocab["<mask>"] = 50264
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text((ASSETS / "vocab.bpe").read_text())
    tokenizer = RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(**ROBERTA_CONFIG)).save_pretrained(folder, safe_serialization=True)
    (folder / "config.json").write_text(json.dumps(ROBERTA_CONFIG, indent=2))


def write_ag_news(hub: Path | str, mirror: Path | str) -> None:
    """AG News in the hub's parquet layout (text, label 0-3); train repeats the test split's rows."""
    import pandas as pd

    from course_lib.peft_tuning import AG_HUB_FILES, AG_REPO, AG_ROWS

    csv = pd.read_csv(Path(mirror) / "ag-news" / "test.csv", header=None, names=["label", "title", "description"])
    test = pd.DataFrame({"text": csv["title"] + " " + csv["description"], "label": csv["label"] - 1})
    train = pd.concat([test] * (AG_ROWS["train"] // len(test) + 1), ignore_index=True)[:AG_ROWS["train"]]
    folder = _snapshot(Path(hub), AG_REPO, "dataset")
    for split, frame in (("train", train), ("test", test)):
        path = folder / AG_HUB_FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
