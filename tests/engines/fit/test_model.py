"""The fit's deformation model: the graph follows the surface, the embedded deformation is exact
for rigid motions and interpolates node motion."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from afv.engines.fit.model import build_graph, deform, graph_edges, vertex_islands
from afv.geometry.rotation import axis_angle_to_matrix
from afv.mesh import Mesh


def _two_boxes() -> Mesh:
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.box(extents=(1, 1, 1))
    b.apply_translation((3, 0, 0))
    v = np.concatenate([a.vertices, b.vertices]).astype(np.float32)
    f = np.concatenate([a.faces, b.faces + len(a.vertices)]).astype(np.int64)
    return Mesh(v, f)


def test_islands_and_graph_never_join_separate_parts():
    mesh = _two_boxes()
    isl = vertex_islands(mesh)
    assert sorted(np.bincount(isl).tolist()) == [8, 8]
    g = build_graph(mesh, 8, 4, torch.device("cpu"))
    assert g.n_islands == 2 and g.n_nodes == 8
    ni = g.node_island.numpy()
    e = g.edges.numpy()
    assert len(e) and (ni[e[:, 0]] == ni[e[:, 1]]).all()  # no edge between the boxes
    # every vertex is skinned only to nodes on its own part, weights normalised
    assert (ni[g.idx.numpy()][g.w.numpy() > 0] == np.repeat(g.island.numpy()[:, None], g.idx.shape[1], 1)[g.w.numpy() > 0]).all()
    assert torch.allclose(g.w.sum(1), torch.ones(len(mesh.vertices)), atol=1e-5)
    assert torch.allclose(g.centres, torch.tensor([[0.0, 0, 0], [3.0, 0, 0]]), atol=1e-6)


def test_graph_edges_are_symmetric_and_weighted_by_shared_influence():
    idx = np.array([[0, 1], [0, 1], [1, 2]])
    w = np.array([[0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    e = graph_edges(idx, w, 3)
    assert e == {(0, 1): 0.6, (1, 0): 0.6, (1, 2): 0.3, (2, 1): 0.3}


def test_deform_is_exact_for_a_rigid_motion_and_identity_at_rest():
    rng = np.random.default_rng(0)
    P, K, k = 50, 6, 3
    rest = torch.tensor(rng.normal(size=(P, 3)))
    nodes = torch.tensor(rng.normal(size=(K, 3)))
    idx = torch.tensor(rng.integers(0, K, size=(P, k)))
    w = torch.tensor(rng.random((P, k)))
    w = w / w.sum(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64).expand(1, K, 3, 3)
    assert torch.allclose(deform(rest, idx, w, nodes, eye, torch.zeros(1, K, 3, dtype=torch.float64))[0], rest)
    R = axis_angle_to_matrix(torch.tensor([0.4, 0.1, -0.7], dtype=torch.float64))
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    trans = (nodes @ R.T + c - nodes)[None]  # every node: x -> R x + c
    out = deform(rest, idx, w, nodes, R.expand(1, K, 3, 3), trans)[0]
    assert torch.allclose(out, rest @ R.T + c, atol=1e-12)


def test_deform_blends_node_translations_by_weight():
    rest = torch.zeros(1, 3, dtype=torch.float64)
    nodes = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    idx = torch.tensor([[0, 1]])
    w = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(1, 2, 3, 3)
    trans = torch.tensor([[[0.0, 4.0, 0.0], [0.0, 0.0, 8.0]]], dtype=torch.float64)
    assert torch.allclose(deform(rest, idx, w, nodes, eye, trans)[0, 0], torch.tensor([0.0, 1.0, 6.0], dtype=torch.float64))
