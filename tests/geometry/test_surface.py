"""Surface samples: area-uniform by construction, they follow deformations; vertex normals."""

from __future__ import annotations

import numpy as np
import torch

from afv.geometry.surface import sample_surface, surface_points, vertex_normals


def _two_triangles():
    # a unit square (area 1) and a 3x-wider triangle of area 1.5 next to it
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [5, 0, 0], [2, 1, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    return v, f


def test_samples_are_area_uniform_and_on_the_surface():
    v, f = _two_triangles()
    face, bary = sample_surface(v, f, 20000, seed=3)
    assert face.dtype == np.int64 and bary.dtype == np.float32
    assert (bary >= -1e-7).all() and np.allclose(bary.sum(1), 1, atol=1e-6)
    # area shares: 0.5, 0.5, 1.5 out of 2.5
    share = np.bincount(face, minlength=3) / len(face)
    assert np.allclose(share, [0.2, 0.2, 0.6], atol=0.015)
    # uniform within a triangle: the centroid of the samples is the triangle's centroid
    p = surface_points(v, f, face, bary)
    assert np.allclose(p[face == 2].mean(0), v[f[2]].mean(0), atol=0.02)
    # reproducible by seed, different otherwise
    assert np.array_equal(sample_surface(v, f, 50, seed=3)[0], face[:50])
    assert not np.array_equal(sample_surface(v, f, 50, seed=4)[1], bary[:50])


def test_samples_follow_a_deformation_numpy_and_torch_batched():
    v, f = _two_triangles()
    face, bary = sample_surface(v, f, 100)
    A = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # any linear map commutes with barycentrics
    moved = np.stack([v, v @ A.T + [0, 0, 2]])
    p = surface_points(moved, f, face, bary)
    assert p.shape == (2, 100, 3)
    assert np.allclose(p[1], p[0] @ A.T + [0, 0, 2], atol=1e-6)
    pt = surface_points(torch.as_tensor(moved), torch.as_tensor(f), torch.as_tensor(face), torch.as_tensor(bary))
    assert np.allclose(pt.numpy(), p)


def test_vertex_normals_of_a_cube_point_outwards(device, dtype):
    import trimesh

    box = trimesh.creation.box()
    v = torch.as_tensor(box.vertices, dtype=dtype, device=device)
    n = vertex_normals(v, torch.as_tensor(box.faces, device=device))
    assert n.dtype == dtype
    assert torch.allclose(n.norm(dim=1), torch.ones(len(v), dtype=dtype, device=device), atol=1e-6)
    # corners of a centred box: the normal points along the corner direction
    assert ((n * v).sum(1) > 0.5 * v.norm(dim=1)).all()
