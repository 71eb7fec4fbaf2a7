"""Checks on everything a client sends, and safe storage of uploads in a job's folder.

Every refusal is an InputError (message + hint); `Refused` carries an HTTP status other
than 400 (403 forbidden path, 413 too large). Client-given file names are never used:
stored files get server-chosen names, only a whitelisted suffix is kept.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..mesh import Mesh, validate_mesh
from ..npz import check_zip_member, read_npz
from ..rig import rig_from_npz
from ..request import LimitExceeded, check_path_text
from ..video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, image_size, list_images
from .config import Limits, ServerConfig


class Refused(InputError):
    """An InputError answered with a specific HTTP status (403, 404, 409, 413, 429)."""

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


PARAM_KEYS = {"engine", "frames", "device", "max_size", "fps", "options", "seed", "up_axis", "first_pose"}
MAX_JSON_INT_DIGITS = 20


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number")


def read_json(text: str, field: str, limits: Limits, hint: str = "") -> dict:
    """A size-limited form field that must hold one JSON object: no NaN/Infinity, no number
    beyond float range, no integer of more than 20 digits, nesting bounded by the decoder."""
    if len(text) > limits.max_json_bytes:
        raise Refused(413, f"{field} JSON is over {limits.max_json_bytes} bytes")
    try:
        value = json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"{field} JSON is nested too deeply", hint) from None
    except ValueError as exc:  # JSONDecodeError is one
        raise InputError(f"{field} is not valid JSON: {str(exc)[:200]}", hint) from None
    if not isinstance(value, dict):
        raise InputError(f"{field} must be a JSON object", hint)
    return value


def parse_params(text: str | None, limits: Limits) -> dict[str, Any]:
    """The `params` JSON field -> raw keyword arguments for afv.request.parse_request, which
    checks their types and values."""
    if not text:
        return {}
    p = read_json(text, "params", limits, f"keys: {sorted(PARAM_KEYS)}")
    unknown = set(p) - PARAM_KEYS
    if unknown:
        raise InputError(f"unknown params {sorted(unknown)[:10]}", f"valid keys: {sorted(PARAM_KEYS)}")
    opts = p.get("options")
    if opts is not None and (not isinstance(opts, dict) or not all(
            isinstance(v, (str, int, float, bool)) or v is None for v in opts.values())):
        raise InputError("params.options must be an object of scalar values")
    return {k: v for k, v in p.items() if v is not None and not (k == "options" and v == {})}


def parse_mesh(data: bytes, limits: Limits) -> Mesh:
    """Uploaded mesh .npz bytes (arrays 'vertices' (N,3), 'faces' (F,3)) -> validated Mesh."""
    if len(data) > limits.max_mesh_bytes:
        raise Refused(413, f"mesh upload of {len(data)} bytes is over the {limits.max_mesh_bytes}-byte limit")
    # an npz within the vertex/face limits never needs more than this uncompressed
    # (with a rig: skin joints and weights, up to 8 influences a vertex)
    claim_limit = limits.max_vertices * (3 + 16) * 8 + limits.max_faces * 3 * 8 + (1 << 20)
    arrays = read_npz(data, max_bytes=claim_limit)
    missing = {"vertices", "faces"} - set(arrays)
    if missing:
        raise InputError(f"mesh npz lacks arrays {sorted(missing)}", "send 'vertices' (N,3) float32 and 'faces' (F,3) int32")
    faces = arrays["faces"]
    if faces.ndim == 2 and faces.shape[0] > limits.max_faces:
        raise InputError(f"mesh has {faces.shape[0]} faces, over the limit of {limits.max_faces}")
    mesh = validate_mesh(arrays["vertices"], faces, max_vertices=limits.max_vertices)
    try:
        rig = rig_from_npz(arrays, mesh.n_vertices)
    except InputError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as exc:  # odd dtypes or shapes in the rig arrays
        raise InputError(f"mesh rig arrays are malformed ({str(exc)[:200]})") from None
    return mesh if rig is None else Mesh(mesh.vertices, mesh.faces, rig)


def parse_camera_json(text: str, limits: Limits) -> dict:
    """Camera JSON text -> the dict afv.request.parse_request turns into a Camera."""
    return read_json(text, "camera", limits, "keys: image_size, K, mesh_to_camera (see docs/contracts.md)")


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _roots(config: ServerConfig) -> tuple[Path, ...]:
    return tuple(r.resolve() for r in config.allow_roots)


def check_local_path(text: str, config: ServerConfig, what: str) -> Path:
    """A server-local video or mask path: loopback servers only, absolute, existing, a video
    file (known suffix) or a folder holding images, and under --allow-root when given (the
    folder's image files too: a symlinked frame may not point out of the roots).
    Returns the resolved path (no symlink left in it)."""
    if not config.loopback:
        raise Refused(403, f"local {what} paths are only accepted by a server bound to loopback", "upload the file instead")
    raw = check_path_text(text, what)
    if not raw.is_absolute():
        raise InputError(f"{what} path must be absolute, got '{text[:200]}'")
    try:
        path = raw.resolve()  # follows symlinks and `..` so the root check sees the real target
    except (RuntimeError, OSError, ValueError):
        raise InputError(f"{what} path {text[:200]} cannot be resolved") from None
    roots = _roots(config)
    # roots first: outside them, the server does not even say whether a path exists
    if roots and not _under(path, roots):
        raise Refused(403, f"{what} path {text[:200]} is outside the allowed roots", "start the server with --allow-root for that folder")
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as exc:
        raise InputError(f"{what} path {text[:200]} cannot be read ({exc.strerror})") from None
    if not exists:
        raise InputError(f"{what} not found: {text[:200]}")
    if is_dir:
        files = _folder_images(path, roots, what, text)
        if not files:
            raise InputError(f"{what} folder {text[:200]} holds no images", f"image types: {sorted(IMAGE_SUFFIXES)}")
        return path
    if not is_file:
        raise InputError(f"{what} path {text[:200]} is neither a regular file nor a folder")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{what} file {path.name} is not a video", f"use one of {sorted(VIDEO_SUFFIXES)} or a folder of images")
    return path


def _folder_images(path: Path, roots: tuple[Path, ...], what: str, text: str) -> list[Path]:
    try:
        files = list_images(path)
    except OSError as exc:
        raise InputError(f"{what} folder {text[:200]} cannot be listed ({exc.strerror})") from None
    if roots:
        for f in files:
            if not _under(f.resolve(), roots):
                raise Refused(403, f"{what} folder {text[:200]} holds {f.name}, a link out of the allowed roots")
    return files


def recheck_local_path(path: Path, config: ServerConfig, what: str) -> None:
    """Called when a job opens its local inputs: the path checked at submit (stored resolved)
    must still resolve to itself, under the roots; a folder or link swapped in since is refused."""
    roots = _roots(config)
    try:
        now = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InputError(f"{what} {path} is gone since the job was submitted") from None
    if now != path:
        raise Refused(403, f"{what} {path} now resolves to another place (a link was swapped in)", "submit the job again")
    if roots and not _under(now, roots):
        raise Refused(403, f"{what} {path} is outside the allowed roots")
    if now.is_dir():
        _folder_images(now, roots, what, str(path))


def upload_suffix(filename: str | None, what: str) -> str:
    """The only part of a client file name we keep: a whitelisted, lower-case suffix."""
    suffix = Path((filename or "").replace("\\", "/")[-255:]).suffix.lower()
    if suffix == ".zip" or suffix in VIDEO_SUFFIXES:
        return suffix
    raise InputError(
        f"uploaded {what} has unsupported type '{suffix[:16] or '(none)'}'",
        f"upload a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a .zip of images",
    )




def store_upload(src: IO[bytes], filename: str | None, dest_dir: Path, stem: str, limits: Limits, what: str) -> Path:
    """Copy an uploaded video/zip into dest_dir under a server-chosen name.

    A zip of images becomes the folder dest_dir/stem/ with frames renamed frame_00000.ext
    in natural order of the member names (names never reach the file system). Members must
    be stored or deflated, not encrypted; each is streamed with its bytes counted against its
    declared size and the total limit, and every image's header is read (no pixel decoded)
    and checked against the pixel limits before the job may exist.
    """
    suffix = upload_suffix(filename, what)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if suffix != ".zip":
        dest = dest_dir / f"{stem}{suffix}"
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return dest
    folder = dest_dir / stem
    folder.mkdir()
    head = src.read(4)
    src.seek(0)
    if head != b"PK\x03\x04":
        raise InputError(f"uploaded {what} is not a zip archive (it does not start like one)")
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"uploaded {what} is not a valid zip ({str(exc)[:200]})") from None
    with zf:
        members = [
            m for m in zf.infolist()
            if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES and not Path(m.filename).name.startswith(".")
        ]
        if not members:
            raise InputError(f"uploaded {what} zip holds no images", f"image types: {sorted(IMAGE_SUFFIXES)}")
        if len(members) > limits.max_zip_members:
            raise Refused(413, f"uploaded {what} zip holds {len(members)} images, over the limit of {limits.max_zip_members}")
        total = sum(m.file_size for m in members)
        if total > limits.max_unzipped_bytes:
            raise Refused(413, f"uploaded {what} zip claims {total} bytes uncompressed, over the {limits.max_unzipped_bytes} limit")
        for m in members:
            check_zip_member(m, f"uploaded {what} zip", "zip the images stored or deflated (the default of every zip tool)")
        key = lambda m: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m.filename)]  # noqa: E731
        written = 0
        first_size = None
        try:
            for k, m in enumerate(sorted(members, key=key)):
                dest = folder / f"frame_{k:05d}{Path(m.filename).suffix.lower()}"
                with zf.open(m) as fin, open(dest, "wb") as fout:
                    n = 0
                    while chunk := fin.read(1 << 20):
                        n += len(chunk)
                        written += len(chunk)
                        if n > m.file_size or written > limits.max_unzipped_bytes:  # the zip lied about sizes
                            raise Refused(413, f"uploaded {what} zip member {m.filename[:64]!r} expands beyond its declared size")
                        fout.write(chunk)
                size = _check_image(dest, limits, what)
                if first_size is not None and size != first_size:
                    raise InputError(f"uploaded {what} zip mixes image sizes: {m.filename[:64]!r} is {size[0]}x{size[1]}, "
                                     f"the first is {first_size[0]}x{first_size[1]}")
                first_size = first_size or size
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise InputError(f"uploaded {what} zip could not be extracted ({type(exc).__name__}: {str(exc)[:200]})") from None
    return folder


def _check_image(path: Path, limits: Limits, what: str) -> tuple[int, int]:
    w, h = image_size(path)
    if w * h > limits.max_frame_pixels:
        raise LimitExceeded(f"uploaded {what} image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_frame_pixels}",
                            "downscale the frames")
    return w, h
