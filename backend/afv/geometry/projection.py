"""Rigid transforms and the pinhole projection (OpenCV convention: x right, y down, z forward).

Both work on numpy arrays and torch tensors alike (the rigid tracker is float64 numpy, the
fit differentiates through float32 torch), with the same arithmetic either way.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def transform_points(points: Array, M: Array) -> Array:
    """Apply rigid/affine 4x4 transforms to points.

    points: (..., P, 3); M: (4, 4), or (..., 4, 4) batched over points' leading dims
    (e.g. points (T, P, 3) with M (T, 4, 4)). Returns (..., P, 3).
    """
    if M.ndim == 2:
        return points @ M[:3, :3].T + M[:3, 3]
    einsum = torch.einsum if isinstance(points, torch.Tensor) else np.einsum
    return einsum("...ab,...pb->...pa", M[..., :3, :3], points) + M[..., None, :3, 3]


def project_points(points_cam: Array, K: Array, min_depth: float = 1e-6) -> Array:
    """Camera coordinates -> pixel coordinates.

    points_cam: (..., 3); K: (3, 3) intrinsics without skew. Returns (..., 2) pixels, pixel
    (0, 0) covering [0, 1)^2. Depth is clamped at `min_depth` so points on or behind the
    camera plane stay finite (callers that care test z themselves).
    """
    z = points_cam[..., 2:3].clip(min=min_depth)
    return points_cam[..., :2] / z * K[[0, 1], [0, 1]] + K[[0, 1], [2, 2]]
