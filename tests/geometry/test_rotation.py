"""axis_angle_to_matrix against scipy, orthonormality, the smooth zero, gradients."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from afv.geometry.rotation import axis_angle_to_matrix


def test_matches_scipy_and_is_a_rotation(device, dtype):
    r = np.random.default_rng(0).normal(size=(64, 3)) * 1.5
    R = axis_angle_to_matrix(torch.as_tensor(r, dtype=dtype, device=device))
    assert R.shape == (64, 3, 3) and R.dtype == dtype and R.device.type == device.type
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert np.allclose(R.cpu().numpy(), Rotation.from_rotvec(r).as_matrix(), atol=tol)
    eye = torch.eye(3, dtype=dtype, device=device)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand_as(R), atol=tol)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64, dtype=dtype, device=device), atol=tol)


def test_batched_shape_and_round_trip_through_scipy():
    r = torch.tensor(np.random.default_rng(1).normal(size=(2, 5, 3)) * 0.8)
    R = axis_angle_to_matrix(r)
    assert R.shape == (2, 5, 3, 3)
    back = Rotation.from_matrix(R.reshape(-1, 3, 3).numpy()).as_rotvec().reshape(2, 5, 3)
    assert np.allclose(back, r.numpy(), atol=1e-10)


def test_zero_is_identity_with_finite_gradient():
    r = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    R = axis_angle_to_matrix(r)
    assert torch.equal(R.detach(), torch.eye(3, dtype=torch.float64))
    R.sum().backward()
    assert torch.isfinite(r.grad).all()


def test_gradcheck_away_from_and_near_zero():
    for scale in (1.0, 1e-5):
        r = torch.tensor(np.random.default_rng(2).normal(size=(4, 3)) * scale, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(axis_angle_to_matrix, (r,))
