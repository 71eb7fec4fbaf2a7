"""Safe `.npz` reading: never unpickles, checks sizes before loading arrays."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError


def read_npz(source: str | Path | bytes, max_bytes: int = 4 << 30) -> dict[str, np.ndarray]:
    """Load every array of an npz (file path or bytes) with allow_pickle=False.

    Raises InputError for a missing/corrupt archive, an object (pickled) array, or an
    archive whose uncompressed size claims exceed `max_bytes`.
    """
    name = "<upload>" if isinstance(source, bytes) else str(source)
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with zipfile.ZipFile(fh) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except FileNotFoundError:
        raise InputError(f"file not found: {name}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{name} is not a valid .npz archive ({exc})") from None
    if total > max_bytes:
        raise InputError(f"{name} claims {total} bytes uncompressed, over the {max_bytes} limit")
    if isinstance(fh, io.BytesIO):
        fh.seek(0)
    try:
        with np.load(fh, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{name} contains pickled (object) arrays, which are refused") from None
        raise InputError(f"{name} could not be read: {exc}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise InputError(f"{name} is not a valid .npz archive ({exc})") from None
