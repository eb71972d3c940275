"""CoLA, the Corpus of Linguistic Acceptability: is a sentence grammatical (1) or not (0)?

The data have no redistribution licence, so they are downloaded at run time from the authors'
site (mirror first) and never committed. There is no published checksum of the official zip, so
a copy is verified by its member names, its four columns and its row counts.
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pandas as pd

from .downloads import DownloadError, fetch

COLA_URL = "https://nyu-mll.github.io/CoLA/cola_public_1.1.zip"
COLA_ZIP = "cola_public_1.1.zip"
COLUMNS = ["source", "label", "original_mark", "sentence"]
# split name -> (member in the zip, expected rows)
SPLITS = {
    "train": ("cola_public/raw/in_domain_train.tsv", 8551),
    "validation": ("cola_public/raw/in_domain_dev.tsv", 527),
    "out_of_domain": ("cola_public/raw/out_of_domain_dev.tsv", 516),
}


def download_cola() -> tuple[Path, str]:
    """Path of ``cola_public_1.1.zip`` (mirror, cache or the CoLA site) and where it came from."""
    return fetch(COLA_URL, COLA_ZIP, "cola")


def parse_split(text: str, name: str, expected_rows: int) -> pd.DataFrame:
    """One TSV split: four tab-separated columns, no header; refused unless exactly as published."""
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    bad = next((i for i, row in enumerate(rows) if len(row) != 4), None)
    if bad is not None:
        raise ValueError(f"CoLA {name}: line {bad + 1} has {len(rows[bad])} columns, expected 4 "
                         f"({', '.join(COLUMNS)}); the file is damaged, download it again.")
    if len(rows) != expected_rows:
        raise ValueError(f"CoLA {name} has {len(rows)} rows, expected {expected_rows}; the file is "
                         "truncated or not CoLA 1.1, download it again.")
    df = pd.DataFrame(rows, columns=COLUMNS)
    if not df["label"].isin(["0", "1"]).all():
        raise ValueError(f"CoLA {name} has labels other than 0 and 1; the file is damaged, download it again.")
    df["label"] = df["label"].astype(int)
    return df


def load_cola(zip_path: Path | None = None) -> dict[str, pd.DataFrame]:
    """The three public splits: ``train`` (in-domain), ``validation`` (in-domain dev) and
    ``out_of_domain`` (out-of-domain dev)."""
    zip_path = zip_path or download_cola()[0]
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = set(z.namelist())
            missing = [member for member, _ in SPLITS.values() if member not in names]
            if missing:
                raise ValueError(f"{Path(zip_path).name} lacks {missing[0]}; it is not CoLA 1.1, download it again.")
            return {name: parse_split(z.read(member).decode("utf-8"), name, rows)
                    for name, (member, rows) in SPLITS.items()}
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{Path(zip_path).name} is not a valid zip file (truncated download?); "
                            "delete it and download again.") from err


def as_text_label(df: pd.DataFrame) -> pd.DataFrame:
    """The columns the course's text datasets read: ``Text`` and ``Label``."""
    return pd.DataFrame({"Text": df["sentence"], "Label": df["label"]})
