"""Silhouette energy terms and their robust pieces: pure torch functions, batched over frames.

Every term is measured in pixels, so an engine's weights are comparable and do not depend on
the mesh's units or the video's resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# depth floor of the projections fed to these energies: points pushed behind the camera by a
# bad step keep finite pixels and gradients
MIN_DEPTH = 1e-4


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """r: (...) non-negative residual norms -> (...) Huber cost (quadratic below delta)."""
    return torch.where(r < delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def safe_norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """Euclidean norm with a finite gradient at zero."""
    return torch.sqrt((x * x).sum(dim) + eps)


def sample_image(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup. img: (T, H, W) float; uv: (T, P, 2) pixels (pixel centre at +0.5).

    Returns (T, P); points outside the image read the border value.
    """
    T, H, W = img.shape
    gx = uv[..., 0] / W * 2 - 1  # align_corners=False matches the +0.5 pixel-centre convention
    gy = uv[..., 1] / H * 2 - 1
    grid = torch.stack([gx, gy], -1)[:, :, None]  # (T, P, 1, 2)
    return F.grid_sample(img[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, :, 0]


def inside_energy(uv: torch.Tensor, dist_out: torch.Tensor, frame_w: torch.Tensor, delta: float = 3.0) -> torch.Tensor:
    """Projected surface points must fall inside the mask.

    uv: (T, P, 2) projected points (all of them: the silhouette is the union of visible and
    hidden parts); dist_out: (T, H, W) pixel distance to the mask, 0 inside; frame_w: (T,)
    frame weights (0 for frames with an empty mask). Returns a scalar.
    """
    # the first pixel of slack absorbs rasterisation/antialiasing of the mask boundary
    d = (sample_image(dist_out, uv) - 1.0).clamp_min(0.0)
    return (huber(d, delta).mean(1) * frame_w).sum() / frame_w.sum().clamp_min(1.0)


def coverage_energy(
    targets: torch.Tensor, target_w: torch.Tensor, uv: torch.Tensor, frame_w: torch.Tensor, delta: float = 3.0
) -> torch.Tensor:
    """One-sided chamfer: every mask sample must have a projected point nearby.

    targets: (T, C, 2) pixels sampled on the mask (contour and interior); target_w: (T, C)
    validity; uv: (T, P, 2) projected surface points. Returns a scalar.
    """
    d = torch.cdist(targets, uv).min(-1).values  # (T, C)
    per_frame = (huber(d, delta) * target_w).sum(1) / target_w.sum(1).clamp_min(1.0)
    return (per_frame * frame_w).sum() / frame_w.sum().clamp_min(1.0)
