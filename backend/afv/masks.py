"""Object masks for a clip: given (alpha, mask folder, mask video) or computed.

Mask source strings (CLI `--masks`, server field `masks`):
  auto     alpha channel if the clip has a real one (some transparent pixels); else chroma key if
           the frame border is a near-uniform backdrop; else temporal-median background
           subtraction if the camera looks static and the object moves; else saliency when
           its network is installed; else none
  none     no masks
  alpha    the clip's alpha channel (error if it has none)
  chroma   chroma key against a uniform backdrop whose colour is estimated from the frame border
  median   background subtraction against the per-pixel temporal median (static camera)
  saliency the main moving object from a salient-object network (afv.saliency), kept consistent
           over time along optical flow (afv.segment); works with a moving camera and clutter
  PATH     a folder of mask images or a mask video, one mask per source frame
Result: (T, H, W) bool at the clip's working resolution, True = object.

`resolve_masks` returns a MaskResult (masks, the method used, empty frames, notes);
`compute_masks` is the array-only shortcut. Every step is a pure function over arrays.
See docs/masks.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .progress import Progress
from .saliency import load_saliency_model
from .segment import SegmentOptions, segment_main_object
from .video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, FrameRange, VideoClip, list_images, load_video, read_image

KEYWORDS = ("auto", "none", "alpha", "chroma", "median", "saliency")


@dataclass(frozen=True)
class MaskSource:
    """Where masks come from, decided once per request: a keyword of KEYWORDS, or a path."""

    keyword: str | None = "auto"  # one of KEYWORDS; None when `path` is set
    path: Path | None = None  # a folder of mask images or a mask video

    @staticmethod
    def parse(text: str | None) -> "MaskSource":
        """'' / None -> auto; a keyword -> that keyword; anything else is a path (checked when probed)."""
        t = (text or "auto").strip()
        if t in KEYWORDS:
            return MaskSource(t, None)
        if "\x00" in t:
            raise InputError("mask source contains NUL")
        return MaskSource(None, Path(t))

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else str(self.keyword)


@dataclass
class MaskResult:
    masks: np.ndarray | None  # (T, H, W) bool, True = object; None = work without masks
    method: str  # "alpha" | "chroma" | "median" | "saliency" | "folder" | "video" | "none"
    empty_frames: list[int] = field(default_factory=list)  # clip positions (0..T-1) with an empty mask
    notes: list[str] = field(default_factory=list)  # why `auto` chose what it chose, warnings

    def to_meta(self) -> dict:
        return {"method": self.method, "empty_frames": list(self.empty_frames), "notes": list(self.notes)}


# ----------------------------------------------------------------------------- small helpers


def masks_from_alpha(alpha: np.ndarray, threshold: int = 127) -> np.ndarray:
    """alpha: (T, H, W) uint8 -> (T, H, W) bool."""
    return alpha > threshold


def empty_frames(masks: np.ndarray, min_pixels: int = 1) -> list[int]:
    """masks: (T, H, W) bool -> positions t whose mask has fewer than `min_pixels` True pixels."""
    counts = masks.reshape(len(masks), -1).sum(1)
    return [int(t) for t in np.flatnonzero(counts < min_pixels)]


def rgb_to_lab(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 CIE Lab (L in 0..100, a/b about -128..127)."""
    return cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def border_pixels(img: np.ndarray, width: int) -> np.ndarray:
    """(H, W, ...) -> (B, ...) the pixels of a band `width` wide along the image border."""
    H, W = img.shape[:2]
    w = max(1, min(width, H // 2, W // 2))
    return np.concatenate(
        [img[:w].reshape(-1, *img.shape[2:]), img[-w:].reshape(-1, *img.shape[2:]),
         img[w:-w, :w].reshape(-1, *img.shape[2:]), img[w:-w, -w:].reshape(-1, *img.shape[2:])]
    )


def _border_width(H: int, W: int, frac: float) -> int:
    return max(1, int(round(frac * min(H, W))))


def _lab_distance(lab: np.ndarray, ref: np.ndarray, l_weight: float) -> np.ndarray:
    """lab (..., 3), ref broadcastable -> (...) float32 weighted Euclidean distance (Delta E 76)."""
    d = lab - ref
    d[..., 0] *= l_weight
    return np.sqrt((d * d).sum(-1)).astype(np.float32)


# Distances are stored as uint8 at 0.5 Delta E per step: compact for long clips and what
# OpenCV's Otsu needs. Everything above 127.5 Delta E is "certainly different" anyway.
_Q = 2.0


def _quantise(d: np.ndarray) -> np.ndarray:
    return np.clip(d * _Q + 0.5, 0, 255).astype(np.uint8)


def robust_threshold(dist_q: np.ndarray, noise_q: np.ndarray, min_delta: float = 6.0, k: float = 6.0, use_otsu: bool = False) -> float:
    """Foreground threshold on quantised distances (uint8, 0.5 Delta E per step), in Delta E.

    dist_q: (...) uint8 distances of all pixels considered (pooled over frames);
    noise_q: (M,) uint8 distances of pixels that are mostly background (border / everything).
    The threshold is the larger of Otsu's split and a noise floor (median + k * 1.4826 MAD of
    `noise_q`, at least `min_delta`) so a clip without any object is not split inside the noise.
    """
    n = noise_q.astype(np.float32) / _Q
    med = float(np.median(n))
    mad = float(np.median(np.abs(n - med))) * 1.4826
    floor = max(min_delta, med + k * max(mad, 0.5))
    if not use_otsu:
        return floor
    flat = np.ascontiguousarray(dist_q.reshape(1, -1))
    otsu, _ = cv2.threshold(flat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return max(floor, float(otsu) / _Q)


def _kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def fill_holes(mask: np.ndarray, max_area: int | None = None) -> np.ndarray:
    """mask: (H, W) bool -> (H, W) bool with enclosed background regions filled.

    Holes are components of ~mask that do not touch the image border; only those with at
    most `max_area` pixels are filled (None = all), so a real opening (a ring) can stay open.
    """
    inv = (~mask).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    if n <= 1:
        return mask.copy()
    H, W = mask.shape
    x, y, w, h, area = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3], stats[:, 4]
    touches = (x == 0) | (y == 0) | (x + w == W) | (y + h == H)
    fill = ~touches
    fill[0] = False  # label 0 is the mask itself
    if max_area is not None:
        fill &= area <= max_area
    return mask | fill[lab]


def clean_mask(mask: np.ndarray, radius: int = 1, min_area: int = 0, max_hole: int | None = None) -> np.ndarray:
    """mask: (H, W) bool -> (H, W) bool: opening (speckle), closing (cracks), small components
    (< min_area pixels) removed, holes up to `max_hole` pixels filled (None = all, 0 = none)."""
    m = mask.astype(np.uint8)
    if radius > 0:
        k = _kernel(radius)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k)
    if min_area > 0:
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        m = keep[lab].astype(np.uint8)
    out = m.astype(bool)
    if max_hole != 0:
        out = fill_holes(out, max_hole)
    return out


def _cleanup_params(H: int, W: int, radius_frac: float, min_area_frac: float) -> tuple[int, int]:
    return max(1, int(round(radius_frac * max(H, W)))), max(1, int(round(min_area_frac * H * W)))


# ----------------------------------------------------------------------------- temporal consistency


def keep_consistent_components(
    masks: np.ndarray,
    min_area_frac: float = 0.001,
    keep_ratio: float = 0.25,
    overlap_radius_frac: float = 0.03,
    max_hole_frac: float | None = 0.25,
) -> np.ndarray:
    """masks: (T, H, W) bool -> (T, H, W) bool keeping only components consistent over time.

    Per frame, a connected component is kept when it has at least `min_area_frac` of the
    image and either overlaps the previous frame's kept mask (dilated by
    `overlap_radius_frac` of the image size, for motion) or is at least `keep_ratio` of the
    largest component (a major part, e.g. one of several separate parts or the object
    after an empty frame). Small blobs away from the object are dropped. Holes up to
    `max_hole_frac` of the kept area are filled (None = all). Empty frames stay empty.
    """
    T, H, W = masks.shape
    min_area = max(1, int(round(min_area_frac * H * W)))
    r = max(1, int(round(overlap_radius_frac * max(H, W))))
    k = _kernel(r)
    out = np.zeros_like(masks, dtype=bool)
    prev = None
    for t in range(T):
        n, lab, stats, _ = cv2.connectedComponentsWithStats(masks[t].astype(np.uint8), connectivity=8)
        if n <= 1:
            prev = None
            continue
        area = stats[1:, cv2.CC_STAT_AREA]
        keep = (area >= min_area) & (area >= keep_ratio * area.max())
        if prev is not None:
            touched = np.unique(lab[prev])
            touched = touched[touched > 0] - 1
            near = np.zeros(n - 1, bool)
            near[touched] = True
            keep |= near & (area >= min_area)
        sel = np.concatenate([[False], keep])[lab]
        if sel.any():
            max_hole = None if max_hole_frac is None else int(max_hole_frac * sel.sum())
            sel = fill_holes(sel, max_hole)
        out[t] = sel
        prev = cv2.dilate(sel.astype(np.uint8), k).astype(bool) if sel.any() else None
    return out


# ----------------------------------------------------------------------------- chroma key


def _band_lab(frame: np.ndarray, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (B, 3) float32 Lab of the border band's pixels (converting only the
    band: the same numbers as converting the whole frame, a fraction of the work)."""
    return rgb_to_lab(border_pixels(frame, width)[:, None])[:, 0]


def border_uniformity(frames: np.ndarray, border_frac: float = 0.04, delta: float = 12.0, max_frames: int = 16) -> float:
    """frames: (T, H, W, 3) uint8 RGB -> fraction in [0, 1] of border pixels within `delta`
    (Lab Delta E) of their frame's median border colour; near 1 for a uniform backdrop."""
    T, H, W = frames.shape[:3]
    bw = _border_width(H, W, border_frac)
    fr = []
    for t in _sample(T, max_frames):
        b = _band_lab(frames[t], bw)
        fr.append(float((_lab_distance(b, np.median(b, 0), 1.0) <= delta).mean()))
    return float(np.median(fr))


def chroma_key(
    frames: np.ndarray,
    border_frac: float = 0.04,
    l_weight: float = 0.5,
    min_delta: float = 6.0,
    threshold: float | None = None,
    radius_frac: float = 0.008,
    min_area_frac: float = 0.0005,
    max_hole_frac: float | None = 0.002,
) -> tuple[np.ndarray, float]:
    """frames: (T, H, W, 3) uint8 RGB on a uniform backdrop -> ((T, H, W) bool, threshold in Delta E).

    The backdrop colour is the per-frame median Lab colour of a border band (`border_frac` of the
    short side), so slow lighting drift is followed. Distance is Delta E with the lightness
    difference scaled by `l_weight` (shadows and shading on the backdrop change L most). The
    threshold (unless given) is `robust_threshold` over all frames with the border as noise
    sample. Cleanup: opening/closing, components below `min_area_frac` dropped, holes up to
    `max_hole_frac` of the image filled (object pixels close to the backdrop colour).
    """
    T, H, W = frames.shape[:3]
    bw = _border_width(H, W, border_frac)
    dist = np.empty((T, H, W), np.uint8)
    noise = []
    for t in range(T):
        lab = rgb_to_lab(frames[t])
        ref = np.median(border_pixels(lab, bw), 0)
        dist[t] = _quantise(_lab_distance(lab, ref, l_weight))
        noise.append(border_pixels(dist[t], bw))
    thr = threshold if threshold is not None else robust_threshold(dist[_sample(T, 32)], np.concatenate(noise), min_delta)
    radius, min_area = _cleanup_params(H, W, radius_frac, min_area_frac)
    max_hole = None if max_hole_frac is None else int(max_hole_frac * H * W)
    raw = dist > thr * _Q
    return np.stack([clean_mask(m, radius, min_area, max_hole) for m in raw]), float(thr)


# ----------------------------------------------------------------------------- temporal median


def _sample(T: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, T - 1, min(T, k)).round().astype(int))


