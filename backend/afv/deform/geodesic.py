"""Geodesic distances on the welded surface (heat method, per island).

Each island is solved separately with potpourri3d's heat method (robust intrinsic
Delaunay variant, so thin parts and poor triangles are fine). Distances between islands
are inf. Vertices only reachable through degenerate faces (or islands made only of
degenerate faces) get distances from a Dijkstra pass over mesh edges, seeded with the
heat distances.
"""

from __future__ import annotations

import numpy as np
import potpourri3d as pp3d
from scipy.sparse import csr_matrix, vstack, hstack, coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from ..errors import InputError
from ..mesh import Mesh
from .surface import Surface, build_surface


class GeodesicSolver:
    """Prefactored geodesic distance queries on one mesh (welded, per island)."""

    def __init__(self, mesh: Mesh, surface: Surface | None = None, t_coef: float = 1.0) -> None:
        self.mesh = mesh
        self.surface = surface if surface is not None else build_surface(mesh)
        self.t_coef = t_coef
        s = self.surface
        m = s.n_welded
        # "Core" components: connected pieces of the clean (non-degenerate) faces.
        cf = s.faces[s.clean]
        e = np.concatenate([cf[:, [0, 1]], cf[:, [1, 2]]])
        g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(m, m))
        _, comp = connected_components(g, directed=False)
        in_clean = np.zeros(m, bool)
        in_clean[cf.ravel()] = True
        self._core = np.where(in_clean, comp, -1)  # (M,) core component or -1 (orphan)
        self._core_faces = cf
        self._face_core = comp[cf[:, 0]] if len(cf) else np.zeros(0, np.int64)
        self._solvers: dict[int, tuple[object, np.ndarray]] = {}
        self._graph: csr_matrix | None = None
        self._island_members = [np.flatnonzero(s.island == i) for i in range(s.n_islands)]

    def _solver(self, core: int):
        if core not in self._solvers:
            faces = self._core_faces[self._face_core == core]
            verts = np.unique(faces)
            local = np.full(self.surface.n_welded, -1, np.int64)
            local[verts] = np.arange(len(verts))
            try:
                solver = pp3d.MeshHeatMethodDistanceSolver(self.surface.welded.vertices[verts], local[faces], t_coef=self.t_coef, use_robust=True)
            except Exception:  # a core the solver rejects falls back to edge Dijkstra
                solver = None
            self._solvers[core] = (solver, verts)
        return self._solvers[core]

    def _edge_graph(self) -> csr_matrix:
        if self._graph is None:
            self._graph = self.surface.edge_graph()
        return self._graph

    def welded_distances(self, src: int) -> np.ndarray:
        """(M,) float64 geodesic distances from welded vertex `src`; inf on other islands."""
        s = self.surface
        m = s.n_welded
        d = np.full(m, np.inf)
        members = self._island_members[s.island[src]]
        if len(members) == 1:
            d[src] = 0.0
            return d
        core = self._core[src]
        if core >= 0:
            solver, verts = self._solver(core)
            if solver is not None:
                h = np.asarray(solver.compute_distance(int(np.searchsorted(verts, src))), np.float64)
                h = np.where(np.isfinite(h), np.maximum(h, 0.0), np.inf)
                h[np.searchsorted(verts, src)] = 0.0
                d[verts] = h
        missing = members[~np.isfinite(d[members])]
        if len(missing):
            self._fill_by_edges(d, members, src)
        return d

    def _fill_by_edges(self, d: np.ndarray, members: np.ndarray, src: int) -> None:
        """Complete `d` on an island by Dijkstra over edges, seeded with the known distances."""
        g = self._edge_graph()[members][:, members]
        known = np.isfinite(d[members])
        if not known.any():
            known = members == src
            seed = np.zeros(len(members))
        else:
            seed = d[members]
        k = len(members)
        # A virtual node k connects to every known vertex with its known distance.
        kn = np.flatnonzero(known)
        extra = coo_matrix((seed[kn] + 1e-300, (np.full(len(kn), k), kn)), shape=(k + 1, k + 1)).tocsr()
        big = vstack([hstack([g, csr_matrix((k, 1))]), csr_matrix((1, k + 1))]).tocsr() + extra
        dist = dijkstra(big, directed=True, indices=k)[:k]
        d[members] = np.minimum(np.where(known, seed, np.inf), dist)

    def from_vertices(self, sources: np.ndarray) -> np.ndarray:
        """(K, N) float32 distances from input vertices `sources` (K,) to every input vertex."""
        src = _check_sources(sources, self.mesh.n_vertices)
        w = self.surface.welded.index
        out = np.empty((len(src), self.mesh.n_vertices), np.float32)
        for r, s in enumerate(src):
            out[r] = self.welded_distances(int(w[s]))[w]
        return out


def _check_sources(sources, n: int) -> np.ndarray:
    src = np.asarray(sources).reshape(-1)
    if src.size and (not np.issubdtype(src.dtype, np.integer) or src.min() < 0 or src.max() >= n):
        raise InputError(f"geodesic sources must be vertex indices in [0, {n})")
    return src.astype(np.int64)


def geodesic_from(mesh: Mesh, sources) -> np.ndarray:
    """Geodesic distance on the WELDED surface from each source to every vertex.

    mesh: Mesh with N vertices; sources: (K,) int vertex indices.
    Returns (K, N) float32; output column i is input vertex i; np.inf between islands.
    """
    return GeodesicSolver(mesh).from_vertices(sources)
