"""The silhouette energy terms on cases with known answers: zero at the truth, the right value off
it, and blindness to frames without evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afv.fitting import energies as E


def test_huber_is_quadratic_then_linear_and_continuous():
    r = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    assert torch.allclose(E.huber(r, 2.0), torch.tensor([0.0, 0.5, 2.0, 2.0 * (5.0 - 1.0)], dtype=torch.float64))
    eps = 1e-9
    a, b = E.huber(torch.tensor([2.0 - eps, 2.0 + eps], dtype=torch.float64), 2.0)
    assert abs(float(a - b)) < 1e-8


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


def test_image_sampling_follows_the_pixel_centre_convention():
    img = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4)  # value = 4 y + x
    uv = torch.tensor([[[0.5, 0.5], [2.5, 1.5], [1.0, 0.5]]], dtype=torch.float64)
    assert torch.allclose(E.sample_image(img, uv), torch.tensor([[0.0, 6.0, 0.5]], dtype=torch.float64))
