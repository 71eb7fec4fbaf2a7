"""Safe `.npz` reading: never unpickles, checks every size before it is allocated.

The archive is opened as a zip (never handed to np.load, so a `.npy` that is also a zip cannot
be read as something else); each member must be a plain `.npy` stored or deflated without
encryption, whose header's shape x itemsize agrees with the member's declared size; members
are decompressed as a stream, so a corrupt deflate stream or a lying size is an error, never
an allocation.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError

SUPPORTED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def check_zip_member(info: zipfile.ZipInfo, name: str, hint: str) -> None:
    """Refuse a zip member that cannot be read safely: encrypted, or compressed other than stored/deflated
    (used for uploaded npz archives and image zips alike)."""
    if info.flag_bits & 0x1:
        raise InputError(f"{name} member {info.filename[:64]!r} is encrypted")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise InputError(f"{name} member {info.filename[:64]!r} uses unsupported compression {info.compress_type}", hint)
MAX_MEMBERS = 256
MAX_HEADER_BYTES = 1 << 16  # npy headers are a few hundred bytes


def read_npz(source: str | Path | bytes, max_bytes: int = 4 << 30) -> dict[str, np.ndarray]:
    """Load every array of an npz (file path or bytes) with allow_pickle=False.

    Raises InputError for a missing/corrupt archive, an object (pickled) array, an encrypted
    or oddly compressed member, a header that disagrees with its data, or an archive whose
    uncompressed size claims exceed `max_bytes`.
    """
    name = "<upload>" if isinstance(source, bytes) else str(source)
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        head = source[:4] if isinstance(source, bytes) else _head(Path(source))
        if head != b"PK\x03\x04":  # an npz starts with its first member; anything else (a .npy with a zip appended) is refused
            raise InputError(f"{name} is not an .npz archive (it does not start like a zip)",
                             "write it with numpy.savez or numpy.savez_compressed")
        with zipfile.ZipFile(fh) as zf:
            members = _check_members(zf, name, max_bytes)
            return {key: _read_member(zf, info, name) for key, info in members}
    except FileNotFoundError:
        raise InputError(f"file not found: {name}") from None
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError, RuntimeError,
            NotImplementedError, OverflowError, MemoryError) as exc:
        raise InputError(f"{name} is not a valid .npz archive ({type(exc).__name__}: {str(exc)[:200]})") from None


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _check_members(zf: zipfile.ZipFile, name: str, max_bytes: int) -> list[tuple[str, zipfile.ZipInfo]]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InputError(f"{name} holds {len(infos)} members, over the limit of {MAX_MEMBERS}")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise InputError(f"{name} claims {total} bytes uncompressed, over the {max_bytes} limit")
    out = []
    for info in infos:
        check_zip_member(info, name, "write it with numpy.savez or numpy.savez_compressed")
        if not info.filename.endswith(".npy"):
            raise InputError(f"{name} member {info.filename[:64]!r} is not an .npy array")
        out.append((info.filename[:-4], info))
    return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise InputError(f"{name} member {info.filename[:64]!r} has npy format {version}")
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                  (3, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = reader(f, max_header_size=MAX_HEADER_BYTES)
        if dtype.hasobject:
            raise InputError(f"{name} contains pickled (object) arrays, which are refused")
        header = f.tell()
        count = 1
        for n in shape:
            count *= int(n)
        need = count * dtype.itemsize
        if header + need != info.file_size:
            raise InputError(f"{name} member {info.filename[:64]!r} declares shape {tuple(shape)} of {dtype} "
                             f"({need} bytes) but holds {info.file_size - header}")
        buf = bytearray(need)
        view = memoryview(buf)
        got = 0
        while got < need:  # a stream: a corrupt deflate stream fails here, having allocated only `need`
            n = f.readinto(view[got:])
            if not n:
                raise InputError(f"{name} member {info.filename[:64]!r} is truncated")
            got += n
        if f.read(1):
            raise InputError(f"{name} member {info.filename[:64]!r} holds more data than its header says")
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")
