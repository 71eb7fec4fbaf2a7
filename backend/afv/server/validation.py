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
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..camera import Camera, camera_from_dict
from ..engines import ENGINES
from ..errors import InputError
from ..masks import KEYWORDS as MASK_KEYWORDS
from ..mesh import Mesh, validate_mesh
from ..npz import read_npz
from ..video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, FrameRange, list_images, probe_video
from .config import Limits, ServerConfig


class Refused(InputError):
    """An InputError answered with a specific HTTP status (403, 404, 409, 413, 429)."""

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


PARAM_KEYS = {"engine", "frames", "device", "max_size", "fps", "options", "seed"}


def _json_object(text: str, field: str, limits: Limits, hint: str = "") -> dict:
    """A size-limited form field that must hold one JSON object."""
    if len(text) > limits.max_json_bytes:
        raise Refused(413, f"{field} JSON is over {limits.max_json_bytes} bytes")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{field} must be a JSON object", hint)
    return value


def parse_params(text: str | None, limits: Limits) -> dict[str, Any]:
    """The `params` JSON field -> keyword arguments for AnimateRequest (validated types/ranges)."""
    if not text:
        return {}
    p = _json_object(text, "params", limits)
    unknown = set(p) - PARAM_KEYS
    if unknown:
        raise InputError(f"unknown params {sorted(unknown)}", f"valid keys: {sorted(PARAM_KEYS)}")
    out: dict[str, Any] = {}
    if p.get("engine") is not None:
        if not isinstance(p["engine"], str) or p["engine"] not in ENGINES:
            raise InputError(f"unknown engine {p['engine']!r}", f"available engines: {sorted(ENGINES)}")
        out["engine"] = p["engine"]
    if p.get("frames") is not None:
        if not isinstance(p["frames"], str):
            raise InputError("params.frames must be a string 'start:end:step'")
        FrameRange.parse(p["frames"])
        out["frames"] = p["frames"]
    if p.get("device") is not None:
        dev = p["device"]
        if not isinstance(dev, str) or not re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", dev):
            raise InputError(f"params.device {dev!r} is not auto, cpu or cuda[:i]")
        out["device"] = dev
    if p.get("max_size") is not None:
        ms = p["max_size"]
        if isinstance(ms, bool) or not isinstance(ms, int) or not 16 <= ms <= limits.max_size:
            raise InputError(f"params.max_size must be an integer in [16, {limits.max_size}], got {ms!r}")
        out["max_size"] = ms
    if p.get("fps") is not None:
        fps = p["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= 1000:
            raise InputError(f"params.fps must be a number in (0, 1000], got {fps!r}")
        out["fps"] = float(fps)
    if p.get("options") is not None:
        opts = p["options"]
        if not isinstance(opts, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool))) for k, v in opts.items()
        ):
            raise InputError("params.options must be an object of scalar values")
        out["options"] = opts
    if p.get("seed") is not None:
        seed = p["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise InputError(f"params.seed must be an integer in [0, 2^32), got {seed!r}")
        out["seed"] = seed
    # engine options are checked now (not when the job starts) so a typo is a 400
    ENGINES[out.get("engine") or _default_engine()].create(out.get("options"))
    return out


def _default_engine() -> str:
    from ..engines import DEFAULT_ENGINE

    return DEFAULT_ENGINE


def parse_mesh(data: bytes, limits: Limits) -> Mesh:
    """Uploaded mesh .npz bytes (arrays 'vertices' (N,3), 'faces' (F,3)) -> validated Mesh."""
    if len(data) > limits.max_mesh_bytes:
        raise Refused(413, f"mesh upload of {len(data)} bytes is over the {limits.max_mesh_bytes}-byte limit")
    # an npz within the vertex/face limits never needs more than this uncompressed
    claim_limit = limits.max_vertices * 3 * 8 + limits.max_faces * 3 * 8 + (1 << 20)
    arrays = read_npz(data, max_bytes=claim_limit)
    missing = {"vertices", "faces"} - set(arrays)
    if missing:
        raise InputError(f"mesh npz lacks arrays {sorted(missing)}", "send 'vertices' (N,3) float32 and 'faces' (F,3) int32")
    faces = arrays["faces"]
    if faces.ndim == 2 and faces.shape[0] > limits.max_faces:
        raise InputError(f"mesh has {faces.shape[0]} faces, over the limit of {limits.max_faces}")
    return validate_mesh(arrays["vertices"], faces, max_vertices=limits.max_vertices)


def parse_camera(text: str, limits: Limits) -> tuple[Camera, dict]:
    """Camera JSON text -> (Camera, the dict to store)."""
    d = _json_object(text, "camera", limits, "keys: image_size, K, mesh_to_camera (see docs/contracts.md)")
    try:
        cam = camera_from_dict(d)
    except InputError:
        raise
    except Exception as exc:  # malformed nested values
        raise InputError(f"camera JSON is malformed: {exc}", "keys: image_size, K, mesh_to_camera") from None
    if not (np.isfinite(cam.K).all() and np.isfinite(cam.mesh_to_camera).all()):
        raise InputError("camera contains NaN or infinite values")
    return cam, d


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def check_local_path(text: str, config: ServerConfig, what: str) -> Path:
    """A server-local video or mask path: loopback servers only, absolute, existing, a video
    file (known suffix) or a folder holding images, and under --allow-root when given."""
    if not config.loopback:
        raise Refused(403, f"local {what} paths are only accepted by a server bound to loopback", "upload the file instead")
    if "\x00" in text or not text.strip():
        raise InputError(f"{what} path is empty or contains NUL")
    raw = Path(text)
    if not raw.is_absolute():
        raise InputError(f"{what} path must be absolute, got '{text}'")
    try:
        path = raw.resolve()  # follows symlinks and `..` so the root check sees the real target
    except (RuntimeError, OSError):
        raise InputError(f"{what} path {text} cannot be resolved") from None
    # roots first: outside them, the server does not even say whether a path exists
    if config.allow_roots and not _under(path, tuple(r.resolve() for r in config.allow_roots)):
        raise Refused(403, f"{what} path {text} is outside the allowed roots", "start the server with --allow-root for that folder")
    if not path.exists():
        raise InputError(f"{what} not found: {text}")
    if path.is_dir():
        if not list_images(path):
            raise InputError(f"{what} folder {text} holds no images", f"image types: {sorted(IMAGE_SUFFIXES)}")
        return path
    if not path.is_file():
        raise InputError(f"{what} path {text} is neither a regular file nor a folder")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{what} file {path.name} is not a video", f"use one of {sorted(VIDEO_SUFFIXES)} or a folder of images")
    return path


def upload_suffix(filename: str | None, what: str) -> str:
    """The only part of a client file name we keep: a whitelisted, lower-case suffix."""
    suffix = Path((filename or "").replace("\\", "/")).suffix.lower()
    if suffix == ".zip" or suffix in VIDEO_SUFFIXES:
        return suffix
    raise InputError(
        f"uploaded {what} has unsupported type '{suffix or '(none)'}'",
        f"upload a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a .zip of images",
    )


def store_upload(src: IO[bytes], filename: str | None, dest_dir: Path, stem: str, limits: Limits, what: str) -> Path:
    """Copy an uploaded video/zip into dest_dir under a server-chosen name.

    A zip of images becomes the folder dest_dir/stem/ with frames renamed frame_00000.ext
    in natural order of the member names (names never reach the file system).
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
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"uploaded {what} is not a valid zip ({exc})") from None
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
        key = lambda m: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m.filename)]  # noqa: E731
        try:
            for k, m in enumerate(sorted(members, key=key)):
                with zf.open(m) as fin, open(folder / f"frame_{k:05d}{Path(m.filename).suffix.lower()}", "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise InputError(f"uploaded {what} zip could not be extracted ({exc})") from None
    return folder


def check_video(path: Path, params: dict[str, Any], camera: Camera | None, limits: Limits) -> int:
    """Open the video (or image folder) once at submit time so unreadable input, a frame
    selection over the limit or a camera that does not fit the video is a 4xx now, not a
    failed job later. Returns the number of selected frames (0 when the container does not
    say how many frames it holds; the decode checks again)."""
    n, _fps, size = probe_video(path)
    if size[0] <= 0 or size[1] <= 0:
        raise InputError(f"video {path.name} could not be read", "the file may be corrupt or use an unsupported codec")
    spec = ENGINES[params.get("engine") or _default_engine()]
    if camera is None and spec.needs_camera:
        raise InputError(f"engine '{spec.name}' needs a camera", "send the camera JSON (image_size, K, mesh_to_camera)")
    if camera is not None and tuple(camera.image_size) != tuple(size):
        raise InputError(f"camera image_size {list(camera.image_size)} does not match the video's {list(size)}",
                         "the camera's intrinsics must be for the video's own resolution")
    if n <= 0:
        return 0
    rng = FrameRange.parse(params.get("frames"))
    sel = len(rng.indices(n)) if path.is_dir() else len(range(rng.start, min(rng.end or n, n), rng.step))
    if sel > limits.max_frames:
        raise Refused(413, f"{sel} frames selected, over the limit of {limits.max_frames}", "choose a shorter range or a larger step")
    if camera is not None and len(camera.mesh_to_camera) not in (1, sel):
        raise InputError(f"camera has {len(camera.mesh_to_camera)} poses but {sel} frames are selected",
                         "give one pose, or one per selected frame")
    return sel


def check_masks_keyword(text: str) -> bool:
    return text.strip() in MASK_KEYWORDS
