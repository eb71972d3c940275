"""Every file the course downloads, generates or ships, in one registry: ``course info`` asks each whether
it is here, ``course fetch`` fetches those the chosen profile needs. Adding an asset means adding a record."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from course_lib.config import HF_REPOS
from course_lib.paths import cache_dir, mirror_dir


@dataclass(frozen=True)
class Asset:
    """One asset: its name as ``course info`` lists it, whether it is here, and how to get it.

    ``fetch`` downloads and verifies it and returns a few words on where it came from (or raises
    ``DownloadError``/``ValueError``/``FileNotFoundError`` with one sentence); ``None`` means shipped.
    ``profiles`` are the profiles whose ``course fetch`` gets it by default.
    """
    name: str
    is_cached: Callable[[], bool]
    fetch: Callable[[], str] | None = None
    profiles: tuple[str, ...] = ()


def _hub_cached(repo_id: str, filename: str, repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id=repo_id, filename=filename, repo_type=repo_type), str)


def gpt2_asset(model_size: str, profiles: tuple[str, ...] = ()) -> Asset:
    """GPT-2 weights of one size (the smoke model is generated locally in the same layout)."""
    def fetch() -> str:
        from course_lib.weights import download_gpt2, load_gpt2_checkpoint

        folder = download_gpt2(model_size)
        settings, _ = load_gpt2_checkpoint(folder)  # proves the files can be read
        return f"{settings}"

    if model_size in HF_REPOS:
        repo = HF_REPOS[model_size]
        return Asset(f"{model_size} weights ({repo})", lambda: _hub_cached(repo, "model.safetensors"), fetch, profiles)
    smoke = cache_dir() / "models" / "gpt2-smoke" / "model.safetensors"
    return Asset(f"{model_size} checkpoint (generated)", smoke.is_file, fetch, profiles)


def _sms_spam() -> Asset:
    from course_lib.sms import download_sms_spam, shipped_sms_spam

    return Asset("SMS Spam Collection", lambda: shipped_sms_spam().is_file(),
                 lambda: download_sms_spam(source="download" if mirror_dir() else "auto")[1], ("smoke", "full"))


def _cola() -> Asset:
    def fetch() -> str:
        from course_lib.cola import download_cola, load_cola

        load_cola(download_cola()[0])
        return "verified"

    return Asset("CoLA 1.1", lambda: (cache_dir() / "cola" / "cola_public_1.1.zip").is_file(), fetch,
                 ("smoke", "full"))


def _bonus() -> list[Asset]:
    """Notebook 09's data (smoke: AG News' test split) and, for the full profile, roberta-base and AG News."""
    def ag_news_test() -> str:
        from course_lib.peft_tuning import load_ag_news

        return load_ag_news("smoke")[1]

    assets = [Asset("AG News test split (notebook 09)", lambda: (cache_dir() / "ag-news" / "test.csv").is_file(),
                    ag_news_test, ("smoke", "full"))]
    from course_lib.peft_tuning import (AG_HUB_FILES, AG_REPO, ROBERTA_FILES, ROBERTA_REPO, encoder_path, hub_file,
                                        read_ag_parquet)

    def roberta() -> str:
        path, description = encoder_path("full")
        return f"{description}, {path}"

    def ag_split(split: str) -> Callable[[], str]:
        def fetch() -> str:
            path = hub_file(AG_REPO, AG_HUB_FILES[split], "dataset", f"AG News' {split} split")
            return f"{len(read_ag_parquet(path, split)):,} rows"
        return fetch

    assets.append(Asset(f"roberta-base ({ROBERTA_REPO}, notebook 09 full)",
                        lambda: all(_hub_cached(ROBERTA_REPO, f) for f in ROBERTA_FILES), roberta, ("full",)))
    assets += [Asset(f"AG News {split} ({AG_REPO}, notebook 09 full)",
                     lambda name=name: _hub_cached(AG_REPO, name, "dataset"), ag_split(split), ("full",))
               for split, name in AG_HUB_FILES.items()]
    return assets


def registry() -> list[Asset]:
    """Every asset, in the order ``course info`` lists them."""
    shipped_tokenizer = Asset("GPT-2 tokenizer (shipped in course_lib)", lambda: True)
    from course_lib.config import SMOKE_MODEL

    gpt2 = [gpt2_asset(SMOKE_MODEL)] + [gpt2_asset(size) for size in HF_REPOS]
    return [shipped_tokenizer, *gpt2, _sms_spam(), _cola(), *_bonus()]


def data_assets(profile_name: str) -> list[Asset]:
    """The data sets and bonus assets ``course fetch`` gets for a profile (GPT-2 weights are chosen by size)."""
    return [a for a in registry() if a.fetch is not None and profile_name in a.profiles]
