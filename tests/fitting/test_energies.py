"""The fit's energy terms on cases with known answers: zero at the truth, the right value off it,
finite gradients, and blindness to exactly what each term must not see."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afv.fitting import energies as E
from afv.geometry.rotation import axis_angle_to_matrix


def test_huber_is_quadratic_then_linear_and_continuous():
    r = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    assert torch.allclose(E.huber(r, 2.0), torch.tensor([0.0, 0.5, 2.0, 2.0 * (5.0 - 1.0)], dtype=torch.float64))
    eps = 1e-9
    a, b = E.huber(torch.tensor([2.0 - eps, 2.0 + eps], dtype=torch.float64), 2.0)
    assert abs(float(a - b)) < 1e-8


def test_track_energy_value_weights_and_gradient():
    obs = torch.zeros(2, 3, 2, dtype=torch.float64)
    uv = obs.clone()
    uv[0, 0] = torch.tensor([1.0, 0.0])  # 1 px off: Huber 0.5
    uv[1, 2] = torch.tensor([30.0, 40.0])  # dead track, weight 0: ignored
    w = torch.ones(2, 3, dtype=torch.float64)
    w[1, 2] = 0
    uv.requires_grad_(True)
    e = E.track_energy(uv, obs, w)
    assert float(e.detach()) == pytest.approx(0.5 / 5, rel=1e-6)
    e.backward()
    assert uv.grad[1, 2].abs().sum() == 0 and uv.grad[0, 0, 0] > 0  # pulls the point back towards obs
    assert float(E.track_energy(obs, obs, w)) < 1e-8


def test_inside_energy_zero_inside_the_mask_and_growing_outside():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 5:15, 5:15] = True
    from afv.fitting.silhouette import distance_outside

    dist = torch.as_tensor(distance_outside(mask[0]))[None]
    fw = torch.ones(1)
    inside = torch.tensor([[[10.0, 10.0], [6.0, 14.0]]])
    assert float(E.inside_energy(inside, dist, fw)) == 0.0
    near, far = torch.tensor([[[17.5, 10.5]]]), torch.tensor([[[19.5, 10.5]]])
    assert 0 < float(E.inside_energy(near, dist, fw)) < float(E.inside_energy(far, dist, fw))
    assert float(E.inside_energy(far, dist, torch.zeros(1))) == 0.0  # frame without mask: no evidence


def test_coverage_energy_needs_every_mask_sample_covered():
    targets = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    tw = torch.ones(1, 2)
    fw = torch.ones(1)
    both = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 0.0]]])
    one = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])  # the second sample is 9 px from any point
    assert float(E.coverage_energy(targets, tw, both, fw)) == 0.0
    assert float(E.coverage_energy(targets, tw, one, fw)) == pytest.approx(E.huber(torch.tensor(9.0), 3.0).item() / 2)


def test_arap_is_blind_to_one_rigid_motion_of_all_nodes_and_sees_bending():
    g = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=torch.float64)
    edges = torch.tensor([[0, 1], [1, 0], [1, 2], [2, 1]])
    ew = torch.ones(4, dtype=torch.float64)
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    c = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    # x -> R x + c as per-node (R, t_k) with t_k = R g_k + c - g_k
    rot = R.expand(1, 3, 3, 3)
    trans = (g @ R.T + c - g)[None]
    assert float(E.arap_energy(g, rot, trans, edges, ew)) < 1e-20
    bent = trans.clone()
    bent[0, 2, 1] += 0.1  # the last node moves alone
    assert float(E.arap_energy(g, rot, bent, edges, ew)) > 1e-4


def test_temporal_energy_zero_for_constant_velocity_acceleration_only():
    t = torch.arange(5, dtype=torch.float64)[:, None, None]
    x = t * torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)  # (5, 1, 3) constant velocity
    assert float(E.temporal_energy(x, 0.0, 1.0)) == 0.0
    assert float(E.temporal_energy(x, 1.0, 0.0)) == pytest.approx(4 * 5.0)
    x2 = x.clone()
    x2[2] += 1.0  # a kick at t=2: accelerations +1, -2, +1 per coordinate
    assert float(E.temporal_energy(x2, 0.0, 1.0)) == pytest.approx(3 * (1 + 4 + 1))


def test_depth_energy_sees_only_motion_along_the_ray():
    ref = torch.tensor([[[0.0, 0.0, 5.0], [3.0, 4.0, 0.0]]], dtype=torch.float64)
    across = ref + torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]], dtype=torch.float64)
    along = ref + torch.tensor([[[0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]], dtype=torch.float64)
    assert float(E.depth_motion_energy(across, ref)) < 1e-20
    assert float(E.depth_motion_energy(along, ref)) == pytest.approx(1.0)


def test_image_sampling_follows_the_pixel_centre_convention():
    img = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4)  # value = 4 y + x
    uv = torch.tensor([[[0.5, 0.5], [2.5, 1.5], [1.0, 0.5]]], dtype=torch.float64)
    assert torch.allclose(E.sample_image(img, uv), torch.tensor([[0.0, 6.0, 0.5]], dtype=torch.float64))
    ch = E.sample_channels(torch.stack([img, 2 * img], 1), uv)
    assert ch.shape == (1, 3, 2) and torch.allclose(ch[..., 1], 2 * ch[..., 0])