def median_background(frames: np.ndarray, max_frames: int = 48, rows_per_chunk: int = 64) -> np.ndarray:
    """frames: (T, H, W, 3) uint8 RGB -> (H, W, 3) uint8 per-pixel temporal median over at most
    `max_frames` evenly spaced frames (row chunks keep memory bounded on long clips)."""
    sel = frames[_sample(len(frames), max_frames)]
    H = sel.shape[1]
    bg = np.empty(sel.shape[1:], np.uint8)
    for r in range(0, H, rows_per_chunk):
        bg[r : r + rows_per_chunk] = np.median(sel[:, r : r + rows_per_chunk], axis=0).round().astype(np.uint8)
    return bg


def background_distance(frames: np.ndarray, background: np.ndarray, l_weight: float = 1.0, blur: int = 0) -> np.ndarray:
    """frames (T, H, W, 3), background (H, W, 3) uint8 RGB -> (T, H, W) uint8 quantised Lab
    distance (0.5 Delta E per step). An optional Gaussian blur (`blur` px) damps heavy sensor
    noise, at the price of masks grown by about `blur` pixels."""
    def prep(img):
        return rgb_to_lab(cv2.GaussianBlur(img, (2 * blur + 1, 2 * blur + 1), 0) if blur else img)

    bg = prep(background)
    return np.stack([_quantise(_lab_distance(prep(f), bg, l_weight)) for f in frames])


