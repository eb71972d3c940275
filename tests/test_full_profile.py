"""A rehearsal of the full profile: GPT-2 124M, randomly initialised but laid out exactly like the
hub's ``openai-community/gpt2`` (172 tensors, the legacy ``attn.bias``/``attn.masked_bias`` buffers
included), sits in a temporary Hugging Face cache that ``huggingface_hub`` reads offline. Every GPT
notebook then runs in the full profile through papermill, with parameters that keep it to a few
steps, and so does ``course experiment`` for every strategy: a defect only the full profile reaches
(a check written for the smoke model, a shape only 124M has, a default that never finishes) fails here.

The weights are random, so no number here says anything about GPT-2; the code paths are the real ones.
Each notebook is a separate test (07 and 08 last): adjust ``REHEARSAL`` when a notebook's parameters change.
"""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("COURSE_MIRROR") or ROOT.parent / "shared" / "mirror")
MODEL = "gpt2-small (124M)"
STRATEGIES = ["lora", "last_block", "last_layer", "all"]

# Notebook -> papermill parameters that keep it to a few steps on the 124M model ({}: its defaults,
# which are already short). 07 and 08 come last: they are the longest and change most often.
REHEARSAL: list[tuple[str, dict]] = [
    ("01_loading_weights", {}),
    ("02_settings_to_cfg", {}),
    ("03_data_balancing", {}),
    ("04_lora_layers", {"sweep_steps": 2, "sweep_ranks": [], "sweep_alphas": [], "sweep_lrs": [], "sweep_targets": []}),
    ("05_lora_injection", {}),
    ("06_gradient_checks", {"svd_steps": 2}),
    ("07_classification_training", {"num_epochs": 1, "max_examples": 8, "compare_epochs": 1, "compare_examples": 8,
                                    "imbalance_examples": 16, "imbalance_epochs": 1, "overfit_steps": 2,
                                    "sweep_lr_factors": [1.0]}),
    ("08_distillation", {"max_train": 16, "teacher_epochs": 1, "student_epochs": 1, "kd_seeds": 1}),
]
NEEDS_MIRROR = {"08_distillation": "cola"}  # CoLA may not be redistributed: CI reads it from the mirror


LIBRARY_CACHES = ("torchinductor_", "data-gym-cache")  # torch's compile cache, tiktoken's: shared, not leftovers


def _leftovers(folder: Path) -> list[str]:
    """What a run left in its temporary folder, other than libraries' shared caches."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(LIBRARY_CACHES))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding a random GPT-2 124M as ``openai-community/gpt2``."""
    from rehearsal import write_hub_cache_model

    cache = tmp_path_factory.mktemp("hf") / "hub"
    write_hub_cache_model(cache, MODEL)
    return cache


@pytest.fixture
def full_profile(hub_cache, tmp_path, monkeypatch) -> dict[str, str]:
    """This process's (and so every kernel's) environment for the full profile, offline."""
    env = {"COURSE_PROFILE": "full", "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(hub_cache.parent / "home"),
           "HF_HUB_OFFLINE": "1", "COURSE_CACHE_DIR": str(tmp_path / "course-cache"), "TQDM_DISABLE": "1",
           "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if MIRROR.is_dir():
        monkeypatch.setenv("COURSE_MIRROR", str(MIRROR.resolve()))
    return {**os.environ}


def test_the_rehearsal_model_is_the_hubs_layout_and_loads_offline(hub_cache, full_profile):
    from safetensors import safe_open

    from course_lib.weights import load_gpt2_checkpoint

    folder = subprocess.run(  # a fresh interpreter: huggingface_hub reads HF_HUB_CACHE when imported
        [sys.executable, "-c", f"from course_lib.weights import download_gpt2; print(download_gpt2({MODEL!r}))"],
        env=full_profile, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(folder).resolve().is_relative_to(hub_cache.resolve())
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 172 and "h.11.attn.masked_bias" in keys and "h.0.attn.bias" in keys
    settings, _ = load_gpt2_checkpoint(folder)
    assert settings == {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}


def test_course_experiment_runs_every_strategy_in_the_full_profile(full_profile, tmp_path):
    """One ``course experiment`` with all four strategies (one process, as an instructor runs the
    comparison): each strategy's results row and checkpoint, the summary with a row per strategy, and
    nothing left in the temporary folder."""
    out = tmp_path / "outputs"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "course_tools.cli", "experiment", "--profile", "full", "--trainable-layers", *STRATEGIES,
         "--max-examples", "4", "--num-epochs", "1", "--batch-size", "4", "--eval-iter", "1", "--eval-iter-val", "1",
         "--output-dir", str(out)],
        env=full_profile, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"course experiment {' '.join(STRATEGIES)}: {time.perf_counter() - start:.0f} s in the full profile")
    for strategy in STRATEGIES:
        rows = list(csv.DictReader((out / f"tl_{strategy}_results.csv").open()))
        assert rows, f"tl_{strategy}_results.csv is empty"
        assert (rows[0]["profile"], rows[0]["model_size"], rows[0]["trainable_layers"]) == ("full", MODEL, strategy), rows[0]
        assert len(list((out / "trainable_layers_checkpoints").glob(f"*_tl_{strategy}.pth"))) == 1, strategy
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["trainable_layers"] for row in summary] == STRATEGIES
    leftovers = _leftovers(tmp_path / "tmp")
    assert not leftovers, f"course experiment left {leftovers} in the temporary folder"


