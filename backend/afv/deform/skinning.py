"""Geodesic rigid skinning (App. D.2): per-vertex weighted Procrustes over nearby landmarks.

Weights: each vertex's k_nn geodesically nearest landmarks on its own island,
w = exp(-d^2 / (2 sigma^2)), sigma = sigma_scale x mean landmark spacing (geodesic distance
from each landmark to its nearest other landmark), normalised to sum 1. A vertex's motion is
the rigid transform best mapping its landmarks' rest positions to their targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..mesh import Mesh
from .geodesic import GeodesicSolver
from .rotation import nearest_rotation


@dataclass(frozen=True)
class SkinningWeights:
    idx: np.ndarray  # (N, k_nn) int64 landmark numbers (rows of the landmark arrays), nearest first
    weights: np.ndarray  # (N, k_nn) float32, sum 1 per vertex; 0 for padding (fewer landmarks on the island)
    sigma: float = 0.0  # geodesic Gaussian width used


def build_skinning(mesh: Mesh, landmarks, k_nn: int = 8, sigma_scale: float = 1.0, solver: GeodesicSolver | None = None, batch: int = 64) -> SkinningWeights:
    """Geodesic Gaussian weights from every vertex to its k_nn nearest same-island landmarks.

    mesh: Mesh (N vertices); landmarks: (K,) int vertex indices. Distances are streamed one
    landmark at a time into a running top-k, so memory is O(N (k_nn + batch)).
    """
    lm = np.asarray(landmarks).reshape(-1)
    n = mesh.n_vertices
    if lm.size == 0 or not np.issubdtype(lm.dtype, np.integer) or lm.min() < 0 or lm.max() >= n:
        raise InputError(f"landmarks must be a non-empty array of vertex indices in [0, {n})")
    if k_nn < 1 or sigma_scale <= 0:
        raise InputError(f"need k_nn >= 1 and sigma_scale > 0, got {k_nn}, {sigma_scale}")
    solver = solver if solver is not None else GeodesicSolver(mesh)
    s = solver.surface
    wlm = s.welded.index[lm]
    K = len(lm)
    kk = min(k_nn, K)
    m = s.n_welded
    best_d = np.full((m, 0), np.inf, np.float32)
    best_i = np.zeros((m, 0), np.int64)
    lm_d = np.full((K, K), np.inf, np.float32)  # landmark-to-landmark geodesic distances
    for b0 in range(0, K, batch):
        rows = np.stack([solver.welded_distances(int(w)) for w in wlm[b0:b0 + batch]]).astype(np.float32)
        lm_d[b0:b0 + len(rows)] = rows[:, wlm]
        cand_d = np.concatenate([best_d, rows.T], 1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(b0, b0 + len(rows)), (m, len(rows)))], 1)
        if cand_d.shape[1] > kk:
            part = np.argpartition(cand_d, kk - 1, axis=1)[:, :kk]
            cand_d = np.take_along_axis(cand_d, part, 1)
            cand_i = np.take_along_axis(cand_i, part, 1)
        best_d, best_i = cand_d, cand_i
    order = np.argsort(best_d, axis=1, kind="stable")
    best_d = np.take_along_axis(best_d, order, 1).astype(np.float64)
    best_i = np.take_along_axis(best_i, order, 1)
    # Mean spacing: distance from each landmark to its nearest other landmark (same island).
    np.fill_diagonal(lm_d, np.inf)
    nearest = lm_d.min(1)
    nearest = nearest[np.isfinite(nearest) & (nearest > 0)]
    if len(nearest):
        spacing = float(nearest.mean())
    else:  # every island has one landmark: any width works, weights of padding are 0 anyway
        spacing = mesh.bbox_diagonal() / np.sqrt(K)
    sigma = sigma_scale * spacing
    finite = np.isfinite(best_d)
    # Relative to the nearest landmark so the Gaussian never underflows to all-zero.
    rel = np.where(finite, best_d**2 - best_d[:, :1] ** 2, 0.0)
    w = np.where(finite, np.exp(-rel / (2 * sigma * sigma)), 0.0)
    w /= w.sum(1, keepdims=True)
    wi = s.welded.index
    return SkinningWeights(best_i[wi].astype(np.int64), w[wi].astype(np.float32), sigma)


def skin(rest: torch.Tensor, rest_landmarks: torch.Tensor, landmarks: torch.Tensor, w: SkinningWeights, chunk: int | None = None) -> torch.Tensor:
    """Deform every vertex by the weighted-Procrustes rigid motion of its landmarks.

    rest: (N, 3) rest vertex positions; rest_landmarks: (K, 3) landmark rest positions;
    landmarks: (T, K, 3) landmark target positions. Returns (T, N, 3) positions on
    `landmarks`' device and dtype, differentiable w.r.t. `landmarks`. Vertices are processed in
    chunks of `chunk` (default: about 2^20 / T) to bound memory.
    """
    if landmarks.ndim != 3 or landmarks.shape[-1] != 3 or rest_landmarks.shape != landmarks.shape[1:]:
        raise InputError(f"landmarks must be (T, K, 3) matching rest_landmarks {tuple(rest_landmarks.shape)}, got {tuple(landmarks.shape)}")
    if rest.ndim != 2 or rest.shape[1] != 3 or w.idx.shape[0] != rest.shape[0]:
        raise InputError(f"rest must be (N, 3) with N = {w.idx.shape[0]} (skinning weights), got {tuple(rest.shape)}")
    dev, dt = landmarks.device, landmarks.dtype
    T, N = landmarks.shape[0], rest.shape[0]
    chunk = chunk or max(1, (1 << 20) // max(T, 1))
    idx_all = torch.as_tensor(w.idx, device=dev)
    wt_all = torch.as_tensor(w.weights, device=dev, dtype=dt)
    rest = rest.to(dev, dt)
    rl = rest_landmarks.to(dev, dt)
    eye = torch.eye(3, device=dev, dtype=dt)
    out = []
    for a in range(0, N, chunk):
        idx, wt = idx_all[a:a + chunk], wt_all[a:a + chunk]  # (n, k)
        p = rl[idx]  # (n, k, 3)
        mu_a = (wt[..., None] * p).sum(1)  # (n, 3)
        pc = p - mu_a[:, None]
        q = landmarks[:, idx]  # (T, n, k, 3)
        mu_f = torch.einsum("nk,tnkj->tnj", wt, q)
        # H = sum_l w q_l pc_l^T (sum_l w pc_l = 0, so q need not be centred).
        H = torch.einsum("nk,tnki,nkj->tnij", wt, q, pc)
        # A tiny pull towards identity fixes the free rotation of 1-2 landmark neighbourhoods
        # (collinear layouts) without measurably biasing well-spread ones.
        spread = (wt * (pc * pc).sum(-1)).sum(1)  # (n,)
        H = H + (1e-7 * spread + 1e-20)[None, :, None, None] * eye
        R = nearest_rotation(H)
        out.append(torch.einsum("tnij,nj->tni", R, rest[a:a + chunk] - mu_a) + mu_f)
    return torch.cat(out, 1)
