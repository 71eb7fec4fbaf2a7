"""Welding and islands (afv.deform.weld, afv.deform.surface) on meshes built with known seams and parts."""

from __future__ import annotations

import numpy as np
import trimesh

from afv.deform import build_surface, weld
from afv.mesh import Mesh


def _grid(n=25, size=2.0):
    xs, ys = np.meshgrid(np.linspace(0, size, n), np.linspace(0, size, n))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)])
    return v, f


def _split_seam(v, f, n):
    """Duplicate the middle column of a grid: faces right of it use the copies (a UV seam)."""
    col = n // 2
    seam = np.arange(n) * n + col
    copies = len(v) + np.arange(n)
    v2 = np.concatenate([v, v[seam]])
    remap = np.arange(len(v))
    remap[seam] = copies
    right = (v[f].mean(1)[:, 0] > v[seam[0], 0])
    f2 = f.copy()
    f2[right] = remap[f[right]]
    return v2, f2, seam, copies


def _sphere(sub=2, centre=(0, 0, 0)):
    s = trimesh.creation.icosphere(subdivisions=sub)
    return np.asarray(s.vertices) + centre, np.asarray(s.faces)


def _mesh(v, f):
    return Mesh(np.asarray(v, np.float32), np.asarray(f, np.int32))


def test_weld_merges_duplicates_and_keeps_input_order():
    v, f = _grid(9)
    v2, f2, seam, copies = _split_seam(v, f, 9)
    w = weld(v2, f2)
    assert len(w.vertices) == len(v)
    np.testing.assert_array_equal(w.index[copies], w.index[seam])
    np.testing.assert_array_equal(w.index[: len(v)], np.arange(len(v)))
    np.testing.assert_allclose(w.vertices[w.index], v2, atol=1e-9)


def test_a_seam_does_not_split_the_surface():
    v, f = _grid(9)
    v2, f2, _, _ = _split_seam(v, f, 9)
    assert build_surface(_mesh(v2, f2)).n_islands == 1


def test_separate_parts_and_isolated_vertices_are_islands():
    a, fa = _sphere()
    b, fb = _sphere(centre=(2.05, 0, 0))  # close in space, separate surfaces
    v = np.concatenate([a, b, [[5.0, 5.0, 5.0]]])  # plus one vertex in no face
    f = np.concatenate([fa, fb + len(a)])
    s = build_surface(_mesh(v, f))
    assert s.n_islands == 3
    label = s.island[s.welded.index]
    assert len(set(label[: len(a)])) == 1 and len(set(label[len(a):-1])) == 1
    assert len({label[0], label[len(a)], label[-1]}) == 3


def test_zero_area_and_collapsed_faces_keep_connectivity_only():
    n = 11
    v, f = _grid(n)
    # a flap of zero area (collinear) hanging off corner vertex 0, reaching a vertex in no other
    # face; and a face that collapses after welding (two copies of one point)
    extra = np.array([[-0.5, 0.0, 0.0], [-1.0, 0.0, 0.0], v[5]])
    v2 = np.concatenate([v, extra])
    f2 = np.concatenate([f, [[0, len(v), len(v) + 1], [5, len(v) + 2, 6]]])
    s = build_surface(_mesh(v2, f2))
    assert s.n_islands == 1
    assert len(s.faces) == len(f) + 1  # the collapsed face is dropped, the sliver kept
