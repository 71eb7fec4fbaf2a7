"""transform_points / project_points: round trips, batching, numpy == torch, gradients."""

from __future__ import annotations

import numpy as np
import torch

from afv.camera import intrinsics, look_at
from afv.geometry.projection import project_points, transform_points

K = intrinsics(320, 240, 50.0)


def _random_rigid(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = q, rng.normal(size=3)
    return M


def test_transform_round_trip_and_batched_matches_loop(device, dtype):
    rng = np.random.default_rng(0)
    Ms = np.stack([_random_rigid(rng) for _ in range(4)])
    p = rng.normal(size=(4, 50, 3))
    pt = torch.as_tensor(p, dtype=dtype, device=device)
    Mt = torch.as_tensor(Ms, dtype=dtype, device=device)
    out = transform_points(pt, Mt)
    assert out.shape == (4, 50, 3) and out.dtype == dtype and out.device.type == device.type
    loop = torch.stack([transform_points(pt[t], Mt[t]) for t in range(4)])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out, loop, atol=tol)
    back = transform_points(out, torch.linalg.inv(Mt))
    assert torch.allclose(back, pt, atol=10 * tol)


def test_numpy_and_torch_give_the_same_numbers():
    rng = np.random.default_rng(1)
    M = _random_rigid(rng)
    p = rng.normal(size=(100, 3)) + [0, 0, 6]
    a = project_points(transform_points(p, M), K)
    b = project_points(transform_points(torch.as_tensor(p), torch.as_tensor(M)), torch.as_tensor(K)).numpy()
    assert np.allclose(a, b, rtol=0, atol=1e-12)


def test_projection_of_known_points():
    # the principal point and a point one focal length off-axis at depth 1
    p = np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 1.0]])
    uv = project_points(p, K)
    assert np.allclose(uv[0], K[:2, 2])
    assert np.allclose(uv[1], [K[0, 2] + K[0, 0], K[1, 2] - 0.5 * K[1, 1]])
    # a camera looking at the origin sees it at the principal point
    M = look_at(np.array([0.0, 1.0, 5.0]), np.zeros(3))
    assert np.allclose(project_points(transform_points(np.zeros((1, 3)), M), K), K[:2, 2])


def test_depth_floor_keeps_points_behind_finite():
    p = torch.tensor([[0.3, 0.2, -1.0], [0.3, 0.2, 0.0]], dtype=torch.float64)
    uv = project_points(p, torch.as_tensor(K), min_depth=1e-4)
    assert torch.isfinite(uv).all()
    assert torch.allclose(uv[0], uv[1])  # both clamped to the same depth


def test_projection_gradcheck():
    rng = np.random.default_rng(2)
    p = torch.tensor(rng.normal(size=(5, 3)) + [0, 0, 4], dtype=torch.float64, requires_grad=True)
    Kt = torch.tensor(K, dtype=torch.float64, requires_grad=True)
    M = torch.tensor(_random_rigid(rng), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: project_points(a, b), (p, Kt))
    assert torch.autograd.gradcheck(lambda a, b: transform_points(a, b), (p, M))
