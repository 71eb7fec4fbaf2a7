"""Dense optical flow (OpenCV DIS) and point tracks chained through it.

Point coordinates follow the project's pixel convention (afv.geometry.projection, afv.geometry.raster):
pixel (0, 0) covers [0, 1)^2, so its centre is (0.5, 0.5). OpenCV flow fields are indexed
by pixel centres, hence the -0.5 when sampling them.

A track is advanced frame by frame with the forward flow sampled bilinearly at its current
position, then checked by sampling the backward flow at the new position: if the round
trip misses the start by more than `fb_thresh` pixels (occlusion, flow failure) the track
dies. It also dies when it leaves the image or the object mask, and never revives.
"""

from __future__ import annotations

import cv2
import numpy as np

from .progress import Progress

# MEDIUM (OpenCV's most accurate preset) at ~30 ms per 512 px pair; FAST is ~5x cheaper
# but drifts ~20% more over a chain of frames (tests/test_flow.py numbers).
DEFAULT_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def flow_image(frame: np.ndarray, highpass: float = 0.0) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) gray uint8 -> (H, W) uint8 image DIS works on.

    highpass > 0 subtracts a Gaussian blur of that sigma (px), removing slow shading
    changes that do not move with the surface and would bias the flow.
    """
    g = _gray(frame)
    if highpass <= 0:
        return g
    x = g.astype(np.float32)
    return np.clip(128.0 + 2.0 * (x - cv2.GaussianBlur(x, (0, 0), highpass)), 0, 255).astype(np.uint8)


def make_dis(preset: int = DEFAULT_PRESET) -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(preset)


def flow_pair(dis: cv2.DISOpticalFlow, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gray (H, W) uint8 frames a, b -> (a->b, b->a) flows, each (H, W, 2) float32."""
    return dis.calc(a, b, None), dis.calc(b, a, None)


def dense_flow(
    frames: np.ndarray, progress: Progress | None = None, preset: int = DEFAULT_PRESET
) -> tuple[np.ndarray, np.ndarray]:
    """frames: (T, H, W, 3) uint8 RGB (or (T, H, W) gray).

    Returns (fwd, bwd), each (T-1, H, W, 2) float32: fwd[t] maps frame t to t+1 and bwd[t]
    maps frame t+1 back to t, as (dx, dy) in pixels. Memory is 16*T*H*W bytes; for long
    clips let track_points compute the flow on the fly instead.
    """
    frames = np.asarray(frames)
    T, H, W = frames.shape[:3]
    fwd = np.zeros((max(T - 1, 0), H, W, 2), np.float32)
    bwd = np.zeros_like(fwd)
    dis = make_dis(preset)
    prev = _gray(frames[0])
    for t in range(T - 1):
        cur = _gray(frames[t + 1])
        fwd[t], bwd[t] = flow_pair(dis, prev, cur)
        prev = cur
        if progress is not None:
            progress.update((t + 1) / (T - 1))
    return fwd, bwd


