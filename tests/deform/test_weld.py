"""Welding and islands (afv.deform.weld, afv.deform.surface) on meshes built with known seams and parts."""

from __future__ import annotations

import numpy as np

from afv.deform import build_surface, weld
from deform_meshes import as_mesh, grid, sphere, split_seam


def test_weld_merges_duplicates_and_keeps_input_order():
    v, f = grid(9)
    v2, f2, seam, copies = split_seam(v, f, 9)
    w = weld(v2, f2)
    assert len(w.vertices) == len(v)
    np.testing.assert_array_equal(w.index[copies], w.index[seam])
    np.testing.assert_array_equal(w.index[: len(v)], np.arange(len(v)))
    np.testing.assert_allclose(w.vertices[w.index], v2, atol=1e-9)


def test_a_seam_does_not_split_the_surface():
    v, f = grid(9)
    v2, f2, _, _ = split_seam(v, f, 9)
    assert build_surface(as_mesh(v2, f2)).n_islands == 1


def test_separate_parts_and_isolated_vertices_are_islands():
    a, fa = sphere()
    b, fb = sphere(centre=(2.05, 0, 0))  # close in space, separate surfaces
    v = np.concatenate([a, b, [[5.0, 5.0, 5.0]]])  # plus one vertex in no face
    f = np.concatenate([fa, fb + len(a)])
    s = build_surface(as_mesh(v, f))
    assert s.n_islands == 3
    label = s.island[s.welded.index]
    assert len(set(label[: len(a)])) == 1 and len(set(label[len(a):-1])) == 1
    assert len({label[0], label[len(a)], label[-1]}) == 3


def test_zero_area_and_collapsed_faces_keep_connectivity_only():
    n = 11
    v, f = grid(n)
    # a flap of zero area (collinear) hanging off corner vertex 0, reaching a vertex in no other
    # face; and a face that collapses after welding (two copies of one point)
    extra = np.array([[-0.5, 0.0, 0.0], [-1.0, 0.0, 0.0], v[5]])
    v2 = np.concatenate([v, extra])
    f2 = np.concatenate([f, [[0, len(v), len(v) + 1], [5, len(v) + 2, 6]]])
    s = build_surface(as_mesh(v2, f2))
    assert s.n_islands == 1
    assert len(s.faces) == len(f) + 1  # the collapsed face is dropped, the sliver kept
