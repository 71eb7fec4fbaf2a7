"""Ground-truth rig pose of a rendered asset, in the rig contract's terms (numpy, no bpy).

Blender gives each pose bone's world matrix per frame, X_b(t) (4x4). The benchmark's mesh is the
asset at its first sampled frame, so the rig's rest pose is that frame: bone b moves points by
D_b(t) = X_b(t) X_b(0)^-1. The contract (docs/contracts.md "Rig") describes the same motion by
rotations R_b relative to the parent in mesh axes and one root translation u:
Q_b = rotation of D_b, R_b = Q_parent^T Q_b, u = D_root(h_root) - h_root.
That is exact while no bone but the root translates or scales relative to its parent; the
deviation is reported (`child_offset_error`, `scale_deviation`) rather than hidden.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def relative_transforms(mats: np.ndarray) -> np.ndarray:
    """mats: (T, B, 4, 4) world matrices -> (T, B, 4, 4) D_b(t) = X_b(t) X_b(0)^-1."""
    mats = np.asarray(mats, np.float64)
    return mats @ np.linalg.inv(mats[:1])


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """m: (..., 3, 3) -> (..., 3, 3) closest rotation (polar decomposition via SVD)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt


def contract_pose(mats: np.ndarray, parents: np.ndarray, heads: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-frame contract pose of the bones whose world matrices are `mats`.

    mats (T, B, 4, 4); parents (B,) parent-first, -1 roots; heads (B, 3) at frame 0 ->
    {"bone_rotations": (T, B, 4) float32 wxyz, "root_translation": (T, 3) float32,
     "scale_deviation": max |singular value - 1| of D's linear part,
     "child_offset_error": max distance between a bone's head moved by its own D and by the
     contract's FK (non-zero where an animation translates a non-root bone)}.
    """
    parents = np.asarray(parents)
    heads = np.asarray(heads, np.float64)
    D = relative_transforms(mats)
    lin = D[..., :3, :3]
    Q = nearest_rotation(lin)
    sv = np.linalg.svd(lin, compute_uv=False)
    T, B = Q.shape[:2]
    R = Q.copy()
    for b in range(B):
        p = parents[b]
        if p >= 0:
            R[:, b] = np.swapaxes(Q[:, p], -1, -2) @ Q[:, b]
    root = int(np.flatnonzero(parents < 0)[0])
    u = np.einsum("tij,j->ti", lin[:, root], heads[root]) + D[:, root, :3, 3] - heads[root]
    # FK of the heads per the contract, against where each bone's own D puts its head
    P = np.zeros((T, B, 3))
    for b in range(B):
        p = parents[b]
        P[:, b] = heads[b] + u if p < 0 else P[:, p] + np.einsum("tij,j->ti", Q[:, p], heads[b] - heads[p])
    own = np.einsum("tbij,bj->tbi", lin, heads) + D[..., :3, 3]
    xyzw = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(T, B, 4)
    wxyz = np.concatenate([xyzw[..., 3:], xyzw[..., :3]], -1)
    wxyz *= np.where(wxyz[..., :1] < 0, -1.0, 1.0)
    return {
        "bone_rotations": wxyz.astype(np.float32),
        "root_translation": u.astype(np.float32),
        "scale_deviation": float(np.abs(sv - 1).max()),
        "child_offset_error": float(np.linalg.norm(own - P, axis=-1).max()),
    }


def skin_direct(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Linear blend skinning with per-bone transforms.

    vertices (N, 3) at frame 0; joints/weights (N, K); D (T, B, 4, 4) -> (T, N, 3)."""
    v = np.asarray(vertices, np.float64)
    Dj = D[:, joints]  # (T, N, K, 4, 4)
    moved = np.einsum("tnkij,nj->tnki", Dj[..., :3, :3], v) + Dj[..., :3, 3]
    return np.einsum("tnki,nk->tni", moved, weights)


def deforming_bones(parents: np.ndarray, joints: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Indices (parent-first) of the bones an engine needs: those that deform some vertex or
    have a descendant that does, less unweighted roots with a single child (repeatedly).

    Such a root (glTF's `_rootJoint`, an armature's static `Root`) moves nothing itself, but
    keeping it would make its child (often the hips, which translate) a non-root bone, which
    the contract's forward kinematics cannot translate; dropping it loses no deformation.
    parents (B,), joints/weights (N, K) -> (B',) int indices into the original bones.
    """
    parents = np.asarray(parents)
    B = len(parents)
    used = np.zeros(B, bool)
    used[np.unique(np.asarray(joints)[np.asarray(weights) > 0])] = True
    keep = used.copy()
    for b in range(B - 1, -1, -1):  # children after parents: propagate "has a deforming descendant" up
        if keep[b] and parents[b] >= 0:
            keep[parents[b]] = True
    par = parents.copy()
    while True:
        roots = [b for b in range(B) if keep[b] and par[b] < 0 and not used[b]]
        dropped = False
        for r in roots:
            kids = [c for c in range(B) if keep[c] and par[c] == r]
            if len(kids) == 1:
                keep[r], par[kids[0]], dropped = False, -1, True
        if not dropped:
            return np.flatnonzero(keep)


def subset_rig(idx: np.ndarray, parents: np.ndarray, joints: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parents and joints re-indexed to the kept bones `idx` (deforming_bones): a dropped parent
    is replaced by its nearest kept ancestor (-1 if none); zero-weight joint slots point at the
    vertex's first influence. -> (parents (B',) int32, joints (N, K) int32)."""
    parents = np.asarray(parents)
    new = -np.ones(len(parents), np.int64)
    new[idx] = np.arange(len(idx))
    out_par = []
    for b in idx:
        p = parents[b]
        while p >= 0 and new[p] < 0:
            p = parents[p]
        out_par.append(new[p] if p >= 0 else -1)
    j = np.where(np.asarray(weights) > 0, np.asarray(joints), np.asarray(joints)[:, :1])
    nj = new[j]
    if (nj < 0).any():
        raise ValueError("a weighted joint was dropped")
    return np.array(out_par, np.int32), nj.astype(np.int32)


def skin_contract(vertices: np.ndarray, parents: np.ndarray, heads: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                  rotations: np.ndarray, root_translation: np.ndarray) -> np.ndarray:
    """The contract's FK + LBS: vertices (N, 3) at rest, rotations (T, B, 4) wxyz, root_translation
    (T, 3) -> (T, N, 3). Used to measure how well the contract can express a clip's motion."""
    rot = np.asarray(rotations, np.float64)
    T, B = rot.shape[:2]
    R = Rotation.from_quat(np.concatenate([rot[..., 1:], rot[..., :1]], -1).reshape(-1, 4)).as_matrix().reshape(T, B, 3, 3)
    h = np.asarray(heads, np.float64)
    Q, P = np.zeros_like(R), np.zeros((T, B, 3))
    for b in range(B):
        p = parents[b]
        Q[:, b] = R[:, b] if p < 0 else Q[:, p] @ R[:, b]
        P[:, b] = h[b] + root_translation if p < 0 else P[:, p] + np.einsum("tij,j->ti", Q[:, p], h[b] - h[p])
    v = np.asarray(vertices, np.float64)
    out = np.zeros((T, len(v), 3))
    for k in range(joints.shape[1]):
        j = joints[:, k]
        out += weights[None, :, k, None] * (np.einsum("tnij,nj->tni", Q[:, j], v - h[j]) + P[:, j])
    return out
