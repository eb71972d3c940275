"""The SMS Spam Collection: download or shipped copy, verification, balancing and the 70/10/20 split."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pandas as pd
import torch

from .downloads import DownloadError, fetch, sha256_of
from .paths import cache_dir, mirror_dir, repo_root

SMS_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_ZIP = "sms+spam+collection.zip"
SMS_FILE = "SMSSpamCollection"
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_COUNTS = {"ham": 4827, "spam": 747}
LABELS = {"ham": 0, "spam": 1}


def shipped_sms_spam() -> Path:
    """The copy of the corpus that ships with the course."""
    return repo_root() / "data" / "sms_spam" / SMS_FILE


def download_sms_spam(source: str = "auto") -> tuple[Path, str]:
    """Path to a verified ``SMSSpamCollection`` and a sentence saying which copy it is.

    ``auto``: the mirror when ``COURSE_MIRROR`` is set, else the copy shipped in ``data/``, else
    UCI's zip. ``download`` forces the real download (mirror first). The file is checked by sha256.
    """
    if source not in {"auto", "download", "shipped"}:
        raise ValueError(f"source must be 'auto', 'download' or 'shipped', not {source!r}.")
    shipped = shipped_sms_spam()
    if source == "shipped" or (source == "auto" and mirror_dir() is None and shipped.is_file()):
        verify_sms_spam(shipped)
        return shipped, "the copy shipped with the course in data/sms_spam/"
    zip_path, origin = fetch(SMS_URL, SMS_ZIP, "sms-spam")
    target = zip_path.parent / SMS_FILE
    try:
        with zipfile.ZipFile(zip_path) as z:
            target.write_bytes(z.read(SMS_FILE))
    except (zipfile.BadZipFile, KeyError) as err:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"{SMS_ZIP} is not a valid zip holding {SMS_FILE}; delete it and download again.") from err
    verify_sms_spam(target)
    where = {"mirror": "the offline mirror (COURSE_MIRROR)", "cache": "the course cache",
             "download": "UCI's download"}[origin]
    return target, f"{SMS_ZIP} from {where}"


def verify_sms_spam(path: Path) -> None:
    """Refuse a missing, corrupt or truncated corpus with one sentence."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} was not found; run `course fetch` or set COURSE_MIRROR.")
    if sha256_of(path) != SMS_SHA256:
        raise DownloadError(f"{path.name} does not match its sha256 checksum (corrupt or truncated); "
                            "delete it and download it again with `course fetch`.")


def load_sms_spam(path: Path | None = None) -> pd.DataFrame:
    """The corpus as a DataFrame with columns ``Label`` ('ham'/'spam') and ``Text``."""
    path = path or download_sms_spam()[0]
    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"], quoting=csv.QUOTE_NONE,
                     dtype=str, keep_default_na=False, encoding="utf-8")
    counts = df["Label"].value_counts().to_dict()
    if counts != SMS_COUNTS:
        raise ValueError(f"{path.name} has label counts {counts}, expected {SMS_COUNTS}; is it the SMS Spam Collection v.1?")
    return df


def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    """Undersample 'ham' to as many rows as 'spam' (747 each), with a fixed seed; labels as 0/1."""
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=seed)
    balanced = pd.concat([ham, spam]).reset_index(drop=True)
    balanced["Label"] = balanced["Label"].map(LABELS)
    return balanced


def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1,
                 seed: int = 123) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle with a fixed seed, then cut into train/validation/test (70/10/20 by default)."""
    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * train_frac)
    validation_end = train_end + int(len(shuffled) * validation_frac)
    return (shuffled[:train_end].reset_index(drop=True),
            shuffled[train_end:validation_end].reset_index(drop=True),
            shuffled[validation_end:].reset_index(drop=True))


def prepare_sms_splits(out_dir: Path | None = None, seed: int = 123) -> dict[str, Path]:
    """Balanced 70/10/20 split written as train.csv, validation.csv and test.csv."""
    out_dir = Path(out_dir or cache_dir() / "sms_spam_splits")
    out_dir.mkdir(parents=True, exist_ok=True)
    balanced = create_balanced_dataset(load_sms_spam(), seed=seed)
    paths = {}
    for name, part in zip(("train", "validation", "test"), random_split(balanced, seed=seed)):
        paths[name] = out_dir / f"{name}.csv"
        part.to_csv(paths[name], index=None)
    return paths


def class_weights(labels, num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency weights N / (K · n_c): the rare class counts as much as the common one."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).float()
    if (counts == 0).any():
        raise ValueError(f"Every class needs at least one example to weight it; counts are {counts.tolist()}.")
    return counts.sum() / (num_classes * counts)
