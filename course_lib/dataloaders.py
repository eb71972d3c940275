"""From messages to batches: token datasets, padding to the longest message, length buckets, batch counts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from collections.abc import Iterator

import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

PAD_TOKEN_ID = 50256  # <|endoftext|>, GPT-2's usual padding token


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
    Every message appears exactly once per epoch; with ``drop_last=True`` the last, smaller batch is left out.
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
        # a generator: the epoch advances when the first batch is taken, not when iter() is called, so an
        # iterator made and dropped (tqdm.auto's bar calls iter() on what it wraps once more) skips no epoch
        batches = self.batches(self.epoch)
        self.epoch += 1
        yield from batches

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
    """The same dataset, batch size and collate function (so the same padding rule) as ``loader``, in
    dataset order, never shuffled, and keeping the last, smaller batch: for evaluating on the training
    set without consuming the training loader's shuffling."""
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
    return DataLoader(loader.dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn)


@dataclass
class LengthGrouped:
    """The examples of an in-order loader's first batches, regrouped into batches of similar length.

    ``loader`` yields the same examples as the original's first batches, sorted by length (so each
    batch is padded only to nearly its own length); ``order[k]`` is the position, in the original
    loader's order, of the k-th example it yields; ``batch_sizes`` are the original batches' sizes.
    """

    loader: DataLoader
    order: torch.Tensor
    batch_sizes: list[int]


def group_by_length(loader: DataLoader, num_batches: int | None = None) -> LengthGrouped | None:
    """Regroup the first ``num_batches`` batches (all by default) of ``loader`` by length, when that
    cannot change what a causal classifier reads: ``loader`` keeps the dataset's order (no shuffling,
    no custom batches) and pads each batch only to its longest message (``pad_collate``), so a
    message's logits at its last real token are the same however far its row is padded. Anything
    else (a shuffled, bucketed, length-sorted or fixed-width loader, a plain list of batches) gives
    ``None``: it is evaluated as it is.

    A pass in dataset order pads each batch to its longest message, about 1.75 x the real tokens on
    the SMS validation and test splits; sorted, a batch holds messages of nearly one length. (Running
    short messages more at a time was measured and not kept: docs/benchmarks.md.)
    """
    collate = getattr(loader, "collate_fn", None)
    per_batch = collate is pad_collate or (isinstance(collate, partial) and collate.func is pad_collate)
    sampler = getattr(loader, "batch_sampler", None)
    if not (isinstance(loader, DataLoader) and per_batch and type(sampler) is BatchSampler
            and isinstance(sampler.sampler, SequentialSampler)):
        return None
    n_batches = len(loader) if num_batches is None else max(0, min(num_batches, len(loader)))
    n = min(len(loader.dataset), n_batches * sampler.batch_size)
    sizes = [min(sampler.batch_size, n - start) for start in range(0, n, sampler.batch_size)]
    pad_token_id = collate.keywords.get("pad_token_id", PAD_TOKEN_ID) if isinstance(collate, partial) else PAD_TOKEN_ID
    lengths = torch.as_tensor(message_lengths(loader.dataset, pad_token_id)[:n], dtype=torch.long)
    order = torch.argsort(lengths, stable=True)
    batches = [order[i:i + sampler.batch_size].tolist() for i in range(0, n, sampler.batch_size)]
    return LengthGrouped(DataLoader(loader.dataset, batch_sampler=batches, collate_fn=collate), order, sizes)


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
