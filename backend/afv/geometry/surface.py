"""Points on a triangle surface (face + barycentrics) and vertex normals."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform random surface points, reproducible by seed.

    vertices: (N, 3); faces: (F, 3) -> face (n,) int64, bary (n, 3) float32 (corner weights,
    uniform over each triangle by folding the unit square onto it). A mesh of zero total area
    samples faces uniformly.
    """
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    p = area / area.sum() if area.sum() > 0 else None
    face = rng.choice(len(faces), n, p=p)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return face.astype(np.int64), np.stack([1 - u - v, u, v], 1).astype(np.float32)


def surface_points(vertices: Array, faces: Array, face: Array, bary: Array) -> Array:
    """Positions of fixed surface samples on (possibly deformed, batched) vertices.

    vertices: (..., N, 3); faces: (F, 3) int; face: (P,) int; bary: (P, 3). Returns (..., P, 3),
    so the samples follow any deformation of the vertices.
    """
    corners = vertices[..., faces[face], :]  # (..., P, 3, 3)
    return (corners * bary[:, :, None]).sum(-2)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """verts: (N, 3); faces: (F, 3) int -> (N, 3) area-weighted unit vertex normals."""
    faces = faces.long()
    tri = verts[faces]
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    n = torch.zeros_like(verts).index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)
