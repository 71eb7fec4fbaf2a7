"""Silhouettes of a mesh seen by a camera, and their agreement with masks (IoU).

One resolution policy for comparing a mesh with a mask: both at most `IOU_LONG_SIDE` pixels
on the long side (area-downscaled mask, scaled intrinsics). The IoU is a coarse agreement
check; at that size it costs a few milliseconds and differs from the full-resolution value by
well under the thresholds it is compared with.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .projection import transform_points
from .raster import rasterize

IOU_LONG_SIDE = 192


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Intersection over union of bool masks a, b: (..., H, W) -> (...) (a float for single
    masks); 1 where both are empty (they agree)."""
    inter = np.logical_and(a, b).sum((-2, -1))
    union = np.logical_or(a, b).sum((-2, -1))
    out = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(out) if out.ndim == 0 else out


def silhouette(verts_cam: torch.Tensor, faces: torch.Tensor, K: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """verts_cam: (N, 3) camera coordinates; faces: (F, 3); K: (3, 3); size: (W, H) ->
    (H, W) bool coverage."""
    return rasterize(verts_cam, faces, torch.as_tensor(K, dtype=torch.float32), size).mask.cpu().numpy()


def downscale_mask(mask: np.ndarray, K: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """mask: (H, W) bool, K: (3, 3) -> the mask area-downscaled to at most long_side pixels
    (any covered sub-pixel counts) and K for that size. Unchanged when already small enough."""
    H, W = mask.shape
    s = min(1.0, long_side / max(H, W))
    if s >= 1.0:
        return mask, K
    w, h = max(1, round(W * s)), max(1, round(H * s))
    small = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
    return small, np.diag([w / W, h / H, 1.0]) @ K


def camera_mask_iou(
    vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, pose: np.ndarray, mask: np.ndarray,
    device: torch.device | str = "cpu", long_side: int = IOU_LONG_SIDE,
) -> float:
    """IoU of the mesh's silhouette with a mask, compared at the module's resolution policy.

    vertices: (N, 3) mesh coordinates; faces: (F, 3); K: (3, 3) for the mask's size;
    pose: (4, 4) mesh-to-camera; mask: (H, W) bool.
    """
    small, Ks = downscale_mask(mask, K, long_side)
    vc = torch.as_tensor(transform_points(vertices, pose), dtype=torch.float32, device=device)
    f = torch.as_tensor(faces, dtype=torch.long, device=device)
    return mask_iou(silhouette(vc, f, Ks, small.shape[::-1]), small)
