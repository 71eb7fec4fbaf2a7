"""The welded, cleaned surface of a mesh and its islands (connected pieces).

Degenerate faces (repeated vertex after welding, or ~zero area) are excluded from the
heat-method solve but still count for connectivity, so a sliver does not split an island.
Vertices in no face at all are islands of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from ..mesh import Mesh
from .weld import Welded, weld


@dataclass(frozen=True)
class Surface:
    welded: Welded
    faces: np.ndarray  # (F', 3) int64 welded faces without repeated indices (connectivity)
    clean: np.ndarray  # (F',) bool: non-degenerate (area above threshold), used by the heat method
    island: np.ndarray  # (M,) int64 island label per welded vertex
    n_islands: int

    @property
    def n_welded(self) -> int:
        return len(self.welded.vertices)

    def island_of_input(self) -> np.ndarray:
        """(N,) int64 island label of each input vertex."""
        return self.island[self.welded.index]

    def edge_graph(self) -> csr_matrix:
        """Symmetric (M, M) CSR matrix of Euclidean edge lengths over all non-collapsed faces."""
        f = self.faces
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        e = np.unique(e, axis=0)
        v = self.welded.vertices
        # Zero-length edges would vanish from a sparse matrix: keep a tiny positive length.
        w = np.maximum(np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1), 1e-12)
        m = self.n_welded
        rows, cols = np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]])
        return coo_matrix((np.concatenate([w, w]), (rows, cols)), shape=(m, m)).tocsr()


def build_surface(mesh: Mesh, tol_rel: float = 1e-6, area_rel: float = 1e-12) -> Surface:
    """Weld `mesh`, drop collapsed faces, flag ~zero-area faces, label islands."""
    w = weld(mesh.vertices, mesh.faces, tol_rel)
    f = w.faces
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    f = f[keep]
    v = w.vertices
    diag = float(np.linalg.norm(v.max(0) - v.min(0)))
    area2 = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    clean = area2 > area_rel * diag * diag
    m = len(v)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(m, m))
    n_islands, island = connected_components(g, directed=False)
    return Surface(w, f, clean, island.astype(np.int64), int(n_islands))
