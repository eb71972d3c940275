"""Wall time of each notebook in the full profile with its default parameters, on this machine,
without downloading anything: the rehearsal of ``tests/test_full_profile.py`` at full length.

Not a test. It writes into a temporary Hugging Face cache what the full profile downloads:
a randomly initialised GPT-2 124M in the exact layout of ``openai-community/gpt2`` (legacy buffers
included) and, for notebook 09, a randomly initialised RoBERTa-base (``FacebookAI/roberta-base``'s
configuration, its byte-level BPE, which is GPT-2's with RoBERTa's four special tokens in front) and
AG News as the hub's ``fancyzhx/ag_news`` parquet files. Offline there is only AG News' 7,600-row
test split (the mirror), so the 120,000-row train file here repeats those rows: real headlines and
real lengths, which is what the timing depends on. Random weights time like trained ones; no
accuracy printed by a rehearsal means anything.

    COURSE_MIRROR=../shared/mirror python benchmarks/full_profile_times.py [09_peft_and_tuning ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["01_loading_weights", "02_settings_to_cfg", "03_data_balancing", "04_lora_layers", "05_lora_injection",
             "06_gradient_checks", "07_classification_training", "08_distillation", "09_peft_and_tuning"]
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


def write_roberta(hub: Path) -> None:
    """A random RoBERTa-base with a tokenizer whose tokens are RoBERTa's (GPT-2's BPE, ids shifted by
    the four special tokens, ``madeupword`` fillers and ``<mask>`` at 50264, as in the real vocab)."""
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    from course_lib.bonus import ROBERTA_REPO

    folder = _snapshot(hub, ROBERTA_REPO, "model")
    assets = ROOT / "course_lib" / "assets" / "gpt2_tokenizer"
    gpt2 = json.loads((assets / "encoder.json").read_text())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({token: i + 4 for token, i in gpt2.items()})
    vocab.update({f"madeupword{i:04d}": len(gpt2) + 4 + i for i in range(3)})
    vocab["<mask>"] = 50264
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text((assets / "vocab.bpe").read_text())
    tokenizer = RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(**ROBERTA_CONFIG)).save_pretrained(folder, safe_serialization=True)
    (folder / "config.json").write_text(json.dumps(ROBERTA_CONFIG, indent=2))


def write_ag_news(hub: Path, mirror: Path) -> None:
    """AG News in the hub's parquet layout (text, label 0-3); train repeats the test split's rows."""
    import pandas as pd

    from course_lib.bonus import AG_HUB_FILES, AG_REPO, AG_ROWS

    csv = pd.read_csv(mirror / "ag-news" / "test.csv", header=None, names=["label", "title", "description"])
    test = pd.DataFrame({"text": csv["title"] + " " + csv["description"], "label": csv["label"] - 1})
    train = pd.concat([test] * (AG_ROWS["train"] // len(test) + 1), ignore_index=True)[:AG_ROWS["train"]]
    folder = _snapshot(hub, AG_REPO, "dataset")
    for split, frame in (("train", train), ("test", test)):
        path = folder / AG_HUB_FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)


def run(name: str, workdir: Path) -> tuple[float, str]:
    """Seconds to run every cell (one that raises does not stop the rest) and the errors raised."""
    import papermill

    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(ROOT / "solutions" / f"{name}.ipynb"), str(workdir / f"{name}.ipynb"),
                                   cwd=str(ROOT / "solutions"), progress_bar=False, kernel_name="python3",
                                   allow_errors=True)
    except papermill.PapermillExecutionError as err:
        return time.perf_counter() - start, f"cell {err.exec_count} raised {err.ename}: {err.evalue}"
    return time.perf_counter() - start, "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", default=NOTEBOOKS, help="notebook names (default: all nine)")
    args = parser.parse_args()
    mirror = Path(os.environ.get("COURSE_MIRROR") or ROOT.parent / "shared" / "mirror")
    with tempfile.TemporaryDirectory(prefix="full-profile-") as tmp:
        tmp = Path(tmp)
        hub = tmp / "hub"
        from course_lib.weights import write_hub_cache_model

        write_hub_cache_model(hub, "gpt2-small (124M)")
        if "09_peft_and_tuning" in args.notebooks:
            write_roberta(hub)
            write_ag_news(hub, mirror)
        os.environ.update({"COURSE_PROFILE": "full", "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp / "home"),
                           "HF_HUB_OFFLINE": "1", "COURSE_CACHE_DIR": str(tmp / "course-cache"),
                           "TQDM_DISABLE": "1", "COURSE_MIRROR": str(mirror.resolve())})
        load = os.getloadavg()[0]
        print(f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"load average {load:.1f} at the start; full profile, each notebook's defaults\n")
        print("| notebook | wall time (s) | load average after | errors (random weights fail accuracy checks) |\n"
              "|---|---|---|---|", flush=True)
        for name in args.notebooks:
            seconds, errors = run(name, tmp)
            print(f"| {name} | {seconds:,.0f} | {os.getloadavg()[0]:.1f} | {errors} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
