"""Mask-derived targets for the silhouette energies: distance fields and mask samples."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class SilhouetteTargets:
    dist_out: torch.Tensor  # (T, H, W) float32 pixel distance to the mask (0 inside)
    samples: torch.Tensor  # (T, C, 2) float32 pixels on the mask contour and interior
    sample_w: torch.Tensor  # (T, C) float32 1 for real samples, 0 for padding
    frame_w: torch.Tensor  # (T,) float32 1 where the mask is usable, else 0
    area: np.ndarray  # (T,) mask area in pixels
    touches_border: np.ndarray  # (T,) bool: mask reaches the image border (object cut off)


def distance_outside(mask: np.ndarray) -> np.ndarray:
    """mask: (H, W) bool -> (H, W) float32 Euclidean distance (pixels) to the nearest mask pixel."""
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32)


def mask_samples(mask: np.ndarray, n_contour: int, n_interior: int, rng: np.random.Generator) -> np.ndarray:
    """(C, 2) float32 pixel centres: contour pixels first (they pin the outline), then interior."""
    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    border = np.concatenate([c[:, 0, :] for c in contours], 0) if contours else np.zeros((0, 2), np.int32)
    if len(border) > n_contour:
        border = border[np.sort(rng.choice(len(border), n_contour, replace=False))]
    ys, xs = np.nonzero(mask)
    inner = np.stack([xs, ys], 1)
    if len(inner) > n_interior:
        inner = inner[np.sort(rng.choice(len(inner), n_interior, replace=False))]
    return (np.concatenate([border, inner], 0).astype(np.float32) + 0.5).reshape(-1, 2)


def silhouette_targets(
    masks: np.ndarray, device: torch.device, n_contour: int = 256, n_interior: int = 256, min_area: int = 16, seed: int = 0
) -> SilhouetteTargets:
    """masks: (T, H, W) bool -> targets on `device`. Frames whose mask is smaller than
    `min_area` pixels get weight 0 (no silhouette evidence there)."""
    rng = np.random.default_rng(seed)
    T, H, W = masks.shape
    dist = np.stack([distance_outside(m) for m in masks])
    samples = [mask_samples(m, n_contour, n_interior, rng) for m in masks]
    C = max(1, max(len(s) for s in samples))
    pts = np.zeros((T, C, 2), np.float32)
    sw = np.zeros((T, C), np.float32)
    for t, s in enumerate(samples):
        pts[t, : len(s)] = s
        sw[t, : len(s)] = 1
    area = masks.reshape(T, -1).sum(1)
    touches = masks[:, 0, :].any(1) | masks[:, -1, :].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    return SilhouetteTargets(
        dist_out=torch.as_tensor(dist, device=device),
        samples=torch.as_tensor(pts, device=device),
        sample_w=torch.as_tensor(sw, device=device),
        frame_w=torch.as_tensor((area >= min_area).astype(np.float32), device=device),
        area=area,
        touches_border=touches,
    )