def camera_static_score(frames: np.ndarray, background: np.ndarray | None = None, border_frac: float = 0.1, q: float = 0.9) -> float:
    """frames: (T, H, W, 3) uint8 -> median over frames of the `q` quantile of the border-band
    distance (Delta E) to the temporal median background. About the noise level (a few Delta E)
    for a static camera, since an object covers little of the border; large when the camera
    moves, since the median of a moving view matches no frame (slow pans over 16 frames of
    DAVIS clips score 11-25, a static synthetic scene with sensor noise 4.5).
    Only the border band is looked at: without `background` its median is taken over the band
    alone (what `median_background` gives there, at a third of the work on 854 x 480 footage)."""
    T, H, W = frames.shape[:3]
    bw = _border_width(H, W, border_frac)
    if background is None:
        band = np.stack([border_pixels(frames[t], bw) for t in _sample(T, 48)])  # (S, B, 3), as median_background samples
        bg = np.median(band, axis=0).round().astype(np.uint8)
    else:
        bg = border_pixels(background, bw)
    bg_lab = rgb_to_lab(bg[:, None])[:, 0]
    d = [_quantise(_lab_distance(_band_lab(frames[t], bw), bg_lab, 1.0)) for t in _sample(T, 16)]
    return float(np.median([np.quantile(x, q) for x in d]) / _Q)


