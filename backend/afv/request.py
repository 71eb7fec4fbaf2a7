"""The typed request: every user-given field parsed once at the edge, checked once against
cheap facts about the inputs, then handed on as typed values (docs/contracts.md, "Request").

    raw fields --parse_request--> AnimateRequest --probe_inputs--> InputProbe
    (AnimateRequest, InputProbe) --check_request--> number of selected frames, or an InputError

The CLI and the server both call these three before any heavy work (the server before a job
exists, so bad input is a 4xx). Downstream code (pipeline, engines) receives FrameRange,
MaskSource, Camera and the engine's options dataclass, so nothing can parse a string again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Camera, camera_from_dict, load_camera
from .engines import DEFAULT_ENGINE, get_engine_spec
from .errors import InputError
from .masks import MaskSource
from .mesh import Mesh, load_mesh, parse_up_axis
from .video import VIDEO_SUFFIXES, FrameRange, image_size, list_images, probe_video, sniff_video

DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,2})?")
MAX_PATH_CHARS = 4096  # Linux PATH_MAX; longer is never a real path
MAX_NAME_CHARS = 255  # NAME_MAX: one path component


class LimitExceeded(InputError):
    """Input over a configured limit (the server answers 413)."""


@dataclass(frozen=True)
class RequestLimits:
    """Bounds a request must respect (None = unbounded, the CLI's default)."""

    max_frames: int | None = None  # selected frames
    max_size: int | None = None  # working resolution, long side
    max_frame_pixels: int | None = None  # W * H of one source frame (decoded)
    max_clip_pixels: int | None = None  # W * H * selected frames


@dataclass(frozen=True)
class AnimateRequest:
    """One animation job, every field already parsed (build it with `parse_request`)."""

    mesh: Mesh | Path  # a Path only for a mesh file the caller already validated (the server's stored copy)
    video: Path  # a video file or a folder of images
    options: Any  # the engine's own options dataclass (EngineSpec.parse_options)
    engine: str = DEFAULT_ENGINE
    frames: FrameRange = field(default_factory=FrameRange)
    masks: MaskSource = field(default_factory=MaskSource)
    camera: Camera | None = None  # at the source video's resolution
    device: str = "auto"  # auto | cpu | cuda[:i]
    max_size: int = 512  # working resolution, long side in pixels
    fps: float | None = None  # overrides the container's fps (image folders default to 24)
    seed: int = 0
    up_axis: np.ndarray | None = None  # (3,) unit vector in mesh coordinates, or None (unknown)
    first_pose: bool = False  # pose frame 0 to the video's first frame (retargeting; docs/contracts.md)

    def __post_init__(self) -> None:
        # typed fields are the point: a caller still passing strings gets told at once
        for name, typ in (("frames", FrameRange), ("masks", MaskSource), ("video", Path)):
            if not isinstance(getattr(self, name), typ):
                raise TypeError(f"AnimateRequest.{name} must be a {typ.__name__}; build requests with parse_request()")
        if self.camera is not None and not isinstance(self.camera, Camera):
            raise TypeError("AnimateRequest.camera must be a Camera; build requests with parse_request()")
        if type(self.first_pose) is not bool:
            raise TypeError("AnimateRequest.first_pose must be a bool; build requests with parse_request()")
        if not isinstance(self.mesh, (Mesh, Path)) or isinstance(self.options, dict):
            raise TypeError("AnimateRequest takes a Mesh/Path and parsed options; build requests with parse_request()")


def parse_request(
    mesh: str | Path | Mesh,
    video: str | Path,
    masks: str | MaskSource | None = "auto",
    camera: str | Path | dict | Camera | None = None,
    frames: str | FrameRange | None = None,
    engine: str | None = None,
    device: str | None = "auto",
    max_size: int | None = 512,
    fps: float | None = None,
    options: dict[str, Any] | None = None,
    seed: int | None = 0,
    up_axis: str | None = None,
    first_pose: bool | None = False,
) -> AnimateRequest:
    """Raw fields (CLI strings, JSON values, or already-typed values) -> AnimateRequest.

    A mesh path is loaded here; a camera path is read, a camera dict converted. Raises
    InputError naming the field for anything malformed.
    """
    name = engine or DEFAULT_ENGINE
    if not isinstance(name, str):
        raise InputError(f"engine must be a name, got {_short(name)}")
    spec = get_engine_spec(name)
    if options is not None and not isinstance(options, dict):
        raise InputError("engine options must be an object of name: value")
    try:
        parsed_options = spec.parse_options(options)
    except InputError as exc:
        if spec.name == name:
            raise
        # an old engine name: its options may be ones the engine that replaced it does not have
        raise InputError(exc.message, "; ".join(filter(None, [exc.hint, f"engine '{name}' was replaced by '{spec.name}'"]))) from None
    spec.create(parsed_options)  # engines whose constructors check option values refuse them now
    dev = "auto" if device is None else device
    if not isinstance(dev, str) or not DEVICE.fullmatch(dev):
        raise InputError(f"device {_short(dev)} is not auto, cpu or cuda[:i]")
    size = 512 if max_size is None else max_size
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 65536:
        raise InputError(f"max_size must be an integer in [16, 65536], got {_short(size)}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                            or not 0 < fps <= 1000):
        raise InputError(f"fps must be a number in (0, 1000], got {_short(fps)}")
    sd = 0 if seed is None else seed
    if isinstance(sd, bool) or not isinstance(sd, int) or not 0 <= sd < 2**32:
        raise InputError(f"seed must be an integer in [0, 2^32), got {_short(sd)}")
    if frames is not None and not isinstance(frames, (str, FrameRange)):
        raise InputError("frames must be a string 'start:end:step'")
    if masks is not None and not isinstance(masks, (str, MaskSource)):
        raise InputError("masks must be a keyword or a path")
    if up_axis is not None and not isinstance(up_axis, str):
        raise InputError("up_axis must be a string ('+z' or 'x,y,z')")
    if first_pose is not None and not isinstance(first_pose, bool):
        raise InputError(f"first_pose must be true or false, got {_short(first_pose)}")
    mask_source = masks if isinstance(masks, MaskSource) else MaskSource.parse(masks)
    if mask_source.path is not None:
        check_path_text(str(mask_source.path), "masks")
    return AnimateRequest(
        mesh=mesh if isinstance(mesh, Mesh) else load_mesh(check_path_text(mesh, "mesh")),
        video=check_path_text(video, "video"),
        options=parsed_options,
        engine=spec.name,
        frames=frames if isinstance(frames, FrameRange) else FrameRange.parse(frames),
        masks=mask_source,
        camera=_camera(camera),
        device=dev,
        max_size=size,
        fps=None if fps is None else float(fps),
        seed=sd,
        up_axis=parse_up_axis(up_axis),
        first_pose=bool(first_pose),
    )


def check_path_text(text: str | Path, what: str) -> Path:
    """A user-given path string -> Path, refusing NUL and lengths no file system accepts."""
    s = str(text)
    if not s.strip() or "\x00" in s:
        raise InputError(f"{what} path is empty or contains NUL")
    if len(s) > MAX_PATH_CHARS:
        raise InputError(f"{what} path is {len(s)} characters long, over {MAX_PATH_CHARS}")
    long = next((c for c in Path(s).parts if len(c.encode("utf-8", "surrogateescape")) > MAX_NAME_CHARS), None)
    if long is not None:
        raise InputError(f"{what} path has a component of {len(long)} characters, over {MAX_NAME_CHARS}")
    return Path(s)


def _camera(value: str | Path | dict | Camera | None) -> Camera | None:
    if value is None or isinstance(value, Camera):
        return value
    if isinstance(value, dict):
        return camera_from_dict(value)
    if isinstance(value, (str, Path)):
        return load_camera(check_path_text(value, "camera"))
    raise InputError("camera must be a JSON object or a path to a camera JSON file")


@dataclass(frozen=True)
class InputProbe:
    """Cheap facts about a request's inputs, read from headers (nothing is decoded)."""

    video_size: tuple[int, int]  # (W, H) of the source frames
    video_frames: int | None  # frame count; None when the container does not say
    video_is_folder: bool  # True: an image folder, whose count is exact
    mask_frames: int | None = None  # images in a mask folder / frames of a mask video
    mask_size: tuple[int, int] | None = None  # (W, H) of the masks
    n_vertices: int | None = None
    cuda_devices: int = 0


def probe_inputs(req: AnimateRequest) -> InputProbe:
    """Open the request's files just enough to know their sizes and counts."""
    import torch

    video_size, video_frames, is_folder = _probe_frames(req.video, "video")
    mask_frames = mask_size = None
    if req.masks.path is not None:
        path = req.masks.path
        if not path.exists():
            raise InputError(f"mask source '{path}' is neither a keyword nor an existing path",
                             "use auto, none, alpha, chroma, median, or a folder / video of masks")
        mask_size, mask_frames, _ = _probe_frames(path, "masks")
    n_vertices = req.mesh.n_vertices if isinstance(req.mesh, Mesh) else None
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return InputProbe(video_size, video_frames, is_folder, mask_frames, mask_size, n_vertices, cuda)


def _probe_frames(path: Path, what: str) -> tuple[tuple[int, int], int | None, bool]:
    """(size (W, H), frame count or None, is a folder) of a video file or image folder."""
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise InputError(f"{what} folder {path} holds no images")
        return image_size(files[0]), len(files), True
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{what} file {path.name} is not a video",
                         f"use one of {sorted(VIDEO_SUFFIXES)} or a folder of images")
    sniff_video(path, what)
    n, _fps, size = probe_video(path)
    if size[0] <= 0 or size[1] <= 0:
        raise InputError(f"{what} {path.name} could not be read", "the file may be corrupt or use an unsupported codec")
    return size, (n if 0 < n < 10**9 else None), False


def check_request(req: AnimateRequest, probe: InputProbe, limits: RequestLimits | None = None) -> int | None:
    """Every check that needs the inputs' facts; returns the number of selected frames (None
    when a video container does not say how many frames it holds: decoding counts them)."""
    limits = limits or RequestLimits()
    spec = get_engine_spec(req.engine)
    if req.device.startswith("cuda"):
        index = int(req.device.split(":")[1]) if ":" in req.device else 0
        if index >= probe.cuda_devices:
            raise InputError(f"device '{req.device}' requested but this machine has {probe.cuda_devices} CUDA GPU(s)",
                             "use device auto or cpu")
    if limits.max_size is not None and req.max_size > limits.max_size:
        raise InputError(f"max_size must be an integer in [16, {limits.max_size}], got {req.max_size}")
    if req.camera is None and spec.needs_camera:
        raise InputError(f"engine '{spec.name}' needs a camera", "pass a camera JSON (image_size, K, mesh_to_camera)")
    w, h = probe.video_size
    pixels = w * h
    if limits.max_frame_pixels is not None and pixels > limits.max_frame_pixels:
        raise LimitExceeded(f"video frames are {w}x{h} = {pixels} pixels, over the limit of {limits.max_frame_pixels}",
                            "downscale the video")
    if req.camera is not None and tuple(req.camera.image_size) != (w, h):
        raise InputError(f"camera image_size {list(req.camera.image_size)} does not match the video's {[w, h]}",
                         "the camera's intrinsics must be for the video's own resolution")
    selected = _selected(req.frames, probe)
    if selected is not None:
        if limits.max_frames is not None and selected > limits.max_frames:
            raise LimitExceeded(f"{selected} frames selected, over the limit of {limits.max_frames}",
                                "choose a shorter range or a larger step")
        if limits.max_clip_pixels is not None and selected * pixels > limits.max_clip_pixels:
            raise LimitExceeded(f"{selected} frames of {w}x{h} are {selected * pixels} pixels, over the limit of "
                                f"{limits.max_clip_pixels}", "choose fewer frames or downscale the video")
        if req.camera is not None and len(req.camera.mesh_to_camera) not in (1, selected):
            raise InputError(f"camera has {len(req.camera.mesh_to_camera)} poses but {selected} frames are selected",
                             "give one pose, or one per selected frame")
        if req.masks.keyword == "median" and selected < 3:
            raise InputError(f"masks=median needs at least 3 frames, got {selected}", "select more frames or use another mask source")
    if req.masks.keyword == "alpha" and not probe.video_is_folder:
        raise InputError("masks=alpha but a video file has no alpha channel", "use PNG frames with alpha, or another mask source")
    if req.masks.path is not None:
        _check_masks(req, probe, limits)
    return selected


def _selected(rng: FrameRange, probe: InputProbe) -> int | None:
    n = probe.video_frames
    if n is None:
        return None
    if probe.video_is_folder:
        return len(rng.indices(n))  # exact: raises when the range leaves the video
    if rng.start >= n:  # a container's count can be a little off: only the start is checked here
        raise InputError(f"frame range starts at {rng.start} but the video has about {n} frames")
    return len(range(rng.start, min(rng.end or n, n), rng.step))


def _check_masks(req: AnimateRequest, probe: InputProbe, limits: RequestLimits) -> None:
    assert probe.mask_size is not None
    mw, mh = probe.mask_size
    w, h = probe.video_size
    if limits.max_frame_pixels is not None and mw * mh > limits.max_frame_pixels:
        raise LimitExceeded(f"masks are {mw}x{mh} pixels, over the limit of {limits.max_frame_pixels}")
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise InputError(f"masks are {mw}x{mh}, their aspect ratio differs from the video's {w}x{h}",
                         "masks must be for the same (possibly scaled) frames as the video")
    n = probe.mask_frames
    if n is None or probe.video_frames is None:
        return
    if probe.video_is_folder and req.masks.path.is_dir() and n != probe.video_frames:
        raise InputError(f"mask folder has {n} images but the video has {probe.video_frames} frames",
                         "give one mask per video frame, in the same order")
    last = (req.frames.end or probe.video_frames) - 1
    if req.masks.path.is_dir() and n <= min(last, probe.video_frames - 1):
        raise InputError(f"mask folder has {n} images but frame {last} of the video is selected",
                         "give one mask per video frame, in the same order")


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


__all__ = ["AnimateRequest", "InputProbe", "LimitExceeded", "RequestLimits", "check_request", "check_path_text",
           "parse_request", "probe_inputs"]
