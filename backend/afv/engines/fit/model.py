"""Deformation model: an embedded deformation graph driven by per-frame node transforms.

Choice: each control node k has a rotation R_k (axis-angle) and a translation t_k per
frame; a point p with skinning weights w_k moves to  sum_k w_k (R_k (p - g_k) + g_k + t_k).
Explicit node rotations (rather than node positions with per-vertex Procrustes, as in
afv.deform.skin) keep each optimiser step linear in the number of points (no per-vertex
SVD in the inner loop), and give the rigidity regulariser its rotations directly. Nodes
and their geodesic weights come from the deformation core (afv.deform), so disconnected
parts never share a node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ...deform import build_skinning, sample_landmarks, weld
from ...mesh import Mesh


@dataclass
class DeformationGraph:
    nodes: torch.Tensor  # (K, 3) float32 rest node positions (mesh coordinates)
    node_vertex: torch.Tensor  # (K,) int64 vertex index of each node
    idx: torch.Tensor  # (N, k) int64 node indices per vertex
    w: torch.Tensor  # (N, k) float32 normalised skinning weights
    edges: torch.Tensor  # (E, 2) int64 directed node pairs (both directions present)
    edge_w: torch.Tensor  # (E,) float32
    island: torch.Tensor  # (N,) int64 connected part of each vertex (welded surface)
    node_island: torch.Tensor  # (K,) int64
    centres: torch.Tensor  # (I, 3) float32 rest centroid of each part (pivot of its rigid motion)

    @property
    def n_islands(self) -> int:
        return int(self.centres.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.nodes.shape[0])


def build_graph(mesh: Mesh, n_nodes: int, k_nn: int, device: torch.device, seed: int = 0) -> DeformationGraph:
    """Sample nodes and geodesic skinning weights with afv.deform; connect nodes that
    share a vertex's neighbourhood (so the graph follows the surface, not Euclidean gaps)."""
    k = int(min(n_nodes, mesh.n_vertices))
    lm = np.asarray(sample_landmarks(mesh, k, seed=seed), np.int64)
    sw = build_skinning(mesh, lm, k_nn=min(k_nn, len(lm)))
    idx = np.asarray(sw.idx, np.int64)
    w = np.asarray(sw.weights, np.float32)
    edges = graph_edges(idx, w, len(lm))
    e = np.array(sorted(edges), np.int64).reshape(-1, 2)
    ew = np.array([edges[tuple(p)] for p in e], np.float32) if len(e) else np.zeros(0, np.float32)
    island = vertex_islands(mesh)
    n_isl = int(island.max()) + 1
    centres = np.stack([mesh.vertices[island == i].mean(0) for i in range(n_isl)])
    return DeformationGraph(
        island=torch.as_tensor(island, device=device),
        node_island=torch.as_tensor(island[lm], device=device),
        centres=torch.as_tensor(centres, dtype=torch.float32, device=device),
        nodes=torch.as_tensor(mesh.vertices[lm], dtype=torch.float32, device=device),
        node_vertex=torch.as_tensor(lm, device=device),
        idx=torch.as_tensor(idx, device=device),
        w=torch.as_tensor(w, device=device),
        edges=torch.as_tensor(e, device=device),
        edge_w=torch.as_tensor(ew / max(float(ew.max()), 1e-9) if len(ew) else ew, device=device),
    )


def vertex_islands(mesh: Mesh) -> np.ndarray:
    """(N,) int64 connected-component id of every vertex on the welded surface (seams joined)."""
    w = weld(mesh.vertices, mesh.faces)
    f = w.faces
    m = len(w.vertices)
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    _, lab = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(m, m)), directed=False)
    return lab[w.index].astype(np.int64)


def graph_edges(idx: np.ndarray, w: np.ndarray, k: int, min_w: float = 1e-3) -> dict[tuple[int, int], float]:
    """idx, w: (N, k_nn) -> {(a, b): weight} for node pairs that both influence a vertex.

    The weight sums min(w_a, w_b) over vertices: strongly co-influencing nodes are tied
    more tightly. Both directions are listed.
    """
    acc = np.zeros((k, k), np.float64)
    n, kk = idx.shape
    for a in range(kk):
        for b in range(a + 1, kk):
            m = (w[:, a] > min_w) & (w[:, b] > min_w)
            ia, ib = idx[m, a], idx[m, b]
            val = np.minimum(w[m, a], w[m, b])
            np.add.at(acc, (ia, ib), val)
            np.add.at(acc, (ib, ia), val)
    np.fill_diagonal(acc, 0)
    ii, jj = np.nonzero(acc)
    return {(int(a), int(b)): float(acc[a, b]) for a, b in zip(ii, jj)}


def deform(
    rest: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, nodes: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor
) -> torch.Tensor:
    """Embedded deformation of points.

    rest: (P, 3) rest positions; idx, w: (P, k) their nodes and weights; nodes: (K, 3);
    rot: (T, K, 3, 3); trans: (T, K, 3). Returns (T, P, 3).
    """
    # per-node affine: p -> R p + (g + t - R g); blend the affine maps, then apply once
    b = nodes + trans - torch.einsum("tkab,kb->tka", rot, nodes)  # (T, K, 3)
    Rw = (rot[:, idx] * w[None, :, :, None, None]).sum(2)  # (T, P, 3, 3)
    bw = (b[:, idx] * w[None, :, :, None]).sum(2)  # (T, P, 3)
    return torch.einsum("tpab,pb->tpa", Rw, rest) + bw
