"""Meshes with known structure for the deform tests: a flat grid, the grid with a UV seam, an icosphere."""

from __future__ import annotations

import numpy as np
import trimesh

from afv.mesh import Mesh


def grid(n=25, size=2.0):
    xs, ys = np.meshgrid(np.linspace(0, size, n), np.linspace(0, size, n))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)])
    return v, f


def split_seam(v, f, n):
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


def sphere(sub=2, centre=(0, 0, 0)):
    s = trimesh.creation.icosphere(subdivisions=sub)
    return np.asarray(s.vertices) + centre, np.asarray(s.faces)


def as_mesh(v, f):
    return Mesh(np.asarray(v, np.float32), np.asarray(f, np.int32))
