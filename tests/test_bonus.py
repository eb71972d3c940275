"""Bonus notebook 09's library: peft on a real pretrained encoder, offline."""
from pathlib import Path

import pytest

from course_lib import bonus
from course_lib.downloads import DownloadError

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"
pytestmark = pytest.mark.skipif(not (MIRROR / "ag-news").is_dir(), reason="the offline mirror is not beside the repository")


@pytest.fixture
def offline_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_MIRROR", str(MIRROR))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_missing_packages_stop_with_one_sentence_naming_the_install(monkeypatch):
    real = bonus.importlib.util.find_spec
    monkeypatch.setattr(bonus.importlib.util, "find_spec", lambda name: None if name == "optuna" else real(name))
    with pytest.raises(ModuleNotFoundError, match=r"needs optuna: run `pip install -r requirements-bonus.txt`"):
        bonus.require_bonus_dependencies()


def test_smoke_split_of_the_mirrored_test_set(offline_mirror):
    frames, origin = bonus.load_ag_news("smoke", seed=42, smoke_size=1500)
    assert [len(frames[k]) for k in ("train", "validation", "test")] == [1050, 150, 300]
    assert "only AG News' test split" in origin
    assert set(frames["train"]["label"]) == {0, 1, 2, 3}


def test_ag_news_offline_without_mirror_names_the_url_and_course_mirror(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError, match="test.csv.*COURSE_MIRROR"):
        bonus.load_ag_news("smoke")


def test_peft_and_course_lib_count_the_same_trainable_parameters(offline_mirror):
    path, _ = bonus.encoder_path("smoke")
    model = bonus.build_peft_model(path, bonus.SEED_LORA)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == bonus.course_lora_trainable_count(path, bonus.SEED_LORA) == 75_268


@pytest.mark.slow
def test_smoke_fine_tune_of_a_real_pretrained_encoder_is_well_above_chance(offline_mirror):
    from transformers import AutoTokenizer

    path, description = bonus.encoder_path("smoke")
    assert "all-MiniLM-L6-v2" in description
    frames, _ = bonus.load_ag_news("smoke", seed=42, smoke_size=1500)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = {k: bonus.encode(tokenizer, v, 48) for k, v in frames.items()}
    model = bonus.build_peft_model(path, bonus.SEED_LORA, seed=42)
    bonus.fine_tune(model, data["train"], data["validation"], epochs=1, lr=2e-3, seed=42)
    accuracy, f1, _ = bonus.evaluate(model, data["test"])
    print(f"AG News smoke test split: accuracy {accuracy:.4f}, macro-F1 {f1:.4f}")
    assert accuracy > 0.6 and f1 > 0.6  # chance is 0.25


def test_macro_f1_averages_the_classes():
    import torch
    p, t = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 2, fp 0, fn 1 -> 4/5
    assert bonus.macro_f1(p, t, 2) == pytest.approx((2 / 3 + 4 / 5) / 2)