def sample(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear lookup. field: (H, W, C) float32; xy: (P, 2) pixel coords -> (P, C) float32.

    Outside the image the border value is repeated (callers kill such tracks anyway).
    """
    if len(xy) == 0:
        return np.zeros((0, field.shape[2]), np.float32)
    mx = (xy[:, 0] - 0.5).astype(np.float32).reshape(-1, 1)
    my = (xy[:, 1] - 0.5).astype(np.float32).reshape(-1, 1)
    out = cv2.remap(np.ascontiguousarray(field, np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(xy), -1)


def _in_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    H, W = mask.shape
    xi = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, W - 1)
    yi = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, H - 1)
    return mask[yi, xi]


def dilated(mask: np.ndarray, px: int) -> np.ndarray:
    """(H, W) bool grown by `px` pixels (slack for sub-pixel noise at the silhouette)."""
    if px <= 0:
        return mask.astype(bool)
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1,) * 2, np.uint8)).astype(bool)


def advance(
    fwd: np.ndarray, bwd: np.ndarray, p: np.ndarray, fb_thresh: float, fb_average: bool = True, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Move points p (P, 2) through fwd (H, W, 2); check them against bwd (H, W, 2).

    Returns q (P, 2) float32 and ok (P,) bool: forward-backward miss <= fb_thresh, inside
    the image, and inside `mask` (H, W) bool when given.
    """
    H, W = fwd.shape[:2]
    q = p + sample(fwd, p)
    miss = q + sample(bwd, q) - p
    ok = np.linalg.norm(miss, axis=1) <= fb_thresh
    if fb_average:
        q = q - 0.5 * miss
    ok &= (q[:, 0] >= 0) & (q[:, 0] < W) & (q[:, 1] >= 0) & (q[:, 1] < H)
    if mask is not None:
        ok &= _in_mask(mask, q)
    return q.astype(np.float32), ok


def track_points(
    frames: np.ndarray,
    points0: np.ndarray,
    masks: np.ndarray | None = None,
    fb_thresh: float = 1.0,
    progress: Progress | None = None,
    flows: tuple[np.ndarray, np.ndarray] | None = None,
    preset: int = DEFAULT_PRESET,
    mask_dilate: int = 1,
    fb_average: bool = True,
    anchor_every: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Track points through a clip by chaining dense flow.

    frames: (T, H, W, 3) uint8; points0: (P, 2) float32 pixel coords in frame 0;
    masks: (T, H, W) bool or None (object = True); flows: precomputed (fwd, bwd) from
    dense_flow, else flow is computed pair by pair (O(H*W) memory).
    mask_dilate: pixels of slack around the mask, so silhouette points are not killed
    by sub-pixel noise. fb_average: move each point half-way back along its forward-backward
    miss (averages the two flow estimates).
    anchor_every: flow is measured from an anchor frame, moved every `anchor_every` frames,
    instead of between consecutive frames: drift then accumulates over T / anchor_every
    chained steps instead of T (matters for long clips with small per-frame motion).
    Returns xy (T, P, 2) float32 (frozen at the last valid position once dead) and
    valid (T, P) bool (monotone: once False, stays False).
    """
    frames = np.asarray(frames)
    T, H, W = frames.shape[:3]
    p0 = np.asarray(points0, np.float32).reshape(-1, 2)
    P = len(p0)
    xy = np.zeros((T, P, 2), np.float32)
    valid = np.zeros((T, P), bool)
    xy[0] = p0
    inside = (p0[:, 0] >= 0) & (p0[:, 0] < W) & (p0[:, 1] >= 0) & (p0[:, 1] < H)

    def mask_at(t: int) -> np.ndarray | None:
        return None if masks is None else dilated(np.asarray(masks[t]), mask_dilate)

    m0 = mask_at(0)
    valid[0] = inside & (_in_mask(m0, p0) if m0 is not None else True)
    if flows is not None and anchor_every != 1:
        raise ValueError("precomputed flows are between consecutive frames: use anchor_every=1")
    dis = make_dis(preset) if flows is None else None
    anchor, anchor_img = 0, (_gray(frames[0]) if flows is None else None)
    init: tuple[np.ndarray, np.ndarray] | None = None
    for t in range(1, T):
        if progress is not None:
            progress.update((t - 1) / max(T - 1, 1))
        alive = valid[t - 1]
        xy[t] = xy[t - 1]
        src = anchor if flows is None else t - 1
        cur = _gray(frames[t]) if flows is None else None
        if alive.any():
            if flows is not None:
                fwd, bwd = flows[0][t - 1], flows[1][t - 1]
            elif init is None:
                fwd, bwd = flow_pair(dis, anchor_img, cur)
            else:
                # start from the anchor's flow to the previous frame: motion grows with t - anchor
                fwd = dis.calc(anchor_img, cur, init[0].copy())
                bwd = dis.calc(cur, anchor_img, init[1].copy())
            init = (fwd, bwd) if flows is None else None
            idx = np.nonzero(alive)[0]
            q, ok = advance(fwd, bwd, xy[src, idx], fb_thresh, fb_average, mask_at(t))
            xy[t, idx[ok]] = q[ok]
            valid[t, idx[ok]] = True
        if flows is None and t - anchor >= anchor_every:
            anchor, anchor_img, init = t, cur, None
    if progress is not None:
        progress.update(1.0)
    return xy, valid
