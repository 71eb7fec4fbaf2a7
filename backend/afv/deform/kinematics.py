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
device- and dtype-agnostic. Quaternions are (w, x, y, z); the rotation conversions live in
afv.geometry.rotation (one home) and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..geometry.rotation import (  # noqa: F401  (re-exported: the rig's rotation vocabulary)
    axis_angle_to_matrix,
    quaternion_to_matrix,
    matrix_to_quaternion,
    quaternion_to_axis_angle,
    axis_angle_to_quaternion,
    matrix_to_axis_angle,
    quaternion_multiply,
    rotation_6d_to_matrix,
    matrix_to_rotation_6d,
)

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


_DEVICE_LEVELS: dict[tuple[tuple[int, ...], str], tuple[tuple[torch.Tensor, torch.Tensor], ...]] = {}


def _device_levels(parents: tuple[int, ...], device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """_levels as index tensors on `device`, cached: no host-to-device copy (a sync) per call."""
    key = (parents, str(device))
    hit = _DEVICE_LEVELS.get(key)
    if hit is None:
        if len(_DEVICE_LEVELS) > 64:
            _DEVICE_LEVELS.clear()
        hit = tuple((torch.as_tensor(i, device=device), torch.as_tensor(p, device=device)) for i, p in _levels(parents))
        _DEVICE_LEVELS[key] = hit
    return hit


def fk(parents: Sequence[int] | np.ndarray | torch.Tensor, heads: torch.Tensor, rot: torch.Tensor,
       root_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics (docs/contracts.md "Rig").

    parents: (B,) ints, parent-first (parents[b] < b, -1 for roots), best given on the host (a
    tuple/list/array: the per-level index tensors are cached per device, so a call never syncs);
    heads: (B, 3) rest heads;
    rot: (..., B, 3, 3) local rotations R_b; root_t: (..., 3) translation u shared by the roots
    (None = 0). Returns Q: (..., B, 3, 3) global rotations and P: (..., B, 3) posed heads.
    """
    par_t = _parents_tuple(parents)
    batch = rot.shape[:-3]
    B = rot.shape[-3]
    if heads.shape[-2] != B or len(par_t) != B:
        raise ValueError(f"fk: {B} rotations for {heads.shape[-2]} heads / {len(par_t)} parents")
    levels = _device_levels(par_t, rot.device)
    heads = heads.to(rot.dtype)
    Q = rot.new_zeros(*batch, B, 3, 3)
    P = rot.new_zeros(*batch, B, 3)
    for d, (idx, par) in enumerate(levels):
        if d == 0:  # roots (depth 0 holds exactly the roots)
            Q[..., idx, :, :] = rot[..., idx, :, :]
            Ph = heads[..., idx, :].expand(*batch, len(idx), 3)
            P[..., idx, :] = Ph if root_t is None else Ph + root_t[..., None, :]
            continue
        Qp = Q[..., par, :, :]  # advanced indexing copies: later in-place writes are autograd-safe
        Q[..., idx, :, :] = Qp @ rot[..., idx, :, :]
        off = heads[..., idx, :] - heads[..., par, :]  # (n, 3) rest offset from the parent's head
        P[..., idx, :] = P[..., par, :] + (Qp @ off[..., None]).squeeze(-1)
    return Q, P


def global_to_local(parents: Sequence[int] | np.ndarray | torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Inverse of the rotation part of fk: Q (..., B, 3, 3) global -> R (..., B, 3, 3), R_b = Q_parent^T Q_b."""
    par = torch.as_tensor(_parents_tuple(parents), dtype=torch.long).to(Q.device)
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
