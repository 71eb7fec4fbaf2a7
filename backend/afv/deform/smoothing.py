"""Landmark track cleaning: outlier rejection + confidence-weighted Gaussian smoothing (App. D.1).

Displacements from the anchor pose are smoothed (not positions), so a stationary landmark
stays exactly at zero; the anchor frame is pinned to zero displacement.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..errors import InputError


def smooth_landmark_tracks(disp: np.ndarray, conf: np.ndarray | None, sigma: float = 1.5, anchor: int = 0, outlier_factor: float = 5.0, abs_max: float | None = None, min_threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Reject outliers, then smooth each landmark's displacement track over time.

    disp: (T, K, 3) displacements from the anchor pose; conf: (T, K) in [0, 1] or None (all 1).
    An observation is an outlier (confidence -> 0) if its magnitude exceeds
    max(outlier_factor x median magnitude of that frame's confident landmarks, min_threshold),
    or exceeds abs_max. Smoothing: sum_j G(f-j) c_j d_j / (sum_j G(f-j) c_j + eps), Gaussian
    std `sigma` frames (sigma <= 0: no smoothing). Frames with no confident observation within
    the kernel's reach are linearly interpolated from supported frames (held at the ends);
    a landmark with no confident frame stays at zero.
    Returns (smoothed (T, K, 3) float32, confidence after rejection (T, K) float32; the anchor
    frame has displacement exactly 0 and confidence 1).
    """
    d = np.asarray(disp, np.float64)
    if d.ndim != 3 or d.shape[2] != 3:
        raise InputError(f"landmark displacements must be (T, K, 3), got {d.shape}")
    T, K, _ = d.shape
    c = np.ones((T, K)) if conf is None else np.asarray(conf, np.float64)
    if c.shape != (T, K):
        raise InputError(f"landmark confidence must be (T, K) = {(T, K)}, got {c.shape}")
    if not 0 <= anchor < T:
        raise InputError(f"anchor frame {anchor} outside [0, {T})")
    finite = np.isfinite(d).all(2) & np.isfinite(c)
    c = np.where(finite, np.clip(c, 0.0, 1.0), 0.0)
    d = np.where(finite[..., None], d, 0.0)
    mag = np.linalg.norm(d, axis=2)
    out_mask = np.zeros((T, K), bool)
    for t in range(T):
        good = c[t] > 0
        if t == anchor or not good.any():
            continue
        thr = max(outlier_factor * float(np.median(mag[t, good])), min_threshold)
        out_mask[t] = mag[t] > thr
    if abs_max is not None:
        out_mask |= mag > abs_max
    c = np.where(out_mask, 0.0, c)
    # The anchor is exact by definition: zero displacement, full confidence.
    d[anchor] = 0.0
    c[anchor] = 1.0
    if sigma > 0:
        num = gaussian_filter1d(d * c[..., None], sigma, axis=0, mode="constant", cval=0.0, truncate=4.0)
        den = gaussian_filter1d(c, sigma, axis=0, mode="constant", cval=0.0, truncate=4.0)
        sm = num / (den[..., None] + 1e-8)
        supported = den > 1e-4
    else:
        sm = d * (c[..., None] > 0)
        supported = c > 0
    frames = np.arange(T)
    for k in np.flatnonzero(~supported.all(0)):
        ok = np.flatnonzero(supported[:, k])
        for j in range(3):
            sm[:, k, j] = np.interp(frames, ok, sm[ok, k, j])
    sm[anchor] = 0.0
    return sm.astype(np.float32), c.astype(np.float32)
