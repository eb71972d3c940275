"""Bonus notebook 09's library: peft on a real pretrained encoder, offline; the full profile's assets."""
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course_lib import peft_tuning
from course_lib.downloads import DownloadError
from course_lib.plans import plan_for

ROOT = Path(__file__).resolve().parent.parent
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"
NB09 = "09_peft_and_tuning"
needs_mirror = pytest.mark.skipif(not (MIRROR / "ag-news").is_dir(), reason="the offline mirror is not beside the repository")


@pytest.fixture
def offline_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_MIRROR", str(MIRROR))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_missing_packages_stop_with_one_sentence_naming_the_install(monkeypatch):
    real = peft_tuning.importlib.util.find_spec
    monkeypatch.setattr(peft_tuning.importlib.util, "find_spec", lambda name: None if name == "optuna" else real(name))
    with pytest.raises(ModuleNotFoundError, match=r"needs optuna: run `pip install -r requirements-bonus.txt`"):
        peft_tuning.require_bonus_dependencies()


@needs_mirror
def test_smoke_split_of_the_mirrored_test_set(offline_mirror):
    frames, origin = peft_tuning.load_ag_news("smoke", seed=42, smoke_size=1500)
    assert [len(frames[k]) for k in ("train", "validation", "test")] == [1050, 150, 300]
    assert "only AG News' test split" in origin
    assert set(frames["train"]["label"]) == {0, 1, 2, 3}


def test_ag_news_offline_without_mirror_names_the_url_and_course_mirror(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError, match="test.csv.*COURSE_MIRROR"):
        peft_tuning.load_ag_news("smoke")


@needs_mirror
def test_peft_and_course_lib_count_the_same_trainable_parameters(offline_mirror):
    path, _ = peft_tuning.encoder_path("smoke")
    model = peft_tuning.build_peft_model(path, peft_tuning.SEED_LORA)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == peft_tuning.course_lora_trainable_count(path, peft_tuning.SEED_LORA) == 75_268


def test_macro_f1_averages_the_classes():
    import torch
    p, t = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 2, fp 0, fn 1 -> 4/5
    assert peft_tuning.macro_f1(p, t, 2) == pytest.approx((2 / 3 + 4 / 5) / 2)


# ----------------------------------------------------------------------------- the full profile's assets
REV = "1" * 40


