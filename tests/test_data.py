import math

import numpy as np
import pandas as pd
import pytest
import torch

from course_lib import dataloaders, sms
from course_lib.downloads import DownloadError
from course_lib.tokenizer import get_tokenizer


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_shipped_copy_has_the_published_counts(monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    path, origin = sms.download_sms_spam()
    assert "shipped" in origin
    df = sms.load_sms_spam(path)
    assert len(df) == 5574 and df["Label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    assert f"{(df['Label'] == 'ham').mean():.1%}" == "86.6%"


def test_default_csv_quoting_would_silently_lose_two_rows():
    quoted = pd.read_csv(sms.shipped_sms_spam(), sep="\t", header=None)
    assert len(quoted) == 5572


def test_mirror_zip_is_used_first_and_verified(fresh_cache, mirror):
    path, origin = sms.download_sms_spam()
    assert "mirror" in origin
    assert sms.sha256_of(path) == sms.SMS_SHA256


def test_offline_without_mirror_fails_with_url_and_course_mirror(fresh_cache, monkeypatch, no_network):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    with pytest.raises(DownloadError, match=r"archive\.ics\.uci\.edu.*COURSE_MIRROR"):
        sms.download_sms_spam(source="download")


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_corpus_is_refused_by_its_checksum(tmp_path, damage):
    raw = sms.shipped_sms_spam().read_bytes()
    bad = tmp_path / "SMSSpamCollection"
    bad.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else raw.replace(b"ham", b"hma", 1))
    with pytest.raises(DownloadError, match="sha256"):
        sms.verify_sms_spam(bad)


def test_missing_corpus_is_refused_with_advice(tmp_path):
    with pytest.raises(FileNotFoundError, match="course fetch"):
        sms.verify_sms_spam(tmp_path / "SMSSpamCollection")


def test_balanced_split_sizes_and_determinism(tmp_path):
    df = sms.load_sms_spam(sms.shipped_sms_spam())
    balanced = sms.create_balanced_dataset(df)
    assert balanced["Label"].value_counts().to_dict() == {0: 747, 1: 747}
    train, validation, test = sms.random_split(balanced)
    assert (len(train), len(validation), len(test)) == (1045, 149, 300)
    again = sms.random_split(sms.create_balanced_dataset(df))[0]
    assert train.equals(again)
    together = pd.concat([train, validation, test])
    assert sorted(together["Text"]) == sorted(balanced["Text"])  # a partition: nothing lost or repeated


def test_splits_are_written_as_three_csvs(fresh_cache, monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    paths = sms.prepare_sms_splits()
    assert {p.name for p in paths.values()} == {"train.csv", "validation.csv", "test.csv"}
    assert [len(pd.read_csv(p)) for p in paths.values()] == [1045, 149, 300]


def test_spam_dataset_pads_with_50256_and_truncates():
    df = pd.DataFrame({"Text": ["Hello, world", "Hi"], "Label": [0, 1]})
    tok = get_tokenizer()
    ds = dataloaders.SpamDataset(df, tok)
    assert ds.max_length == 3
    assert ds[1][0].tolist() == tok.encode("Hi") + [50256, 50256] and ds[1][1].item() == 1
    short = dataloaders.SpamDataset(df, tok, max_length=2)
    assert short[0][0].tolist() == [15496, 11]


def test_loader_batch_count_is_ceil_or_floor_with_drop_last(fresh_cache, monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    paths = sms.prepare_sms_splits()
    train, validation, test = dataloaders.create_dataloaders(paths, get_tokenizer(), batch_size=8)
    assert len(validation) == dataloaders.num_batches(149, 8) == math.ceil(149 / 8) == 19
    assert len(test) == dataloaders.num_batches(300, 8) == 38
    assert len(train) == dataloaders.num_batches(1045, 8, drop_last=True) == 130


def test_loaders_are_capped_at_the_model_context_length(fresh_cache, monkeypatch):
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    paths = sms.prepare_sms_splits()
    train, _, _ = dataloaders.create_dataloaders(paths, get_tokenizer(), batch_size=4, context_length=64, max_examples=16)
    x, y = next(iter(train))
    assert x.shape == (4, 64) and len(train.dataset) == 16


def test_class_weights_are_inverse_frequency():
    w = sms.class_weights([0] * 6 + [1] * 2)
    assert torch.allclose(w, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))
    with pytest.raises(ValueError, match="at least one"):
        sms.class_weights([0, 0, 0])


@pytest.mark.parametrize("seed", range(5))
def test_class_weights_agree_with_scikit_learn_balanced(seed):
    from sklearn.utils.class_weight import compute_class_weight

    g = torch.Generator().manual_seed(seed)
    k = 2 + seed % 3
    labels = torch.randint(0, k, (30 + seed,), generator=g).tolist() + list(range(k))  # every class present
    want = compute_class_weight("balanced", classes=np.arange(k), y=np.array(labels))
    assert sms.class_weights(labels, num_classes=k).tolist() == pytest.approx(want.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_agrees_with_scikit_learn(seed):
    from sklearn.metrics import f1_score

    from course_lib.peft_tuning import macro_f1

    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, 4, (50,), generator=g)
    noisy = torch.where(torch.rand(50, generator=g) < 0.6, true, torch.randint(0, 4, (50,), generator=g))
    for predicted in (noisy, true.clone(), torch.zeros(50, dtype=torch.long)):
        want = f1_score(true.numpy(), predicted.numpy(), average="macro", labels=[0, 1, 2, 3], zero_division=0)
        assert macro_f1(predicted, true, num_classes=4) == pytest.approx(want)
