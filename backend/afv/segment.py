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
probability map is carried along the flow from both neighbouring network frames and blended by
distance in time (the network is ~80 % of the cost at k = 2).

Speed (docs/masks.md): the network sees each frame at its own aspect ratio within a pixel budget
(afv.saliency.network_size; 384 x 224 for 854 x 480 footage), one single-threaded inference per
CPU core runs at once (onnxruntime releases the GIL; one inference spread over two threads spends
much of its time waiting between the graph's many small operators), and the optical flow is
computed on the calling thread meanwhile; the forward and backward passes run side by side too.

Measured on DAVIS dog / camel: docs/masks.md.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from .camera_motion import background_homography
from .progress import Progress
from .saliency import SaliencyModel, network_size


@dataclass
class SegmentOptions:
    proc_long_side: int = 427  # tracking resolution (long side, px); 854 x 480 footage -> half size
    model_every: int = 2  # run the network on every k-th frame, carry its output along flow between (docs/masks.md: 2 is as exact as 1 on DAVIS, at half the cost)
    net_pixels: int = 384 * 224  # network input budget (px) at the frame's aspect ratio; 0: the model's export size (320 x 320)
    workers: int = 0  # inferences running at once (0: CPU cores / the model's threads per inference)
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


def moving_gate(flow: np.ndarray, exclude: np.ndarray, grid, lo: float, hi: float,
                at: np.ndarray | None = None) -> np.ndarray:
    """flow (h, w, 2); exclude (h, w) bool (the object's neighbourhood) -> (h, w) float32 in [0, 1]:
    0 where the flow fits the background homography (fitted by RANSAC outside `exclude`), 1 where
    it misses it by more than `hi` pixels, linear between `lo` and `hi`. at: (h, w) bool, the
    pixels to evaluate (default all); elsewhere the gate is 1 (a few percent of the frame usually
    need it; the full-frame arithmetic was a fifth of the tracking time)."""
    h, w = flow.shape[:2]
    H = background_homography(flow, exclude)
    gate = np.ones((h, w), np.float32)
    if H is None:  # too little background to tell: do not gate
        return gate
    gx, gy = (grid[0], grid[1]) if at is None else (grid[0][at], grid[1][at])
    fx, fy = (flow[..., 0], flow[..., 1]) if at is None else (flow[..., 0][at], flow[..., 1][at])
    H = H.astype(np.float32)
    den = H[2, 0] * gx + H[2, 1] * gy + H[2, 2]
    px = (H[0, 0] * gx + H[0, 1] * gy + H[0, 2]) / den
    py = (H[1, 0] * gx + H[1, 1] * gy + H[1, 2]) / den
    g = np.clip((np.hypot(gx + fx - px, gy + fy - py) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if at is None:
        return g.astype(np.float32)
    gate[at] = g
    return gate


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
    r = max(1, int(round(opt.margin * diag)))  # `near`: within r of the carried mask
    r2 = r + max(1, int(round(0.02 * diag)))  # the background fit leaves out pixels within r2
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
            # distance to the carried mask: one linear pass instead of two dilations
            dist = cv2.distanceTransform((~inside).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            near = dist <= r
            f = opt.weight * p + (1.0 - opt.weight) * carried
            # the gate only lowers f: it can matter only where f would pass 0.5 away from the mask
            at = (f > 0.5) & ~near
            if at.any():
                gate = moving_gate(fl, dist <= r2, grid, opt.motion_lo * diag, opt.motion_hi * diag, at)
                f[at] = opt.weight * p[at] * gate[at] + (1.0 - opt.weight) * carried[at]
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


def optical_flows(gray: list[np.ndarray], preset: int) -> tuple[list, list]:
    """gray: T (h, w) uint8 frames -> (back, fwd): back[t] (h, w, 2) float32 flow t -> t-1 (None at
    t = 0), fwd[t] flow t -> t+1 (None at T-1); DIS optical flow."""
    T = len(gray)
    dis = cv2.DISOpticalFlow_create(preset)
    back = [None] + [dis.calc(gray[t], gray[t - 1], None) for t in range(1, T)]
    fwd = [dis.calc(gray[t], gray[t + 1], None) for t in range(T - 1)] + [None]
    return back, fwd


def network_frames(T: int, k: int) -> list[int]:
    """Frames the network runs on: every k-th and the last."""
    return sorted(set(range(0, T, max(1, k))) | {T - 1}) if T > 0 else []


def fill_between(probs: np.ndarray, have: list[int], back: list, fwd: list) -> None:
    """probs (T, h, w) float32, filled in place at the frames not in `have` (sorted, with 0 and T-1):
    the maps of the neighbouring network frames a < t < b, carried along the flow to t and blended
    by distance in time, (b - t) / (b - a) for a's. Carrying from both sides halves the distance a
    map is carried and lets new parts (entering on one side) come in gradually."""
    T, h, w = probs.shape
    grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for a, b in zip(have[:-1], have[1:]):
        if b - a < 2:
            continue
        from_a, from_b = {a: probs[a]}, {b: probs[b]}
        for t in range(a + 1, b):
            from_a[t] = _warp(from_a[t - 1], back[t], grid)  # back[t]: t -> t-1
        for t in range(b - 1, a, -1):
            from_b[t] = _warp(from_b[t + 1], fwd[t], grid)  # fwd[t]: t -> t+1
        for t in range(a + 1, b):
            wa = (b - t) / (b - a)
            probs[t] = wa * from_a[t] + (1.0 - wa) * from_b[t]


def segment_main_object(
    frames: np.ndarray, model: SaliencyModel, options: SegmentOptions | None = None, progress: Progress | None = None
) -> SegmentResult:
    """frames: (T, H, W, 3) uint8 RGB -> SegmentResult with masks (T, H, W) bool of the main object.
    progress: updated (and a cancel honoured) as the network's frames come in.
    timings_s: wall seconds of each stage ("model" overlaps "flow", which runs meanwhile)."""
    opt = options or SegmentOptions()
    T, H, W = frames.shape[:3]
    w, h = _proc_size(W, H, opt.proc_long_side)
    net = network_size(W, H, opt.net_pixels) if (opt.net_pixels and model.resizable) else model.input_size
    k = max(1, int(opt.model_every))
    keys = network_frames(T, k)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, int(opt.workers or cpus // min(cpus, model.threads or cpus)))
    timings = {}
    t0 = time.perf_counter()
    probs = np.zeros((T, h, w), np.float32)
    with ThreadPoolExecutor(workers, thread_name_prefix="afv-saliency") as pool:
        jobs = [pool.submit(model.predict, frames[t], (w, h), net) for t in keys]
        try:
            # meanwhile, on this thread: the tracking-resolution frames and their optical flow
            gray = [cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY) for f in frames]
            back, fwd = optical_flows(gray, opt.flow_preset)
            timings["flow"] = time.perf_counter() - t0
            for i, (t, job) in enumerate(zip(keys, jobs)):
                probs[t] = job.result()
                if progress is not None:
                    progress.update(0.9 * (i + 1) / len(keys))
        except BaseException:  # a cancel (or any error): drop the inferences not started yet
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        timings["model"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        fill_between(probs, keys, back, fwd)
        # the two passes are independent: run them side by side (cv2 and numpy release the GIL)
        fj = pool.submit(_one_pass, probs, back, opt)
        backward = _one_pass(probs[::-1].copy(), fwd[::-1], opt)[::-1]
        forward = fj.result()
        both = np.minimum(forward, backward)  # the intersection (soft): object in both passes

        def full_res(t: int) -> np.ndarray:
            # the mean of the two soft maps was tried and is no better (camel 0.876 vs 0.882)
            return fill_holes(cv2.resize(both[t], (W, H), interpolation=cv2.INTER_LINEAR) > 0.5)

        masks = np.stack(list(pool.map(full_res, range(T)))) if T else np.zeros((0, H, W), bool)
        timings["track"] = time.perf_counter() - t1
    if progress is not None:
        progress.update(1.0)
    notes = [f"saliency: {model.path.name} from {model.source} at {net[0]}x{net[1]}, network on every {k} frame(s), "
             f"tracking at {w}x{h}"]
    return SegmentResult(masks, notes, {k_: round(v, 3) for k_, v in timings.items()})


__all__ = ["SegmentOptions", "SegmentResult", "segment_main_object", "moving_gate", "optical_flows", "network_frames", "fill_between"]
