"""Masks of the main moving object in ordinary footage: per-frame saliency made consistent over time.

A salient-object network (afv.saliency) looks at each frame on its own; alone it flickers, misses
parts for a frame and lights up salient background (a fence, a patch of ground). Here its
probabilities are filtered along optical flow, once forward and once backward in time:

  f_t = w * p_t * g_t + (1 - w) * warp(f_{t-1})          (soft object map of frame t)

p_t: the network's probability; warp(): the previous frame's kept map carried along the flow
t -> t-1; g_t: a gate that lets a pixel far from the carried mask (farther than `margin` of the
image diagonal) join only if it moves unlike the background (the flow's residual against a robust
background homography), so salient static background cannot creep into the object. Pixels with
f_t > 0.5 form components; only those overlapping the carried mask are kept (one object, holes
filled). Frame 0 keeps the component with the most probability mass. A forward and a backward pass
each start from a fresh network guess at their first frame; the result is their intersection, so a
spurious region one pass picked up at its start is removed by the other.

With `model_every` = k > 1 the network runs on every k-th frame (and the last); in between its
probability map is carried along the flow (the network is ~90 % of the cost).

Measured on DAVIS dog / camel: docs/masks.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from .camera_motion import background_homography
from .progress import Progress
from .saliency import SaliencyModel


@dataclass
class SegmentOptions:
    proc_long_side: int = 427  # tracking resolution (long side, px); 854 x 480 footage -> half size
    model_every: int = 1  # run the network on every k-th frame, carry its output along flow between
    weight: float = 0.6  # w above: > 0.5 so a confident network alone can add pixels, the carried map alone cannot keep them
    margin: float = 0.005  # free growth band around the carried mask, fraction of the diagonal (~flow error)
    motion_lo: float = 0.002  # background-homography residual (fraction of the diagonal) below which a pixel is background
    motion_hi: float = 0.006  # ... above which it moves on its own (gate 1)
    min_overlap: float = 0.3  # a component is kept when this fraction of it (or of the carried mask) overlaps the carried mask
    flow_preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST


@dataclass
class SegmentResult:
    masks: np.ndarray  # (T, H, W) bool
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def _proc_size(W: int, H: int, long_side: int) -> tuple[int, int]:
    s = min(1.0, long_side / max(W, H))
    return max(8, int(round(W * s))), max(8, int(round(H * s)))


def _warp(img: np.ndarray, flow: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Backward warp: out(x) = img(x + flow(x)); img (h, w) float32, flow (h, w, 2) from the
    target frame to img's frame. Outside the image: 0."""
    return cv2.remap(img, grid[0] + flow[..., 0], grid[1] + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def moving_gate(flow: np.ndarray, exclude: np.ndarray, grid, lo: float, hi: float) -> np.ndarray:
    """flow (h, w, 2); exclude (h, w) bool (the object's neighbourhood) -> (h, w) float32 in [0, 1]:
    0 where the flow fits the background homography (fitted by RANSAC outside `exclude`), 1 where
    it misses it by more than `hi` pixels, linear between `lo` and `hi`."""
    h, w = flow.shape[:2]
    H = background_homography(flow, exclude)
    if H is None:  # too little background to tell: do not gate
        return np.ones((h, w), np.float32)
    gx, gy = grid
    den = H[2, 0] * gx + H[2, 1] * gy + H[2, 2]
    px = (H[0, 0] * gx + H[0, 1] * gy + H[0, 2]) / den
    py = (H[1, 0] * gx + H[1, 1] * gy + H[1, 2]) / den
    r = np.hypot(gx + flow[..., 0] - px, gy + flow[..., 1] - py)
    return np.clip((r - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask with every enclosed background region filled (flood fill from a
    one-pixel frame around the image: what the fill does not reach is inside the object)."""
    H, W = mask.shape
    pad = np.zeros((H + 2, W + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    cv2.floodFill(pad, np.zeros((H + 4, W + 4), np.uint8), (0, 0), 2)
    return pad[1:-1, 1:-1] != 2


def _components(b: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(b.astype(np.uint8), connectivity=8)
    return n, lab, stats


def _one_pass(probs: np.ndarray, flows: list[np.ndarray | None], opt: SegmentOptions) -> np.ndarray:
    """probs (T, h, w) float32; flows[t] (h, w, 2) from frame t to the pass's previous frame t-1
    (None at t = 0). -> (T, h, w) float32 soft maps, zero outside the kept object."""
    T, h, w = probs.shape
    diag = float(np.hypot(w, h))
    grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    r = max(1, int(round(opt.margin * diag)))
    near_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    r2 = max(1, int(round(0.02 * diag)))
    excl_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r2 + 1, 2 * r2 + 1))
    out = np.zeros((T, h, w), np.float32)
    prev = None
    for t in range(T):
        p = probs[t]
        if prev is None or not (prev > 0.5).any():
            f = p
            n, lab, _ = _components(f > 0.5)
            if n <= 1:
                sel = np.zeros((h, w), bool)
            else:  # the component with the most probability mass is the object
                mass = np.bincount(lab.ravel(), weights=f.ravel(), minlength=n)[1:]
                sel = lab == 1 + int(np.argmax(mass))
        else:
            fl = flows[t]
            carried = _warp(prev, fl, grid)
            inside = carried > 0.5
            near = cv2.dilate(inside.astype(np.uint8), near_k).astype(bool)
            gate = moving_gate(fl, cv2.dilate(near.astype(np.uint8), excl_k).astype(bool), grid,
                               opt.motion_lo * diag, opt.motion_hi * diag)
            gate[near] = 1.0
            f = opt.weight * p * gate + (1.0 - opt.weight) * carried
            n, lab, stats = _components(f > 0.5)
            if n <= 1:
                sel = np.zeros((h, w), bool)
            else:
                overlap = np.bincount(lab.ravel(), weights=inside.ravel(), minlength=n)[1:]
                area = stats[1:, cv2.CC_STAT_AREA]
                keep = overlap >= opt.min_overlap * np.minimum(area, max(int(inside.sum()), 1))
                if not keep.any():  # lost: start again from the network's strongest component
                    mass = np.bincount(lab.ravel(), weights=f.ravel(), minlength=n)[1:]
                    keep = mass == mass.max()
                sel = np.concatenate([[False], keep])[lab]
        sel = fill_holes(sel)
        band = cv2.dilate(sel.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        soft = np.where(band, f, 0.0).astype(np.float32)
        soft[sel & (soft <= 0.5)] = 0.51  # filled holes count as object
        out[t] = soft
        prev = soft
    return out


def segment_main_object(
    frames: np.ndarray, model: SaliencyModel, options: SegmentOptions | None = None, progress: Progress | None = None
) -> SegmentResult:
    """frames: (T, H, W, 3) uint8 RGB -> SegmentResult with masks (T, H, W) bool of the main object.
    progress: updated (and a cancel honoured) once per frame of the network's loop."""
    opt = options or SegmentOptions()
    T, H, W = frames.shape[:3]
    w, h = _proc_size(W, H, opt.proc_long_side)
    timings = {"model": 0.0, "flow": 0.0, "track": 0.0}
    t0 = time.perf_counter()
    gray = [cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(opt.flow_preset)
    back = [None] + [dis.calc(gray[t], gray[t - 1], None) for t in range(1, T)]  # t -> t-1
    fwd = [dis.calc(gray[t], gray[t + 1], None) for t in range(T - 1)] + [None]  # t -> t+1
    timings["flow"] += time.perf_counter() - t0
    grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    k = max(1, int(opt.model_every))
    probs = np.zeros((T, h, w), np.float32)
    for t in range(T):
        if progress is not None:
            progress.update(0.9 * t / T)
        if t % k == 0 or t == T - 1:
            t1 = time.perf_counter()
            probs[t] = model.predict(frames[t], (w, h))
            timings["model"] += time.perf_counter() - t1
        else:
            probs[t] = _warp(probs[t - 1], back[t], grid)
    t2 = time.perf_counter()
    forward = _one_pass(probs, back, opt)
    backward = _one_pass(probs[::-1].copy(), fwd[::-1], opt)[::-1]
    masks = np.zeros((T, H, W), bool)
    for t in range(T):
        # the intersection: the mean of the two soft maps was tried and is no better (camel 0.876 vs 0.882)
        a = cv2.resize(forward[t], (W, H), interpolation=cv2.INTER_LINEAR) > 0.5
        b = cv2.resize(backward[t], (W, H), interpolation=cv2.INTER_LINEAR) > 0.5
        masks[t] = fill_holes(a & b)
    timings["track"] = time.perf_counter() - t2
    if progress is not None:
        progress.update(1.0)
    notes = [f"saliency: {model.path.name} from {model.source}, network on every {k} frame(s), tracking at {w}x{h}"]
    return SegmentResult(masks, notes, {k_: round(v, 3) for k_, v in timings.items()})


__all__ = ["SegmentOptions", "SegmentResult", "segment_main_object", "moving_gate"]
