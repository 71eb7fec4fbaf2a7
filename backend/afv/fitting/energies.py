"""Energy terms of the non-rigid fit: pure torch functions, batched over frames.

Every image-space term is measured in pixels and every 3D term is converted to pixels by
the caller (mesh units x focal / depth), so the weights in FitOptions are comparable and
do not depend on the mesh's units or the video's resolution.
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


def track_energy(uv: torch.Tensor, obs: torch.Tensor, weight: torch.Tensor, delta: float = 2.0) -> torch.Tensor:
    """Robust reprojection of 2D tracks.

    uv: (T, P, 2) projected surface points bound to the tracks; obs: (T, P, 2) tracked
    pixels; weight: (T, P) >= 0 (0 for dead/occluded tracks). Returns a scalar: weighted
    mean Huber cost in pixels^2.
    """
    r = safe_norm(uv - obs)
    return (huber(r, delta) * weight).sum() / weight.sum().clamp_min(1.0)


def sample_image(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup. img: (T, H, W) float; uv: (T, P, 2) pixels (pixel centre at +0.5).

    Returns (T, P); points outside the image read the border value.
    """
    T, H, W = img.shape
    gx = uv[..., 0] / W * 2 - 1  # align_corners=False matches the +0.5 pixel-centre convention
    gy = uv[..., 1] / H * 2 - 1
    grid = torch.stack([gx, gy], -1)[:, :, None]  # (T, P, 1, 2)
    return F.grid_sample(img[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, :, 0]


def sample_channels(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of multi-channel images. img: (T, C, H, W); uv: (T, P, 2) pixels
    (centre at +0.5) -> (T, P, C); outside points read the border value."""
    T, C, H, W = img.shape
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1)[:, :, None]
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0].transpose(1, 2)


def photometric_energy(img: torch.Tensor, uv: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor, delta: float = 0.5) -> torch.Tensor:
    """Direct colour term: the current images sampled at the projected surface samples must
    reproduce the samples' reference colours (anchored in one keyframe, so it does not drift).

    img: (T, C, H, W) local-contrast-normalised frames; uv: (T, P, 2) projections;
    ref: (P, C) reference colours; weight: (T, P) >= 0 (visibility). Returns a scalar: the
    weighted mean Huber cost (normalised units^2, summed over channels).
    """
    r = (sample_channels(img, uv) - ref).abs()  # (T, P, C)
    e = huber(r, delta).sum(-1)
    return (e * weight).sum() / weight.sum().clamp_min(1.0)


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


def arap_energy(
    nodes: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, edges: torch.Tensor, edge_w: torch.Tensor
) -> torch.Tensor:
    """Embedded-deformation rigidity between neighbouring nodes.

    nodes: (K, 3) rest node positions; rot: (T, K, 3, 3); trans: (T, K, 3); edges: (E, 2)
    long (j, k); edge_w: (E,). Node j's transform applied to node k must land where node k
    goes: R_j (g_k - g_j) + g_j + t_j - (g_k + t_k). Returns the weighted mean squared
    residual (mesh units^2) per frame, summed over frames.
    """
    j, k = edges[:, 0], edges[:, 1]
    d = (nodes[k] - nodes[j])  # (E, 3)
    pred = torch.einsum("teab,eb->tea", rot[:, j], d) + nodes[j] + trans[:, j]
    r = pred - (nodes[k] + trans[:, k])
    return ((r * r).sum(-1) * edge_w).sum(-1).sum() / edge_w.sum().clamp_min(1e-9)


def temporal_energy(x: torch.Tensor, w_vel: float, w_acc: float) -> torch.Tensor:
    """x: (T, ...) a trajectory (node positions, rotations). Sum of squared velocities and
    accelerations (per element mean), weighted. T < 2 / T < 3 terms vanish."""
    e = x.new_zeros(())
    if len(x) >= 2 and w_vel > 0:
        e = e + w_vel * ((x[1:] - x[:-1]) ** 2).sum(-1).mean(-1).sum()
    if len(x) >= 3 and w_acc > 0:
        e = e + w_acc * ((x[2:] - 2 * x[1:-1] + x[:-2]) ** 2).sum(-1).mean(-1).sum()
    return e


def depth_motion_energy(p_cam: torch.Tensor, p_ref_cam: torch.Tensor) -> torch.Tensor:
    """Penalise motion along camera rays, which monocular evidence cannot see.

    p_cam: (T, K, 3) node positions in camera coordinates; p_ref_cam: (T, K, 3) the same
    nodes one frame earlier. Returns the mean squared ray-aligned displacement (units^2).
    """
    ray = F.normalize(p_ref_cam, dim=-1)
    along = ((p_cam - p_ref_cam) * ray).sum(-1)
    return (along * along).mean(-1).sum()
