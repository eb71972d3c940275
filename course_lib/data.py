"""SMS Spam Collection: download, verify, balance, split, tokenize and batch.

The corpus is UCI's SMS Spam Collection (CC BY 4.0); a copy ships in ``data/sms_spam/``.
Parsing must disable CSV quoting: with default quoting two messages that start with a quote
character silently swallow their neighbours and 2 rows are lost.
"""
from __future__ import annotations

import csv
import math
import zipfile
from functools import partial
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .downloads import DownloadError, fetch, sha256_of
from .paths import cache_dir, mirror_dir, repo_root

SMS_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_ZIP = "sms+spam+collection.zip"
SMS_FILE = "SMSSpamCollection"
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_COUNTS = {"ham": 4827, "spam": 747}
LABELS = {"ham": 0, "spam": 1}
PAD_TOKEN_ID = 50256  # <|endoftext|>, GPT-2's usual padding token


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


class SpamDataset(Dataset):
    """Token ids of each message, truncated to ``max_length`` and padded with ``pad_token_id``
    to the longest message (or to ``max_length`` when given)."""

    def __init__(self, data: str | Path | pd.DataFrame, tokenizer, max_length: int | None = None,
                 pad_token_id: int = PAD_TOKEN_ID) -> None:
        self.data = data if isinstance(data, pd.DataFrame) else pd.read_csv(data)
        encoded = [tokenizer.encode(text) for text in self.data["Text"]]
        if max_length is None:
            self.max_length = max(len(ids) for ids in encoded)
        else:
            if max_length < 1:
                raise ValueError(f"max_length must be at least 1, got {max_length}.")
            self.max_length = max_length
        self.encoded_texts = [ids[:self.max_length] + [pad_token_id] * (self.max_length - len(ids[:self.max_length]))
                              for ids in encoded]
        self.lengths = [min(len(ids), self.max_length) for ids in encoded]  # real tokens, before padding
        self.labels = [int(label) for label in self.data["Label"]]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.encoded_texts[index], dtype=torch.long),
                torch.tensor(self.labels[index], dtype=torch.long))

    def __len__(self) -> int:
        return len(self.labels)


BATCHINGS = ("fixed", "per_batch", "bucketed")


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]], pad_token_id: int = PAD_TOKEN_ID
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (ids, label) pairs into a batch padded on the right only to its longest message.

    Items may come padded (``SpamDataset``) or not: trailing pad tokens are cut to the batch's
    longest real length, so a batch of short messages stays short.
    """
    width = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        x[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    real = (x != pad_token_id)
    longest = int((real * torch.arange(1, width + 1)).amax()) if width else 0
    labels = torch.stack([torch.as_tensor(label, dtype=torch.long) for _, label in batch])
    return x[:, :max(1, longest)], labels


def message_lengths(dataset: Dataset, pad_token_id: int = PAD_TOKEN_ID) -> list[int]:
    """Real (unpadded) token count of each item: ``dataset.lengths`` when it has them, else counted."""
    if hasattr(dataset, "lengths"):
        return list(dataset.lengths)
    out = []
    for i in range(len(dataset)):
        ids = torch.as_tensor(dataset[i][0])
        real = torch.nonzero(ids != pad_token_id)
        out.append(int(real[-1]) + 1 if len(real) else 0)
    return out


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of messages of similar length, in a shuffled order, the same for the same seed.

    Each epoch: shuffle all indices, cut them into chunks of ``bucket_batches`` batches, sort each
    chunk by length, cut it into batches, and shuffle the batches. The order depends only on
    ``seed`` and the epoch number (which advances on every pass, or is set by ``set_epoch``).
    Every message appears exactly once per epoch (``drop_last`` drops the last, smaller batch).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 123, bucket_batches: int = 100,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.bucket_batches = bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass produce epoch ``epoch``'s order."""
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s batches (lists of dataset indices), without advancing the epoch."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=gen)
        chunk = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[torch.argsort(self.lengths[part], stable=True)]
            batches += [part[i:i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        if short:  # at most one short batch per chunk: merge them, so only the very last may be short
            rest = [i for b in short for i in b]
            full += [rest[i:i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
        if self.drop_last:
            full = [b for b in full if len(b) == self.batch_size]
        perm = torch.randperm(len(full), generator=gen).tolist()
        return [full[i] for i in perm]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def make_loader(dataset: Dataset, batch_size: int = 8, batching: str = "bucketed", shuffle: bool = True,
                seed: int = 123, drop_last: bool = False, pad_token_id: int = PAD_TOKEN_ID) -> DataLoader:
    """A DataLoader for right-padded (ids, label) items.

    ``fixed``: every batch as the dataset pads it; ``per_batch``: each batch padded to its longest
    message; ``bucketed`` (training default): per-batch padding, and batches of similar lengths
    shuffled as a whole (``LengthBucketSampler``). Without ``shuffle``, items keep their order.
    """
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {list(BATCHINGS)}, not {batching!r}.")
    gen = torch.Generator().manual_seed(seed)
    if batching == "fixed":
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          generator=gen if shuffle else None)
    collate = partial(pad_collate, pad_token_id=pad_token_id)
    if batching == "bucketed" and shuffle:
        sampler = LengthBucketSampler(message_lengths(dataset, pad_token_id), batch_size, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=gen if shuffle else None, collate_fn=collate)


def sequential_loader(loader: DataLoader) -> DataLoader:
    """The same data, batch size and padding as ``loader``, in dataset order and never shuffled:
    for evaluating on the training set without consuming the training loader's shuffling."""
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
    return DataLoader(loader.dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn)


def create_dataloaders(paths: dict[str, Path], tokenizer, batch_size: int = 8, max_length: int | None = None,
                       context_length: int | None = None, max_examples: int | None = None,
                       seed: int = 123, batching: str = "fixed") -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train, validation and test loaders. Messages are truncated to the training set's longest,
    capped at the model's ``context_length``; ``max_examples`` keeps the first rows of each
    split (the smoke profile's subset).

    ``batching="fixed"`` (notebook 03's picture) pads every message to that length and drops the
    last, smaller training batch; ``per_batch`` and ``bucketed`` (what training uses) pad each batch
    to its own longest message, keep every message, and ``bucketed`` groups similar lengths.
    """
    def frame(name: str) -> pd.DataFrame:
        df = pd.read_csv(paths[name])
        return df.head(max_examples) if max_examples else df

    train = SpamDataset(frame("train"), tokenizer, max_length=max_length)
    length = min(train.max_length, context_length) if context_length else train.max_length
    if length != train.max_length:
        train = SpamDataset(frame("train"), tokenizer, max_length=length)
    validation = SpamDataset(frame("validation"), tokenizer, max_length=length)
    test = SpamDataset(frame("test"), tokenizer, max_length=length)
    return (make_loader(train, batch_size, batching, shuffle=True, seed=seed, drop_last=batching == "fixed"),
            make_loader(validation, batch_size, batching, shuffle=False),
            make_loader(test, batch_size, batching, shuffle=False))


def num_batches(n_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches a DataLoader yields: ceil(N / batch_size), or floor with ``drop_last``."""
    return n_examples // batch_size if drop_last else math.ceil(n_examples / batch_size)


def class_weights(labels, num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency weights N / (K · n_c): the rare class counts as much as the common one."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).float()
    if (counts == 0).any():
        raise ValueError(f"Every class needs at least one example to weight it; counts are {counts.tolist()}.")
    return counts.sum() / (num_classes * counts)
