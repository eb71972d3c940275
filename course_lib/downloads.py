"""Downloads that work offline: the mirror first (``COURSE_MIRROR``), then the official URL
through pooch, and a one-sentence error when neither is reachable."""
from __future__ import annotations

import hashlib
import os
import shutil
import traceback
from pathlib import Path

from .paths import cache_dir, mirror_dir


class DownloadError(RuntimeError):
    """An asset could not be fetched from the mirror or the network.

    In Jupyter it shows as its one sentence, without the chain of library exceptions behind it
    (IPython asks ``_render_traceback_``); the chain stays on ``__cause__`` for code, and
    ``COURSE_DEBUG=1`` shows it in the notebook too.
    """

    def _render_traceback_(self) -> list[str]:
        """What IPython prints for this error: one line, or the whole chain with ``COURSE_DEBUG=1``."""
        if os.environ.get("COURSE_DEBUG"):
            return "".join(traceback.format_exception(self)).splitlines()
        return [f"{type(self).__name__}: {self}"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, filename: str, mirror_subdir: str, dest_dir: Path | None = None,
          known_hash: str | None = None, progress: bool = True) -> tuple[Path, str]:
    """Get ``filename`` into ``dest_dir`` (default: the course cache); returns (path, origin).

    ``origin`` says where it came from: ``"mirror"``, ``"cache"`` or ``"download"``. With
    ``known_hash`` (sha256) a file that does not match is refused.
    """
    dest_dir = Path(dest_dir or cache_dir() / mirror_subdir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    mirror = mirror_dir()
    if mirror is not None and (mirror / mirror_subdir / filename).is_file():
        shutil.copyfile(mirror / mirror_subdir / filename, target)
        _verify(target, known_hash, "the mirror's copy")
        return target, "mirror"
    if target.is_file() and (known_hash is None or sha256_of(target) == known_hash):
        return target, "cache"
    import pooch

    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{known_hash}" if known_hash else None,
                              fname=filename, path=dest_dir, progressbar=progress)
    except ValueError as err:  # pooch's hash mismatch
        raise DownloadError(f"The download of {url} does not match its sha256 checksum; "
                            "delete it and try again later.") from err
    except Exception as err:  # no network, DNS, HTTP errors
        raise DownloadError(
            f"Could not download {url} ({type(err).__name__}); connect to the internet, or set "
            f"COURSE_MIRROR to a folder holding {mirror_subdir}/{filename}.") from err
    return Path(path), "download"


def _verify(path: Path, known_hash: str | None, what: str) -> None:
    if known_hash and sha256_of(path) != known_hash:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{what} of {path.name} does not match its sha256 checksum "
                            "(corrupt or truncated); replace it with a good copy.")
