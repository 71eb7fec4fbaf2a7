"""afv.fitting.optim: Adam against torch.optim.Adam, and the CUDA-graph step runner against eager steps.

The CUDA cases run on a GPU machine (the device tool) and are skipped elsewhere, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afv.fitting.optim import Adam, decay, run_steps
from afv.geometry.rotation import axis_angle_to_matrix

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs)")


def _problem(device: str):
    """A small least-squares fit through a non-linear map (points turned by axis-angles), like the
    fits'. Returns the parameters (w, u) and energy(w, u)."""
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(64, 3, generator=g).to(device)
    target = _rotate(pts, torch.randn(8, 3, generator=g).to(device) * 0.5)
    w = (0.01 * torch.randn(8, 3, generator=g)).to(device).requires_grad_(True)
    u = torch.zeros(3, device=device, requires_grad=True)

    def energy(w, u):
        return ((_rotate(pts, w) + u - target) ** 2).sum() + 0.01 * (u ** 2).sum()

    return w, u, energy


def _rotate(pts: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """pts (P, 3) rotated by each of the axis-angles w (K, 3) -> (K, P, 3)."""
    return torch.einsum("kab,pb->kpa", axis_angle_to_matrix(w), pts)


def test_adam_matches_torch_adam():
    """Same trajectory as torch.optim.Adam (constant rate) to float32 rounding, over 50 steps."""
    w, u, energy = _problem("cpu")
    w2, u2 = w.detach().clone().requires_grad_(True), u.detach().clone().requires_grad_(True)
    ours = Adam([w, u], [0.05, 0.05])
    ref = torch.optim.Adam([w2, u2], lr=0.05)
    for _ in range(50):
        ours.prepare(1.0)
        ours.update(list(torch.autograd.grad(energy(w, u), [w, u])))
        ref.zero_grad()
        energy(w2, u2).backward()
        ref.step()
    np.testing.assert_allclose(w.detach().numpy(), w2.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(u.detach().numpy(), u2.detach().numpy(), atol=2e-6)
    start = _problem("cpu")
    with torch.no_grad():
        assert float(energy(w, u)) < 0.5 * float(start[2](start[0], start[1]))  # it moved


def _adam_step(w, u, energy):
    """(opt, step): Adam on (w, u) and one step of it as run_steps wants it (energy, gradient, update)."""
    opt = Adam([w, u], [0.05, 0.05])

    def step():
        en = energy(w, u)
        opt.update(list(torch.autograd.grad(en, [w, u])))
        return en.detach()

    return opt, step


def test_run_steps_converges_and_the_schedule_decays():
    w, u, energy = _problem("cpu")
    opt, step = _adam_step(w, u, energy)
    seen = []
    first = float(energy(w, u).detach())
    last = run_steps(step, opt, 300, on_step=seen.append)
    assert seen == list(range(300)) and opt.k == 300
    assert float(last) < 1e-3 * first, (float(last), first)
    assert decay(0, 300) == 1.0 and abs(decay(300, 300) - 0.1) < 1e-12


@cuda
def test_cuda_graph_steps_equal_eager_steps():
    """The captured-and-replayed run gives the eager run's parameters (same kernels, same order)."""
    results = []
    for graph in (False, True):
        w, u, energy = _problem("cuda")
        opt, step = _adam_step(w, u, energy)
        en = run_steps(step, opt, 200, graph=graph)
        results.append((w.detach().cpu().numpy(), float(en)))
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-5)
    assert abs(results[1][1] - results[0][1]) <= 1e-5 * max(1.0, abs(results[0][1]))

