"""The welded surface of a mesh and its islands (connected pieces).

Faces that collapse after welding (a repeated vertex) are dropped; ~zero-area faces still count
for connectivity, so a sliver does not split an island. Vertices in no face at all are islands
of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..mesh import Mesh
from .weld import Welded, weld


@dataclass(frozen=True)
class Surface:
    welded: Welded
    faces: np.ndarray  # (F', 3) int64 welded faces without repeated indices (connectivity)
    island: np.ndarray  # (M,) int64 island label per welded vertex
    n_islands: int

    @property
    def n_welded(self) -> int:
        return len(self.welded.vertices)


def build_surface(mesh: Mesh, tol_rel: float = 1e-6) -> Surface:
    """Weld `mesh`, drop collapsed faces, label islands."""
    w = weld(mesh.vertices, mesh.faces, tol_rel)
    f = w.faces
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    f = f[keep]
    m = len(w.vertices)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(m, m))
    n_islands, island = connected_components(g, directed=False)
    return Surface(w, f, island.astype(np.int64), int(n_islands))
