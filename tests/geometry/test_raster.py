"""The rasteriser against analytic geometry."""

from __future__ import annotations

import torch

from afv.geometry.raster import interpolate, rasterize, visible_vertices

K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])


def square(z: float, half: float) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v, f


def test_square_coverage_depth_and_barycentrics():
    v, f = square(2.0, 0.5)  # projects to [25, 75)^2 pixels
    r = rasterize(v, f, K, (100, 100))
    assert int(r.mask.sum()) == 50 * 50
    assert torch.allclose(r.depth[r.mask], torch.tensor(2.0))
    # interpolated x coordinate at pixel centre u is (u + 0.5 - 50) / 100 * z
    x = interpolate(r, v, f)[..., 0]
    u = torch.arange(100).float() + 0.5
    expect = ((u - 50) / 100 * 2.0)[None].expand(100, 100)
    assert torch.allclose(x[r.mask], expect[r.mask], atol=1e-5)


def test_zbuffer_keeps_nearest_and_visibility():
    near, f = square(2.0, 0.25)
    far, _ = square(4.0, 1.0)
    v = torch.cat([near, far])
    faces = torch.cat([f, f + 4])
    r = rasterize(v, faces, K, (100, 100))
    assert torch.allclose(r.depth[50, 50], torch.tensor(2.0))
    assert torch.allclose(r.depth[30, 30], torch.tensor(4.0))
    assert torch.isinf(r.depth[5, 5]) and r.face_id[5, 5] == -1
    vis = visible_vertices(r, v, K)
    assert vis[:4].all()
    # far corners project 25 px from the centre, outside the near square: visible
    assert vis[4:].all()
    # a point right behind the near square is hidden
    behind = torch.tensor([[0.0, 0.0, 3.0]])
    assert not visible_vertices(r, behind, K).item()
