"""Where data files live, and fetching them when they are missing.

The root folder is, in order: the ``data_dir`` argument (``--data-dir`` / config ``data.data_dir``),
the environment variable ``BYZLEARN_DATA``, else ``~/.cache/byzlearn``. A data set's files are
looked for in the root itself and in its conventional subfolders (``mnist``, ``MNIST/raw``, ...).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..registry import ConfigError

ENV_VAR = "BYZLEARN_DATA"
DEFAULT_ROOT = Path("~/.cache/byzlearn")
TIMEOUT_S = 10.0
_CHUNK = 1 << 20


class DataNotFoundError(FileNotFoundError, ConfigError):
    """A data set's files are neither on disk nor downloadable; the message says how to fix it."""


class DataFormatError(ConfigError):
    """A data file exists but is corrupt or not in the expected format."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The root data folder: ``data_dir``, else ``$BYZLEARN_DATA``, else ``~/.cache/byzlearn``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def candidate_dirs(root: Path, subdirs: Sequence[str], extra: Iterable[str | Path] = ()) -> list[Path]:
    """``root``, then ``root/<sub>`` for each conventional subfolder, then ``extra`` folders."""
    out = [root, *(root / s for s in subdirs), *(Path(e) for e in extra)]
    return list(dict.fromkeys(out))


def find_in(folder: Path, name: str, gz: bool = True) -> Path | None:
    """``folder/name`` or (if ``gz``) ``folder/name.gz``, whichever exists first."""
    for p in (folder / name, folder / f"{name}.gz") if gz else (folder / name,):
        if p.is_file():
            return p
    return None


def find_all(dirs: Sequence[Path], names: Sequence[str], gz: bool = True) -> dict[str, Path] | None:
    """The first folder of ``dirs`` holding every file of ``names`` (plain or ``.gz``), as name -> path."""
    for d in dirs:
        found = {n: find_in(d, n, gz) for n in names}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def download_dir(root: Path, subdirs: Sequence[str]) -> Path:
    """Where a download lands: ``root`` if it already is a conventional folder, else ``root/<subdirs[0]>``."""
    for s in subdirs:
        parts = Path(s).parts
        if root.parts[-len(parts) :] == parts:
            return root
    return root / subdirs[0]


def download_file(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Stream ``url`` into the file ``dest`` (replaced by tests to simulate the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:
        while chunk := resp.read(_CHUNK):
            f.write(chunk)


def md5_of(path: Path, gunzip: bool = False) -> str:
    """MD5 of a file's bytes, or of its decompressed content when ``gunzip``."""
    h = hashlib.md5(usedforsecurity=False)
    with gzip.open(path, "rb") if gunzip else open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(urls: Sequence[str], dest: Path, verify: Callable[[Path], bool]) -> None:
    """Download ``dest`` from the first of ``urls`` that works and passes ``verify``.

    Each attempt writes a temporary file in ``dest``'s folder that is renamed only once verified.
    Raises ``OSError`` listing every failed attempt.
    """
    created = [p for p in dest.parents if not p.exists()]  # folders to remove again if every attempt fails
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            download_file(url, tmp)
            try:
                ok = verify(tmp)
            except Exception as e:  # noqa: BLE001 - e.g. not a gzip file at all
                raise OSError(f"checksum mismatch ({type(e).__name__}: {e})") from e
            if not ok:
                raise OSError("checksum mismatch")
            os.replace(tmp, dest)
            return
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    for p in created:
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    raise OSError("; ".join(errors))


def not_found(dataset: str, names: Sequence[str], searched: Sequence[Path], reason: str) -> DataNotFoundError:
    """The error for a data set that is neither on disk nor downloadable."""
    folders = "\n".join(f"  {d}" for d in searched)
    return DataNotFoundError(
        f"{dataset}: data files not found: {', '.join(names)} (plain or .gz).\nSearched:\n{folders}\n"
        f"Download: {reason}\n"
        f"Fix: put the files in one of those folders, or point to them with --data-dir / config "
        f"data.data_dir, or the environment variable {ENV_VAR} (a root folder; conventional "
        f"subfolders are searched too); or allow a download (data.download = true) with network access."
    )
