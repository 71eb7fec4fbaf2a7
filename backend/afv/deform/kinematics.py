"""Rotations, forward kinematics and linear blend skinning for a rig (afv.rig).

The convention is the one in docs/contracts.md ("Rig"), and nothing else:
  R_b     rotation of bone b relative to its parent, expressed in mesh axes;
  Q_b   = Q_parent(b) R_b                             (Q_-1 = I)
  P_b   = h_b + u                                     for a root (u: the shared root translation)
  P_b   = P_parent + Q_parent (h_b - h_parent)        otherwise
  G_b(x)= Q_b (x - h_b) + P_b
  v_i   = sum_k w_ik G_{j_ik}(v_i)                    (linear blend skinning)
so R = I, u = 0 leaves every vertex where it is.

Every function is a small pure torch function: batched over leading dims (...), differentiable,
device- and dtype-agnostic. Quaternions are (w, x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

# ---------------------------------------------------------------- rotations


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


# ---------------------------------------------------------------- kinematics


def _parents_tuple(parents) -> tuple[int, ...]:
    if isinstance(parents, torch.Tensor):
        parents = parents.detach().cpu().numpy()
    return tuple(int(p) for p in np.asarray(parents).reshape(-1))


@lru_cache(maxsize=64)
def _levels(parents: tuple[int, ...]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Bones grouped by depth: ((bones, their parents), ...) root level first.

    One batched step per tree level instead of one per bone: a 60-bone character is ~8 steps.
    """
    B = len(parents)
    depth = np.zeros(B, np.int64)
    for b, p in enumerate(parents):
        if p >= b or p < -1:
            raise ValueError(f"bones must be parent-first (parents[{b}] = {p})")
        depth[b] = 0 if p < 0 else depth[p] + 1
    par = np.asarray(parents, np.int64)
    out = []
    for d in range(int(depth.max()) + 1 if B else 0):
        idx = np.nonzero(depth == d)[0]
        out.append((idx, par[idx]))
    return tuple(out)


def fk(parents: Sequence[int] | np.ndarray | torch.Tensor, heads: torch.Tensor, rot: torch.Tensor,
       root_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics (docs/contracts.md "Rig").

    parents: (B,) ints, parent-first (parents[b] < b, -1 for roots); heads: (B, 3) rest heads;
    rot: (..., B, 3, 3) local rotations R_b; root_t: (..., 3) translation u shared by the roots
    (None = 0). Returns Q: (..., B, 3, 3) global rotations and P: (..., B, 3) posed heads.
    """
    levels = _levels(_parents_tuple(parents))
    batch = rot.shape[:-3]
    B = rot.shape[-3]
    if heads.shape[-2] != B or len(levels) and sum(len(i) for i, _ in levels) != B:
        raise ValueError(f"fk: {B} rotations for {heads.shape[-2]} heads / {len(_parents_tuple(parents))} parents")
    dev = rot.device
    heads = heads.to(rot.dtype)
    Q = rot.new_zeros(*batch, B, 3, 3)
    P = rot.new_zeros(*batch, B, 3)
    for d, (idx_np, par_np) in enumerate(levels):
        idx = torch.as_tensor(idx_np, device=dev)
        if d == 0:  # roots (depth 0 holds exactly the roots)
            Q[..., idx, :, :] = rot[..., idx, :, :]
            Ph = heads[..., idx, :].expand(*batch, len(idx_np), 3)
            P[..., idx, :] = Ph if root_t is None else Ph + root_t[..., None, :]
            continue
        par = torch.as_tensor(par_np, device=dev)
        Qp = Q[..., par, :, :]  # advanced indexing copies: later in-place writes are autograd-safe
        Q[..., idx, :, :] = Qp @ rot[..., idx, :, :]
        off = heads[..., idx, :] - heads[..., par, :]  # (n, 3) rest offset from the parent's head
        P[..., idx, :] = P[..., par, :] + (Qp @ off[..., None]).squeeze(-1)
    return Q, P


def global_to_local(parents: Sequence[int] | np.ndarray | torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Inverse of the rotation part of fk: Q (..., B, 3, 3) global -> R (..., B, 3, 3), R_b = Q_parent^T Q_b."""
    par = torch.as_tensor(_parents_tuple(parents), device=Q.device, dtype=torch.long)
    eye = torch.eye(3, dtype=Q.dtype, device=Q.device).expand(*Q.shape[:-3], 1, 3, 3)
    Qpad = torch.cat([eye, Q], -3)  # index 0 = the identity parent of roots
    return Qpad[..., par + 1, :, :].transpose(-1, -2) @ Q


def bone_transforms(heads: torch.Tensor, Q: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G_b(x) = Q_b x + t_b as (A (..., B, 3, 3), t (..., B, 3)), t_b = P_b - Q_b h_b."""
    return Q, P - (Q @ heads.to(Q.dtype)[..., None]).squeeze(-1)


def lbs(verts: torch.Tensor, joints: torch.Tensor, weights: torch.Tensor, heads: torch.Tensor,
        Q: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning: v_i = sum_k w_ik G_{j_ik}(v_i).

    verts: (N, 3) rest vertices; joints: (N, K) long bone indices; weights: (N, K) (rows sum to 1);
    heads: (B, 3); Q: (..., B, 3, 3), P: (..., B, 3) from fk. Returns (..., N, 3).
    The K blended affine maps are accumulated one influence at a time, so memory is
    (..., N, 3, 3) whatever K is (no (..., N, K, 3, 3) gather).
    """
    A, t = bone_transforms(heads, Q, P)
    joints = joints.long()
    w = weights.to(Q.dtype)
    M = None
    tb = None
    for k in range(joints.shape[-1]):
        j = joints[:, k]
        wk = w[:, k]
        Mk = A[..., j, :, :] * wk[:, None, None]
        tk = t[..., j, :] * wk[:, None]
        M = Mk if M is None else M + Mk
        tb = tk if tb is None else tb + tk
    return (M @ verts.to(Q.dtype)[..., None]).squeeze(-1) + tb


# ---------------------------------------------------------------- a rig as tensors


@dataclass(frozen=True)
class RigTensors:
    """An afv.rig.Rig on a device, ready for fk/lbs."""

    parents: tuple[int, ...]  # (B,) parent-first, -1 for roots (host side: it drives the level loop)
    heads: torch.Tensor  # (B, 3)
    tails: torch.Tensor  # (B, 3)
    joints: torch.Tensor  # (N, K) long
    weights: torch.Tensor  # (N, K)

    @property
    def n_bones(self) -> int:
        return len(self.parents)

    @classmethod
    def from_rig(cls, rig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "RigTensors":
        return cls(
            parents=_parents_tuple(rig.parents),
            heads=torch.as_tensor(np.asarray(rig.heads), dtype=dtype, device=device),
            tails=torch.as_tensor(np.asarray(rig.tails), dtype=dtype, device=device),
            joints=torch.as_tensor(np.asarray(rig.joints), dtype=torch.long, device=device),
            weights=torch.as_tensor(np.asarray(rig.weights), dtype=dtype, device=device),
        )

    def pose(self, verts: torch.Tensor, rot: torch.Tensor, root_t: torch.Tensor | None = None) -> torch.Tensor:
        """verts: (N, 3) rest; rot: (..., B, 3, 3) local rotations; root_t: (..., 3) -> (..., N, 3)."""
        Q, P = fk(self.parents, self.heads, rot, root_t)
        return lbs(verts, self.joints, self.weights, self.heads, Q, P)
