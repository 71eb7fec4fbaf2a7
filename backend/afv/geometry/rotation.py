"""Rotation conversions (torch, differentiable, batched)."""

from __future__ import annotations

import torch


def axis_angle_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """r: (..., 3) axis-angle -> (..., 3, 3) rotation matrices (Rodrigues, smooth at 0)."""
    theta2 = (r * r).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    small = theta2 < 1e-8
    # Taylor expansions near zero keep gradients finite
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(Kx)
    return eye + a[..., None] * Kx + b[..., None] * (Kx @ Kx)