@pytest.mark.parametrize("name, parameters", REHEARSAL, ids=[n for n, _ in REHEARSAL])
def test_notebook_runs_in_the_full_profile(name, parameters, full_profile, tmp_path):
    path = ROOT / "solutions" / f"{name}.ipynb"
    needed = NEEDS_MIRROR.get(name)
    if needed and not (MIRROR / needed).is_dir():
        pytest.skip(f"{name} needs {needed} from the offline mirror: set COURSE_MIRROR (CI does)")
    known = papermill.inspect_notebook(str(path))
    unknown = sorted(set(parameters) - set(known))
    assert not unknown, f"{name} has no parameter {unknown}: update REHEARSAL in this file"
    out = tmp_path / f"{name}.ipynb"
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(ROOT / "solutions"),
                               progress_bar=False, kernel_name="python3", execution_timeout=900)
    print(f"{name}: {time.perf_counter() - start:.0f} s in the full profile with {parameters or 'its defaults'}")
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Profile: full" in text and MODEL in text, f"{name} did not say it runs the full profile on {MODEL}"
    leftovers = _leftovers(tmp_path / "tmp")
    assert not leftovers, f"{name} left {leftovers} in the temporary folder"


REHEARSAL_09 = {"train_rows": 32, "eval_rows": 16, "max_length": 32, "epochs": 1, "n_trials": 1, "trial_rows": 16}
# The checks random weights cannot pass: the fine-tuned model's, and the chosen configuration's on the test split.
RANDOM_WEIGHTS_FAIL = ["fine-tuning should get well above chance (25%)",
                       "the chosen configuration should get well above chance (25%)"]


def test_notebook_09_runs_in_the_full_profile_on_roberta_and_ag_news_from_the_hub(hub_cache, full_profile, tmp_path):
    """09's full profile (hub parquet files, roberta-base through the hub cache, the CPU plan) on a random
    RoBERTa-base; every cell must run except the above-chance checks, which random weights fail."""
    for module in ("transformers", "peft", "optuna", "pyarrow"):  # the bonus dependencies (requirements-bonus.txt)
        pytest.importorskip(module)
    if not (MIRROR / "ag-news").is_dir():
        pytest.skip("09's rehearsal builds AG News from the offline mirror: set COURSE_MIRROR (CI does)")
    from rehearsal import write_ag_news, write_roberta

    write_roberta(hub_cache)
    write_ag_news(hub_cache, MIRROR)
    path = ROOT / "solutions" / "09_peft_and_tuning.ipynb"
    assert not set(REHEARSAL_09) - set(papermill.inspect_notebook(str(path))), "update REHEARSAL_09"
    out = tmp_path / "09.ipynb"
    start = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError, match="well above chance"):
        papermill.execute_notebook(str(path), str(out), parameters=REHEARSAL_09, cwd=str(ROOT / "solutions"),
                                   progress_bar=False, kernel_name="python3", execution_timeout=900, allow_errors=True)
    print(f"09_peft_and_tuning: {time.perf_counter() - start:.0f} s in the full profile with {REHEARSAL_09}")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert [(e.ename, e.evalue) for e in errors] == [("AssertionError", message) for message in RANDOM_WEIGHTS_FAIL]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Profile: full" in text and "roberta-base" in text and "fancyzhx/ag_news" in text, text[:2000]
    assert "1 trials, 0 pruned" in text  # the Optuna search ran its one trial
    leftovers = _leftovers(tmp_path / "tmp")
    assert not leftovers, f"09 left {leftovers} in the temporary folder"
