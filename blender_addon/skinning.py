"""Forward kinematics and linear blend skinning of docs/contracts.md ("Rig"), numpy only (no bpy).

Per frame: R_b (wxyz) relative to the parent in mesh axes, u the roots' translation;
Q_b = Q_parent R_b, P_root = h_root + u, P_b = P_parent + Q_parent (h_b - h_parent),
G_b(x) = Q_b (x - h_b) + P_b, v = sum_k w_k G_{j_k}(v_rest).
The add-on uses it to split a result into bone keys plus a shape-key residual.
"""

from __future__ import annotations

import numpy as np


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """q: (..., 4) wxyz (normalised here) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """R: (..., 3, 3) rotations -> (..., 4) wxyz with w >= 0 (Shepperd's method, numerically safe)."""
    R = np.asarray(R, np.float64)
    shp = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    tr = np.trace(R, axis1=1, axis2=2)
    cand = np.stack([tr, R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], 1)
    i = np.argmax(cand, 1)
    q = np.empty((len(R), 4))
    for n in range(len(R)):
        m = R[n]
        if i[n] == 0:
            s = 2 * np.sqrt(max(1 + tr[n], 1e-12))
            q[n] = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        else:
            a = i[n] - 1
            b, c = (a + 1) % 3, (a + 2) % 3
            s = 2 * np.sqrt(max(1 + m[a, a] - m[b, b] - m[c, c], 1e-12))
            q[n, 0] = (m[c, b] - m[b, c]) / s
            q[n, 1 + a] = s / 4
            q[n, 1 + b] = (m[b, a] + m[a, b]) / s
            q[n, 1 + c] = (m[c, a] + m[a, c]) / s
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(*shp, 4)


def forward_kinematics(rotations: np.ndarray, root_translation: np.ndarray, parents: np.ndarray,
                       heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rotations (T, B, 4) wxyz, root_translation (T, 3), parents (B,) parent-first, heads (B, 3)
    -> (Q (T, B, 3, 3) global rotations, P (T, B, 3) posed head positions)."""
    R = quat_to_matrix(rotations)
    u = np.asarray(root_translation, np.float64)
    h = np.asarray(heads, np.float64)
    T, B = R.shape[:2]
    Q = np.empty((T, B, 3, 3))
    P = np.empty((T, B, 3))
    for b in range(B):
        p = int(parents[b])
        if p < 0:
            Q[:, b] = R[:, b]
            P[:, b] = h[b] + u
        else:
            Q[:, b] = Q[:, p] @ R[:, b]
            P[:, b] = P[:, p] + Q[:, p] @ (h[b] - h[p])
    return Q, P


def blend(Q: np.ndarray, P: np.ndarray, heads: np.ndarray, joints: np.ndarray, weights: np.ndarray):
    """Per-vertex blended transform: (A (T, N, 3, 3), c (T, N, 3)) with v(t) = A v_rest + c.

    Q (T, B, 3, 3), P (T, B, 3), heads (B, 3), joints/weights (N, K).
    """
    w = np.asarray(weights, np.float64)[None, :, :, None]  # (1, N, K, 1)
    Qj = Q[:, joints]  # (T, N, K, 3, 3)
    off = P - np.einsum("tbij,bj->tbi", Q, np.asarray(heads, np.float64))  # G_b(x) = Q_b x + off_b
    A = (w[..., None] * Qj).sum(2)
    c = (w * off[:, joints]).sum(2)
    return A, c


def skin(vertices: np.ndarray, rotations, root_translation, parents, heads, joints, weights) -> np.ndarray:
    """(T, N, 3) linear-blend-skinned positions of vertices (N, 3)."""
    Q, P = forward_kinematics(rotations, root_translation, parents, heads)
    A, c = blend(Q, P, heads, joints, weights)
    return np.einsum("tnij,nj->tni", A, np.asarray(vertices, np.float64)) + c


def rest_residual(vertices, target, rotations, root_translation, parents, heads, joints, weights) -> np.ndarray:
    """(T, N, 3) offsets r of the rest vertices with skin(vertices + r) == target (T, N, 3).

    Skinning is affine per vertex (A v + c), so r = A^-1 (target - A v - c); this is what shape
    keys must hold when an Armature modifier deforms them afterwards.
    """
    Q, P = forward_kinematics(rotations, root_translation, parents, heads)
    A, c = blend(Q, P, heads, joints, weights)
    v = np.asarray(vertices, np.float64)
    rhs = np.asarray(target, np.float64) - np.einsum("tnij,nj->tni", A, v) - c
    return np.linalg.solve(A, rhs[..., None])[..., 0]
