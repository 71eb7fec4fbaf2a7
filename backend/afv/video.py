"""Video input: a video file or an image folder, decoded to RGB frames at a working size.

Frame selection follows Python slices, `start:end:step` (end exclusive, may be empty).
Frames are resized so the long side is at most `max_size` pixels; `scale` records the
factor so cameras and masks given at source resolution can be brought along.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .errors import InputError

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".exr", ".webp"}
DEFAULT_FPS = 24.0


@dataclass(frozen=True)
class FrameRange:
    start: int = 0
    end: int | None = None  # exclusive; None = to the end
    step: int = 1

    @staticmethod
    def parse(text: str | None) -> "FrameRange":
        """'a:b:s', 'a:b', 'a:' or '' -> FrameRange; raises InputError on nonsense."""
        if not text:
            return FrameRange()
        m = re.fullmatch(r"\s*(\d*)\s*(?::\s*(\d*)\s*(?::\s*(\d*)\s*)?)?", text)
        if not m:
            raise InputError(f"frame range '{text}' is not of the form start:end:step")
        start = int(m.group(1)) if m.group(1) else 0
        end = int(m.group(2)) if m.group(2) else None
        step = int(m.group(3)) if m.group(3) else 1
        if step < 1:
            raise InputError(f"frame step must be >= 1, got {step}")
        if end is not None and end <= start:
            raise InputError(f"frame range '{text}' is empty (end <= start)")
        return FrameRange(start, end, step)

    def indices(self, n_total: int) -> np.ndarray:
        if self.start >= n_total:
            raise InputError(f"frame range starts at {self.start} but the video has {n_total} frames")
        end = n_total if self.end is None else self.end
        if end > n_total:
            raise InputError(f"frame range ends at {end} but the video has {n_total} frames")
        return np.arange(self.start, end, self.step, dtype=np.int32)

    def __str__(self) -> str:
        return f"{self.start}:{'' if self.end is None else self.end}:{self.step}"


@dataclass
class VideoClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB at working resolution
    alpha: np.ndarray | None  # (T, H, W) uint8 when the source had an alpha channel
    frame_indices: np.ndarray  # (T,) int32 indices into the source
    fps: float  # of the source (selected frames are `step` apart)
    source_size: tuple[int, int]  # (W, H) of the source frames
    scale: float  # working / source size

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.frames.shape[2]), int(self.frames.shape[1]))

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def working_size(w: int, h: int, max_size: int | None) -> tuple[int, int, float]:
    if not max_size or max(w, h) <= max_size:
        return w, h, 1.0
    s = max_size / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s)), s


def list_images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    # natural sort so frame_2 comes before frame_10
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def probe_video(path: str | Path) -> tuple[int, float, tuple[int, int]]:
    """(frame count, fps, (W, H)) without decoding everything; count may be approximate for files."""
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise InputError(f"image folder {path} holds no images")
        return len(files), DEFAULT_FPS, image_size(files[0])
    cap = _open_capture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or DEFAULT_FPS
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    return n, fps, size


def _open_capture(path: Path) -> cv2.VideoCapture:
    if not path.exists():
        raise InputError(f"video not found: {path}")
    if not path.is_file():
        raise InputError(f"video path is neither a file nor an image folder: {path}")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(
            f"unsupported video type '{path.suffix}'", f"use one of {sorted(VIDEO_SUFFIXES)} or a folder of images"
        )
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"could not open video {path.name}", "the file may be corrupt or use an unsupported codec")
    return cap


def _resize(img: np.ndarray, size: tuple[int, int], interp: int = cv2.INTER_AREA) -> np.ndarray:
    return img if (img.shape[1], img.shape[0]) == size else cv2.resize(img, size, interpolation=interp)


def load_video(
    path: str | Path,
    frames: FrameRange | str | None = None,
    max_size: int | None = 512,
    fps: float | None = None,
    max_frames: int = 4000,
    on_frame: Callable[[int, int], None] | None = None,
) -> VideoClip:
    """Decode the selected frames of a video file or image folder.

    on_frame(i, n) is called after each decoded frame (progress and cancellation hook).
    Raises InputError for missing/corrupt input, zero frames or an out-of-range selection.
    """
    path = Path(path)
    rng = frames if isinstance(frames, FrameRange) else FrameRange.parse(frames)
    if path.is_dir():
        clip = _load_folder(path, rng, max_size, max_frames, on_frame)
        return clip if fps is None else _with_fps(clip, fps)
    cap = _open_capture(path)
    try:
        src_fps = float(cap.get(cv2.CAP_PROP_FPS)) or DEFAULT_FPS
        out: list[np.ndarray] = []
        idx: list[int] = []
        i = 0
        size = None
        n_hint = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
        while True:
            if rng.end is not None and i >= rng.end:
                break
            ok, bgr = cap.read()
            if not ok:
                break
            if i >= rng.start and (i - rng.start) % rng.step == 0:
                if size is None:
                    src_size = (bgr.shape[1], bgr.shape[0])
                    w, h, scale = working_size(*src_size, max_size)
                    size = (w, h)
                out.append(cv2.cvtColor(_resize(bgr, size), cv2.COLOR_BGR2RGB))
                idx.append(i)
                if len(out) > max_frames:
                    raise InputError(f"more than {max_frames} frames selected", "choose a shorter range or a larger step")
                if on_frame:
                    on_frame(len(out), max(1, _expected_count(rng, n_hint)))
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise InputError(f"video {path.name} has no decodable frames", "the file may be empty or corrupt")
    rng.indices(i)  # raises a clear error when the range is outside the video
    if not out:
        raise InputError(f"frame range {rng} selects no frames of {path.name}")
    return VideoClip(np.stack(out), None, np.asarray(idx, np.int32), fps or src_fps, src_size, scale)


def _expected_count(rng: FrameRange, n_total: int) -> int:
    end = n_total if rng.end is None else min(rng.end, n_total or rng.end)
    return max(0, (end - rng.start + rng.step - 1) // rng.step)


def _with_fps(clip: VideoClip, fps: float) -> VideoClip:
    if not (fps > 0 and np.isfinite(fps)):
        raise InputError(f"fps must be positive, got {fps}")
    clip.fps = float(fps)
    return clip


def _load_folder(path: Path, rng: FrameRange, max_size, max_frames, on_frame) -> VideoClip:
    files = list_images(path)
    if not files:
        raise InputError(f"image folder {path} holds no images")
    sel = rng.indices(len(files))
    if len(sel) > max_frames:
        raise InputError(f"{len(sel)} frames selected, over the limit of {max_frames}")
    rgb, alpha = [], []
    size = None
    for k, i in enumerate(sel):
        img = read_image(files[i])
        if img.dtype != np.uint8:  # 16-bit PNG / float EXR -> 8 bit
            img = np.clip(img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 1.0) * 255, 0, 255).astype(np.uint8)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if size is None:
            src_size = (img.shape[1], img.shape[0])
            w, h, scale = working_size(*src_size, max_size)
            size = (w, h)
        elif (img.shape[1], img.shape[0]) != src_size:
            raise InputError(f"image {files[i].name} is {img.shape[1]}x{img.shape[0]}, the first is {src_size[0]}x{src_size[1]}")
        img = _resize(img, size)
        if img.shape[2] == 4:
            alpha.append(img[..., 3])
        rgb.append(cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB))
        if on_frame:
            on_frame(k + 1, len(sel))
    a = np.stack(alpha) if len(alpha) == len(rgb) else None
    return VideoClip(np.stack(rgb), a, sel, DEFAULT_FPS, src_size, scale)


def read_image(path: Path) -> np.ndarray:
    """cv2.imread(IMREAD_UNCHANGED) that raises InputError instead of returning None or raising
    cv2.error (OpenCV refuses images over OPENCV_IO_MAX_IMAGE_PIXELS before decoding them)."""
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise InputError(f"could not read image {Path(path).name}", "the file may be corrupt, truncated or too large")
    return img


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image from its header alone (no pixel is decoded), so a decompression bomb
    is refused before it costs memory. Formats Pillow does not know (EXR) are read by OpenCV,
    whose own pixel limit then applies."""
    from PIL import Image, UnidentifiedImageError

    # Pillow refuses to even open images over its own pixel limit; we never decode with it,
    # and our callers compare the size with their own limits, so the size is what we need
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:  # lazy: reads the header only
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass
    if Path(path).suffix.lower() != ".exr":
        raise InputError(f"could not read image {Path(path).name}", "the file may be corrupt or not an image")
    img = read_image(path)
    return int(img.shape[1]), int(img.shape[0])


# leading bytes of the containers VIDEO_SUFFIXES name: ISO media (mp4/mov/m4v) has a box type at
# offset 4, Matroska/WebM starts with the EBML magic, AVI is a RIFF file of form 'AVI '
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def sniff_video(path: Path, what: str = "video") -> None:
    """Refuse a file whose first bytes are not a video container (an image or text renamed .mp4)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"{what} {Path(path).name} cannot be read ({exc.strerror})") from None
    if head[4:8] in _ISO_BOXES or head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return
    raise InputError(f"{what} {Path(path).name} is not a video container (mp4/mov, mkv/webm or avi)",
                     "the file may be an image or other data with a video suffix")
