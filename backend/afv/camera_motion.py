"""The camera's own motion, estimated from the background (everything outside the object mask).

Placeholder header; see estimate_camera_motion below.
"""

from __future__ import annotations

import cv2
import numpy as np


def background_homography(flow: np.ndarray, exclude: np.ndarray | None = None, step: int = 8, thresh: float = 1.0,
                          min_points: int = 24) -> np.ndarray | None:
    """flow: (h, w, 2) float32 from frame a to frame b (OpenCV DIS, pixel-centre indexing);
    exclude: (h, w) bool pixels not to use (the object and its surroundings).
    -> (3, 3) float64 homography H with x_b ~ H x_a (array index coordinates) fitted by RANSAC
    (`thresh` px) to the flow sampled every `step` pixels outside `exclude`; None when fewer than
    `min_points` samples are left or no model is found."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    ok = np.ones(xs.shape, bool) if exclude is None else ~exclude[ys, xs]
    if int(ok.sum()) < min_points:
        return None
    src = np.stack([xs[ok], ys[ok]], 1).astype(np.float32)
    dst = src + flow[ys[ok], xs[ok]]
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, thresh)
    return H