def _hub_ag_news(hub: Path, train_rows: int = 120_000) -> None:
    """AG News' two parquet files where huggingface_hub finds fancyzhx/ag_news offline (synthetic rows)."""
    import pandas as pd

    snapshot = hub / "datasets--fancyzhx--ag_news" / "snapshots" / REV
    (snapshot / "data").mkdir(parents=True)
    for split, rows in (("train", train_rows), ("test", 7_600)):
        df = pd.DataFrame({"text": [f"{split} headline {i}" for i in range(rows)], "label": [i % 4 for i in range(rows)]})
        df.to_parquet(snapshot / peft_tuning.AG_HUB_FILES[split], index=False)
    (hub / "datasets--fancyzhx--ag_news" / "refs").mkdir()
    (hub / "datasets--fancyzhx--ag_news" / "refs" / "main").write_text(REV)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (huggingface_hub's own flag)."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


def test_full_profile_reads_ag_news_from_the_hub_cache_offline_and_takes_a_subset(offline_hub):
    _hub_ag_news(offline_hub)
    frames, origin = peft_tuning.load_ag_news("full", seed=42, train_rows=100, eval_rows=30)
    assert [len(frames[k]) for k in ("train", "validation", "test")] == [100, 30, 30]
    assert "fancyzhx/ag_news" in origin and "100 train" in origin
    assert frames["validation"]["text"].str.startswith("train").all()  # held out from the train split
    assert not set(frames["train"]["text"]) & set(frames["validation"]["text"])
    full, _ = peft_tuning.load_ag_news("full", seed=42)
    assert [len(full[k]) for k in ("train", "validation", "test")] == [108_000, 12_000, 7_600]


def test_a_truncated_ag_news_in_the_cache_is_refused(offline_hub):
    _hub_ag_news(offline_hub, train_rows=119_999)
    with pytest.raises(ValueError, match="119,999 rows.*not 120,000 rows.*course fetch --profile full"):
        peft_tuning.load_ag_news("full")


def test_offline_without_the_data_stops_with_one_sentence(offline_hub):
    with pytest.raises(DownloadError) as info:
        peft_tuning.load_ag_news("full")
    err = info.value
    assert err.__cause__ is not None  # the chain is kept for code (and COURSE_DEBUG=1), not shown
    lines = err._render_traceback_()  # what Jupyter shows
    assert len(lines) == 1 and "HF_HUB_OFFLINE is set" in lines[0] and "course fetch --profile full" in lines[0]
    assert str(err).count(". ") == 0 and str(err).endswith(".")


@pytest.mark.parametrize("spelling", ["1", "true", "YES", "on"])
def test_every_spelling_of_hf_hub_offline_that_huggingface_hub_accepts_is_offline(tmp_path, spelling):
    code = ("from course_lib import peft_tuning\n"
            "try:\n    peft_tuning.encoder_path('full')\n"
            "except peft_tuning.DownloadError as err:\n    print(err._render_traceback_()[0])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": spelling, "HF_HUB_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "roberta-base's config.json is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in out


def test_without_network_roberta_fails_fast_with_one_sentence(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"Could not download roberta-base's config.json \(FacebookAI/roberta-base\)"):
        peft_tuning.encoder_path("full")
    assert time.perf_counter() - start < 5  # two quick requests, not huggingface_hub's 23 s of retries


def test_a_hub_that_answers_is_not_refused_even_after_one_blip(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    answers = iter([OSError("a DNS blip"), 404])  # any status means the hub is reachable

    class Session:
        def head(self, url, timeout):
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: str(tmp_path / kw["filename"]))
    assert peft_tuning.hub_file("FacebookAI/roberta-base", "config.json", "model", "roberta-base's config.json") == \
        tmp_path / "config.json"


def test_notebook_09_offline_without_data_shows_one_line_and_no_chain(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    env = {"COURSE_PROFILE": "full", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HOME": str(tmp_path / "home"), "COURSE_CACHE_DIR": str(tmp_path / "cache")}
    for key, value in env.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(key, value)
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(ROOT / "solutions" / "09_peft_and_tuning.ipynb"), str(tmp_path / "out.ipynb"),
                                   cwd=str(ROOT / "solutions"), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1
    assert errors[0].traceback == [
        "DownloadError: roberta-base's config.json is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run "
        "`course fetch --profile full` once with a network connection, or use COURSE_PROFILE=smoke, which runs offline."]


def test_the_plan_runs_the_full_size_on_a_gpu_and_a_subset_on_a_cpu():
    gpu, cpu, smoke = (plan_for(NB09, "full", "cuda"), plan_for(NB09, "full", "cpu"), plan_for(NB09, "smoke", "cpu"))
    assert (gpu.train_rows, gpu.eval_rows, gpu.epochs, gpu.n_trials, gpu.trial_rows) == (None, None, 3, 20, None)
    assert (cpu.train_rows, cpu.eval_rows, cpu.epochs, cpu.n_trials, cpu.trial_rows) == (1000, 300, 1, 2, 300)
    assert (smoke.smoke_rows, smoke.max_length, smoke.n_trials) == (1500, 32, 3)


def test_the_cpu_banner_names_the_parameters_that_run_the_full_size(capsys):
    cpu = plan_for(NB09, "full", "cpu")
    peft_tuning.show_banner("full", "roberta-base", "cpu", cpu, "the hub")
    sizes = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Sizes:"))
    assert sizes.startswith(f"Sizes:   {cpu.note}; a GPU runs the full size: 108,000 training")
    assert sizes.endswith("and so do the parameters train_rows=None, eval_rows=None, epochs=3, n_trials=20, "
                          "trial_rows=None")


@needs_mirror
def test_building_and_fine_tuning_leave_the_global_random_stream_alone_and_repeat_from_their_seed(offline_mirror):
    import torch

    path, _ = peft_tuning.encoder_path("smoke")
    torch.manual_seed(7)
    stream = torch.get_rng_state()
    first = peft_tuning.build_peft_model(path, peft_tuning.SEED_LORA, seed=3)
    assert torch.equal(torch.get_rng_state(), stream), "build_peft_model moved the caller's random stream"
    torch.manual_seed(99)  # another global state: the result must not depend on it
    again, other = (peft_tuning.build_peft_model(path, peft_tuning.SEED_LORA, seed=s) for s in (3, 4))
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), f"{name} differs between two builds with seed 3"
    drawn = [n for n in first.state_dict() if ("classifier" in n or "lora_A" in n) and n.endswith("weight")]  # biases: 0
    assert drawn and all(not torch.equal(first.state_dict()[n], other.state_dict()[n]) for n in drawn)

    ids = torch.randint(0, 1000, (12, 10), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(ids, torch.ones_like(ids), torch.arange(12) % 4)
    losses = []
    for model, global_seed in ((first, 1), (again, 2)):  # dropout's masks come from fine_tune's seed alone
        torch.manual_seed(global_seed)
        stream = torch.get_rng_state()
        losses.append(peft_tuning.fine_tune(model, data, data, epochs=1, lr=1e-3, batch_size=4, seed=5))
        assert torch.equal(torch.get_rng_state(), stream), "fine_tune moved the caller's random stream"
    assert losses[0] == losses[1]


def test_course_info_lists_what_the_full_profile_of_notebook_09_needs(capsys):
    from course_tools.cli import main as course

    assert course(["info", "--profile", "full"]) == 0
    out = capsys.readouterr().out
    for name in ("roberta-base (FacebookAI/roberta-base", "AG News train (fancyzhx/ag_news", "AG News test (fancyzhx/ag_news"):
        assert name in out


@needs_mirror
def test_course_fetch_full_also_fetches_notebook_09s_assets_and_says_what_is_missing(offline_hub, tmp_path,
                                                                                     monkeypatch, capsys):
    from course_tools.cli import main as course

    monkeypatch.setenv("COURSE_MIRROR", str(MIRROR))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    assert course(["fetch", "--profile", "full", "--model-size", "gpt2-smoke (tiny)"]) == 1
    out = capsys.readouterr().out
    assert ("roberta-base (FacebookAI/roberta-base, notebook 09 full): FAILED: roberta-base's config.json is not in "
            "the Hugging Face cache") in out


def _pruned_in_a_search(n_trials: int, epochs: int) -> int:
    """Trials the course's MedianPruner stops in a search where every trial is worse than all before it."""
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        for epoch in range(epochs):
            loss = 1.0 + trial.number - 0.1 * epoch      # later trials always worse: prunable if allowed
            trial.report(loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return loss
    study = optuna.create_study(direction="minimize", pruner=peft_tuning.make_pruner())
    study.optimize(objective, n_trials=n_trials)
    return sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)


@pytest.mark.parametrize("n_trials, epochs", [(3, 1), (2, 1), (20, 3), (5, 3), (6, 3), (20, 1), (6, 2)])
def test_pruning_possible_says_what_optunas_median_pruner_does(n_trials, epochs):
    pruned = _pruned_in_a_search(n_trials, epochs)
    assert peft_tuning.pruning_possible(n_trials, epochs) == (pruned > 0)


def test_no_trial_of_the_smoke_or_cpu_plan_can_be_pruned_but_the_gpu_plans_can():
    for profile, device, expected in (("smoke", "cpu", False), ("full", "cpu", False), ("full", "cuda", True)):
        plan = plan_for(NB09, profile, device)
        assert peft_tuning.pruning_possible(plan.n_trials, plan.epochs) is expected


def test_chosen_configuration_keeps_the_original_targets():
    lora, lr = peft_tuning.chosen_configuration({"r": 16, "lora_alpha": 8, "lora_dropout": 0.1, "learning_rate": 1e-3})
    assert lora == {**peft_tuning.SEED_LORA, "r": 16, "lora_alpha": 8, "lora_dropout": 0.1} and lr == 1e-3
