"""Welding: merge coincident vertices so UV seams and split normals do not cut the surface.

Meshes from DCC tools duplicate vertices along UV seams and hard edges; topologically the
surface is still one piece. Distances along the surface must be measured on the welded mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Welded:
    index: np.ndarray  # (N,) int64: input vertex i -> welded vertex index[i]
    vertices: np.ndarray  # (M,) x 3 float64, mean position of the merged input vertices
    faces: np.ndarray  # (F, 3) int64, input faces re-indexed into welded vertices (same order, may be degenerate)


def weld(vertices: np.ndarray, faces: np.ndarray, tol_rel: float = 1e-6) -> Welded:
    """Merge vertices closer than `tol_rel` x bbox diagonal.

    vertices: (N, 3) float; faces: (F, 3) int. Merging is transitive (chains of close
    vertices collapse to one); welded indices follow first appearance in input order, so
    the result is deterministic. Faces keep their order and count; faces that collapse
    (repeated welded index) are kept here and dropped by the surface builder.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    n = len(v)
    diag = float(np.linalg.norm(v.max(0) - v.min(0))) if n else 0.0
    tol = tol_rel * diag
    pairs = cKDTree(v).query_pairs(tol, output_type="ndarray") if n > 1 else np.zeros((0, 2), np.int64)
    if len(pairs) == 0:
        return Welded(np.arange(n, dtype=np.int64), v.copy(), f.copy())
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    # Relabel by first appearance so welded order follows input order.
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    index = remap[labels].astype(np.int64)
    m = len(order)
    counts = np.bincount(index, minlength=m).astype(np.float64)
    wv = np.stack([np.bincount(index, weights=v[:, c], minlength=m) for c in range(3)], 1) / counts[:, None]
    return Welded(index, wv, index[f])
