"""Dense optical flow (OpenCV DIS) and point tracks chained through it.

Point coordinates follow the project's pixel convention (afv.geometry.projection, afv.geometry.raster):
pixel (0, 0) covers [0, 1)^2, so its centre is (0.5, 0.5). OpenCV flow fields are indexed
by pixel centres, hence the -0.5 when sampling them.

A track is advanced frame by frame with the forward flow sampled bilinearly at its current
position, then checked by sampling the backward flow at the new position: if the round
trip misses the start by more than FB_THRESH_PX (occlusion, flow failure) the track dies. It
also dies when it leaves the image or the object mask (grown by MASK_SLACK_PX), and never revives.
The building blocks (make_dis, flow_pair, advance) also serve the rigid engine's anchored tracker
(afv.tracking.rigid), which sets its own preset and threshold.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

# MEDIUM (OpenCV's most accurate preset) at ~30 ms per 512 px pair; FAST is ~5x cheaper
# but drifted ~20% more over a chain of frames (docs/engine_rigid.md, "Flow alone").
DEFAULT_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
FB_THRESH_PX = 1.0  # forward-backward miss (px) beyond which a track dies
MASK_SLACK_PX = 1  # the mask grown by this much, so silhouette points survive sub-pixel noise


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
    fwd: np.ndarray, bwd: np.ndarray, p: np.ndarray, fb_thresh: float, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Move points p (P, 2) through fwd (H, W, 2); check them against bwd (H, W, 2).

    Each point moves half-way back along its forward-backward miss (averages the two flow
    estimates). Returns q (P, 2) float32 and ok (P,) bool: miss <= fb_thresh, inside the
    image, and inside `mask` (H, W) bool when given.
    """
    H, W = fwd.shape[:2]
    q = p + sample(fwd, p)
    miss = q + sample(bwd, q) - p
    ok = np.linalg.norm(miss, axis=1) <= fb_thresh
    q = q - 0.5 * miss
    ok &= (q[:, 0] >= 0) & (q[:, 0] < W) & (q[:, 1] >= 0) & (q[:, 1] < H)
    if mask is not None:
        ok &= _in_mask(mask, q)
    return q.astype(np.float32), ok


def track_points(frames: np.ndarray, points0: np.ndarray, masks: np.ndarray | None = None,
                 stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track points through a clip by chaining DIS flow between consecutive frames.

    frames: (T, H, W, 3) uint8; points0: (P, 2) float32 pixel coords in frame 0;
    masks: (T, H, W) bool or None (object = True). Flow is computed pair by pair (O(H*W) memory).
    Returns xy (T, P, 2) float32 (frozen at the last valid position once dead) and
    valid (T, P) bool (monotone: once False, stays False). stop() is checked before each frame
    pair; once it is true the remaining frames are left invalid.
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
        return None if masks is None else dilated(np.asarray(masks[t]), MASK_SLACK_PX)

    m0 = mask_at(0)
    valid[0] = inside & (_in_mask(m0, p0) if m0 is not None else True)
    dis = make_dis()
    prev = _gray(frames[0])
    for t in range(1, T):
        if stop is not None and stop():  # the caller no longer needs them (a cancelled job)
            break
        alive = valid[t - 1]
        xy[t] = xy[t - 1]
        cur = _gray(frames[t])
        if alive.any():
            fwd, bwd = flow_pair(dis, prev, cur)
            idx = np.nonzero(alive)[0]
            q, ok = advance(fwd, bwd, xy[t - 1, idx], FB_THRESH_PX, mask_at(t))
            xy[t, idx[ok]] = q[ok]
            valid[t, idx[ok]] = True
        prev = cur
    return xy, valid
