"""Rotation conversions (torch, differentiable, batched, device- and dtype-agnostic).

Quaternions are (w, x, y, z). Axis-angle is axis * angle in radians.
"""

from __future__ import annotations

import torch



def _skew(r: torch.Tensor) -> torch.Tensor:
    """r: (..., 3) -> (..., 3, 3) cross-product matrix [r]x."""
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)


def axis_angle_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """r: (..., 3) axis-angle (axis * angle, radians) -> (..., 3, 3) rotation matrices.

    Rodrigues' formula with Taylor expansions of sin(t)/t and (1 - cos t)/t^2 near t = 0, so the
    value and the gradient are exact and finite at the identity (where optimisers start).
    """
    theta2 = (r * r).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))  # never sqrt(0)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / torch.where(small, torch.ones_like(theta2), theta2))
    K = _skew(r)
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    return eye + a * K + b * (K @ K)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """q: (..., 4) quaternion (w, x, y, z), any non-zero norm -> (..., 3, 3) rotation matrices."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)  # normalises on the fly: q and c q give the same rotation
    m = torch.stack([
        1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y),
        s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x),
        s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y),
    ], -1)
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

    Shepperd's method: of the four ways to read q off R, use the one dividing by the largest
    component (>= 1/2), so it is accurate and differentiable everywhere, including 180 degrees.
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 q_i^2 for i = w, x, y, z
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    # clamp keeps sqrt's gradient finite for the branches that are not chosen (their weight is 0)
    two_q = torch.sqrt(sq.clamp_min(1e-12))  # (..., 4) = 2 |q_i|
    cand = torch.stack([
        torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, sq[..., 3]], -1),
    ], -2) / (2 * two_q[..., :, None])  # row i = q * sign(q_i), read through component i
    best = sq.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)  # exact unit norm even for slightly non-orthogonal R
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """q: (..., 4) (w, x, y, z) -> (..., 3) axis-angle with angle in [0, pi]."""
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., :1], q[..., 1:]
    n2 = (v * v).sum(-1, keepdim=True)
    small = n2 < 1e-12
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    # angle / |v| = 2 atan2(|v|, w) / |v|  ->  2 / w  (Taylor, w ~ 1) near the identity
    f = torch.where(small, 2.0 / w - 2.0 * n2 / (3.0 * w ** 3), 2.0 * torch.atan2(n, w) / n)
    return v * f


def axis_angle_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """r: (..., 3) axis-angle -> (..., 4) unit quaternion (w, x, y, z)."""
    t2 = (r * r).sum(-1, keepdim=True)
    small = t2 < 1e-8
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    s = torch.where(small, 0.5 - t2 / 48, torch.sin(t / 2) / t)  # sin(t/2)/t
    c = torch.where(small, 1 - t2 / 8, torch.cos(t / 2))
    return torch.cat([c, r * s], -1)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) -> (..., 3) axis-angle, angle in [0, pi]."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of (..., 4) (w, x, y, z) quaternions (rotation b, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """d6: (..., 6) two 3-vectors a1, a2 -> (..., 3, 3) rotation with columns Gram-Schmidt(a1, a2), a1 x a2.

    The continuous 6D parameterisation (no singularity anywhere), convenient for optimisers;
    matrix_to_rotation_6d is its right inverse (the first two columns).
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) -> (..., 6) its first two columns (see rotation_6d_to_matrix)."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)