def median_subtraction(
    frames: np.ndarray,
    background: np.ndarray | None = None,
    l_weight: float = 1.0,
    min_delta: float = 8.0,
    threshold: float | None = None,
    radius_frac: float = 0.008,
    min_area_frac: float = 0.0005,
    max_hole_frac: float | None = 0.002,
) -> tuple[np.ndarray, float]:
    """frames: (T, H, W, 3) uint8 RGB from a static camera -> ((T, H, W) bool, threshold Delta E).

    Background = per-pixel temporal median (valid where the object covers a pixel in fewer
    than half of the frames, i.e. it moves by more than its own size over the clip). Pixels
    whose Lab distance to it exceeds `robust_threshold` (all pixels as noise sample: most are
    background) are foreground; then the same cleanup as `chroma_key`.
    """
    T, H, W = frames.shape[:3]
    if background is None:
        background = median_background(frames)
    dist = background_distance(frames, background, l_weight)
    idx = _sample(T, 32)
    noise = dist[idx].reshape(-1)[:: max(1, len(idx) * H * W // 200_000)]
    thr = threshold if threshold is not None else robust_threshold(dist[idx], noise, min_delta)
    radius, min_area = _cleanup_params(H, W, radius_frac, min_area_frac)
    max_hole = None if max_hole_frac is None else int(max_hole_frac * H * W)
    raw = dist > thr * _Q
    return np.stack([clean_mask(m, radius, min_area, max_hole) for m in raw]), float(thr)


# ----------------------------------------------------------------------------- given masks


def _to_binary(images: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Decoded mask images (any of: gray, BGR, BGRA; uint8/uint16/float) -> (H, W) bool each.

    A 4-channel image whose alpha varies uses the alpha; otherwise the brightest channel.
    The scale is decided over all masks together: values all in {0..1} mean 0/1 masks,
    otherwise half of the dtype's full range (uint8 127.5, uint16 32767.5, float 0.5)."""
    planes = []
    for img, name in zip(images, names):
        if img.ndim == 3 and img.shape[2] == 4 and img[..., 3].min() != img[..., 3].max():
            p = img[..., 3]
        elif img.ndim == 3:
            p = img[..., :3].max(axis=2)
        elif img.ndim == 2:
            p = img
        else:
            raise InputError(f"mask {name} has an unsupported shape {img.shape}")
        planes.append(p)
    gmax = max(float(p.max()) for p in planes)
    if planes[0].dtype.kind == "f" or gmax <= 1.0:
        half = 0.5
    else:
        half = (np.iinfo(planes[0].dtype).max if planes[0].dtype.kind in "ui" else 255) / 2.0
    return [p > half for p in planes]


def _fit_to(mask: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    """(h, w) bool -> (H, W) bool at size (W, H), nearest neighbour; aspect ratio must agree."""
    h, w = mask.shape
    W, H = size
    if (w, h) == (W, H):
        return mask
    if abs(w / h - W / H) > 0.02 * (W / H):
        raise InputError(
            f"mask {name} is {w}x{h}, its aspect ratio differs from the video's {W}x{H}",
            "masks must be for the same (possibly scaled) frames as the video",
        )
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def load_mask_folder(path: Path, clip: VideoClip, n_source_frames: int | None = None) -> np.ndarray:
    """Folder of mask images (natural sort order = source frame order) -> (T, H, W) bool for
    exactly the clip's selected frames. n_source_frames (when known) must equal the image count."""
    files = list_images(path)
    if not files:
        raise InputError(f"mask folder {path} holds no images", f"expected one mask image ({', '.join(sorted(IMAGE_SUFFIXES))}) per video frame")
    need = int(clip.frame_indices.max()) + 1
    if n_source_frames is not None and len(files) != n_source_frames:
        raise InputError(
            f"mask folder {path} has {len(files)} images but the video has {n_source_frames} frames",
            "give one mask per video frame, in the same order",
        )
    if len(files) < need:
        raise InputError(
            f"mask folder {path} has {len(files)} images but frame {need - 1} of the video is selected",
            "give one mask per video frame, in the same order",
        )
    imgs, names = [], []
    for i in clip.frame_indices:
        m = read_image(files[i])
        imgs.append(m)
        names.append(files[i].name)
    dtypes = {m.dtype for m in imgs}
    if len(dtypes) > 1:
        raise InputError(f"mask images in {path} mix bit depths {sorted(str(d) for d in dtypes)}")
    return np.stack([_fit_to(b, clip.size, n) for b, n in zip(_to_binary(imgs, names), names)])


def load_mask_video(path: Path, clip: VideoClip) -> np.ndarray:
    """Mask video (white = object) -> (T, H, W) bool for exactly the clip's selected frames."""
    if clip.n_frames > 1:
        steps = np.diff(clip.frame_indices)
        step = int(steps[0]) if (steps == steps[0]).all() else 1
    else:
        step = 1
    rng = FrameRange(int(clip.frame_indices[0]), int(clip.frame_indices[-1]) + 1, step)
    try:
        mclip = load_video(path, rng, max_size=None)
    except InputError as e:
        raise InputError(f"mask video {path.name}: {e.message}", e.hint or "the mask video must have one frame per video frame") from None
    pos = {int(i): k for k, i in enumerate(mclip.frame_indices)}
    missing = [int(i) for i in clip.frame_indices if int(i) not in pos]
    if missing:
        raise InputError(
            f"mask video {path.name} lacks frames {missing[:5]}{'...' if len(missing) > 5 else ''} of the selection",
            "the mask video must have one frame per video frame",
        )
    frames = mclip.frames[[pos[int(i)] for i in clip.frame_indices]]
    bins = _to_binary(list(frames), [f"{path.name}#{i}" for i in clip.frame_indices])
    return np.stack([_fit_to(b, clip.size, f"{path.name} frame {i}") for b, i in zip(bins, clip.frame_indices)])


def load_mask_source(path: Path, clip: VideoClip, n_source_frames: int | None = None) -> np.ndarray:
    """Read masks for exactly the clip's selected frames from a folder or a mask video."""
    if path.is_dir():
        return load_mask_folder(path, clip, n_source_frames)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        raise InputError(f"mask source {path.name} is a single image", "give a folder with one mask image per frame, or a mask video")
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"mask source {path.name} has an unsupported type '{path.suffix}'", f"use a folder of images or a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return load_mask_video(path, clip)


# ----------------------------------------------------------------------------- resolution


def _has_real_alpha(clip: VideoClip) -> bool:
    return clip.alpha is not None and bool((clip.alpha <= 127).any())


def _computed(method: str, masks: np.ndarray, thr: float, notes: list[str], consistency: bool) -> MaskResult:
    if consistency:
        masks = keep_consistent_components(masks)
    notes = notes + [f"{method} threshold {thr:.1f} Delta E"]
    return MaskResult(masks, method, empty_frames(masks), notes)


def resolve_masks(
    source: MaskSource | str | None,
    clip: VideoClip,
    n_source_frames: int | None = None,
    consistency: bool = True,
    uniform_min: float = 0.85,
    static_max: float = 8.0,
    min_coverage: float = 0.002,
    model_fallback: bool = True,
    progress: Progress | None = None,
    segment_options: SegmentOptions | None = None,
) -> MaskResult:
    """Resolve a mask source string against a clip -> MaskResult (masks None = no masks).

    n_source_frames: the video's exact frame count when known (image folders), checked
    against a mask folder's image count. consistency: run `keep_consistent_components` on
    computed (chroma / median) masks. `auto` thresholds: border uniformity >= uniform_min ->
    chroma; camera_static_score <= static_max Delta E -> median; a computed result covering
    less than `min_coverage` of the pixels in most frames is rejected (object absent or not
    moving) in favour of none. model_fallback: `auto` runs the saliency network when the fast
    paths cannot apply (off: none instead). progress: fractions within the masks stage.
    segment_options: settings of the saliency tracker (afv.segment), e.g. model_every.
    """
    src = source if isinstance(source, MaskSource) else MaskSource.parse(source)
    source = src.keyword
    if source == "none":
        return MaskResult(None, "none")
    if source == "alpha":
        if clip.alpha is None:
            raise InputError("masks=alpha but the video has no alpha channel", "use PNG frames with alpha, or another mask source")
        m = masks_from_alpha(clip.alpha)
        notes = [] if _has_real_alpha(clip) else ["the alpha channel is fully opaque everywhere"]
        return MaskResult(m, "alpha", empty_frames(m), notes)
    if source == "chroma":
        m, thr = chroma_key(clip.frames)
        return _computed("chroma", m, thr, [], consistency)
    if source == "median":
        if clip.n_frames < 3:
            raise InputError(f"masks=median needs at least 3 frames, got {clip.n_frames}", "select more frames or use another mask source")
        m, thr = median_subtraction(clip.frames)
        return _computed("median", m, thr, [], consistency)
    if source == "saliency":
        return saliency_masks(clip.frames, [], progress, segment_options)
    if source == "auto":
        return _auto(clip, consistency, uniform_min, static_max, min_coverage, model_fallback, progress, segment_options)
    path = src.path
    if not path.exists():
        raise InputError(f"mask source '{path}' is neither a keyword {KEYWORDS} nor an existing path", "check the path or use auto")
    m = load_mask_source(path, clip, n_source_frames)
    return MaskResult(m, "folder" if path.is_dir() else "video", empty_frames(m))


def saliency_masks(frames: np.ndarray, notes: list[str], progress: Progress | None = None,
                   options: SegmentOptions | None = None) -> MaskResult:
    """frames (T, H, W, 3) uint8 -> MaskResult of the main moving object (afv.segment);
    InputError when no network is installed."""
    # single-threaded inferences, one per core at once: less waiting than one spread over all cores
    res = segment_main_object(frames, load_saliency_model(threads=1), options, progress=progress)
    return MaskResult(res.masks, "saliency", empty_frames(res.masks), notes + res.notes)


def _auto(clip: VideoClip, consistency: bool, uniform_min: float, static_max: float, min_coverage: float,
          model_fallback: bool = True, progress: Progress | None = None,
          segment_options: SegmentOptions | None = None) -> MaskResult:
    notes: list[str] = []
    if _has_real_alpha(clip):
        m = masks_from_alpha(clip.alpha)
        return MaskResult(m, "alpha", empty_frames(m), ["auto: the clip has an alpha channel"])
    if clip.alpha is not None:
        notes.append("auto: alpha channel ignored (fully opaque)")
    T, H, W = clip.frames.shape[:3]

    def covered(m: np.ndarray) -> bool:
        frac = m.reshape(T, -1).mean(1)
        return bool(np.median(frac) >= min_coverage)

    u = border_uniformity(clip.frames)
    if u >= uniform_min:
        m, thr = chroma_key(clip.frames)
        if covered(m):
            return _computed("chroma", m, thr, notes + [f"auto: border uniform ({u:.2f} >= {uniform_min})"], consistency)
        notes.append(f"auto: border uniform ({u:.2f}) but the chroma key found no object")
    else:
        notes.append(f"auto: border not uniform ({u:.2f} < {uniform_min})")
    if T >= 3:
        s = camera_static_score(clip.frames)  # the border band only: the whole background only when static
        if s <= static_max:
            m, thr = median_subtraction(clip.frames, median_background(clip.frames))
            if covered(m):
                return _computed("median", m, thr, notes + [f"auto: camera static (border change {s:.1f} <= {static_max} Delta E)"], consistency)
            notes.append(f"auto: camera static ({s:.1f} Delta E) but nothing moves against the median background")
        else:
            notes.append(f"auto: camera moves (border change {s:.1f} > {static_max} Delta E)")
    else:
        notes.append("auto: too few frames for background subtraction")
    if model_fallback:
        try:
            res = saliency_masks(clip.frames, notes + ["auto: salient-object network"], progress, segment_options)
        except InputError as exc:  # no network installed: work without masks, and say why
            notes.append(f"auto: {exc.message}")
        else:
            if covered(res.masks):
                return res
            notes = res.notes + ["auto: the salient-object network found no object"]
    return MaskResult(None, "none", [], notes + ["auto: no masks"])


# ----------------------------------------------------------------------------- writing


def frame_names(video: Path, clip: VideoClip) -> list[str]:
    """File stems of the clip's frames: the images' own stems for an image folder, else the
    zero-padded source frame index (00000, 00001, ...)."""
    if video.is_dir():
        files = list_images(video)
        return [files[int(i)].stem for i in clip.frame_indices]
    return [f"{int(i):05d}" for i in clip.frame_indices]


def write_mask_folder(masks: np.ndarray, names: list[str], out_dir: str | Path, size: tuple[int, int] | None = None,
                      overwrite: bool = False) -> Path:
    """masks (T, H, W) bool -> one 0/255 PNG per frame, `names[t]`.png, resized (nearest) to `size`
    (W, H) when given. Atomic: written into a temporary folder beside `out_dir`, then renamed onto it;
    an existing `out_dir` is replaced only with overwrite=True (never half-written)."""
    import shutil
    import tempfile

    out = Path(out_dir)
    if len(names) != len(masks) or len(set(names)) != len(names):
        raise ValueError("one unique name per mask is needed")
    if out.exists() and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise InputError(f"{out} already exists", "choose a new folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for m, name in zip(masks, names):
            img = m.astype(np.uint8) * 255
            if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
                img = cv2.resize(img, tuple(size), interpolation=cv2.INTER_NEAREST)
            if not cv2.imwrite(str(tmp / f"{name}.png"), img):
                raise InputError(f"could not write {tmp / name}.png", "check the disk space and permissions")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def compute_masks(source: MaskSource | str | None, clip: VideoClip) -> np.ndarray | None:
    """Resolve a mask source string against a clip; None means the engine works without masks."""
    return resolve_masks(source, clip).masks


__all__ = [
    "KEYWORDS", "MaskSource", "MaskResult", "resolve_masks", "compute_masks", "saliency_masks", "write_mask_folder",
    "frame_names", "masks_from_alpha", "empty_frames",
    "chroma_key", "median_subtraction", "median_background", "keep_consistent_components", "clean_mask", "fill_holes",
    "border_uniformity", "camera_static_score", "load_mask_source", "load_mask_folder", "load_mask_video",
]
