"""Adam for the fits' small problems, and a step runner that replays a CUDA graph on the GPU.

The fits are a few hundred steps of a few hundred small kernels each (forward kinematics level by
level, projections, silhouette lookups, their gradients): on a GPU each step is bound by kernel
launches, not arithmetic. `run_steps` captures one whole step (energy, gradient, Adam update) as
a CUDA graph after a short warm-up and replays it: one launch per step. Adam keeps its step
scalars in device tensors, so a captured step reads the current ones and nothing syncs with the
host. On the CPU the same step runs eagerly.
"""

from __future__ import annotations

from typing import Callable

import torch


class Adam:
    """Plain Adam on a few tensors with per-tensor learning rates (torch.optim's import of its
    compiler stack costs seconds on a small CPU; these loops need none of it)."""

    def __init__(self, params: list[torch.Tensor], lrs: list[float], betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lrs, self.b1, self.b2, self.eps = params, lrs, betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.k = 0
        dev = params[0].device
        self._step = torch.zeros((), device=dev)  # scale / (1 - b1^k): the bias-corrected step factor
        self._inv_c2 = torch.ones((), device=dev)  # 1 / (1 - b2^k)

    def prepare(self, scale: float = 1.0) -> None:
        """Set the next step's scalars (learning-rate scale, bias corrections) on the device."""
        self.k += 1
        self._step.fill_(scale / (1 - self.b1 ** self.k))
        self._inv_c2.fill_(1.0 / (1 - self.b2 ** self.k))

    @torch.no_grad()
    def update(self, grads: list[torch.Tensor]) -> None:
        """One Adam update from `grads` (one per parameter), in place; reads only device tensors."""
        for p, g, lr, m, v in zip(self.params, grads, self.lrs, self.m, self.v):
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.sub_(lr * self._step * m / ((v * self._inv_c2).sqrt() + self.eps))


def decay(it: int, iters: int) -> float:
    """The fits' learning-rate schedule: linear from 1 to 0.1 over the run."""
    return 1.0 - 0.9 * it / max(iters, 1)


def run_steps(step: Callable[[], torch.Tensor], opt: Adam, iters: int, *, graph: bool = False,
              on_step: Callable[[int], None] | None = None, warmup: int = 3) -> torch.Tensor | None:
    """Run `iters` optimisation steps; returns the last step's energy (a device scalar; None if iters is 0).

    step() computes the energy, its gradient (torch.autograd.grad) and calls opt.update; it must
    not sync with the host or change shapes between calls. graph=True (CUDA tensors only): the
    first `warmup` steps run eagerly, then one step is captured and replayed for the rest.
    on_step(it) runs between steps (progress, cancel).

    The warm-up runs on the current stream, not on a fresh side stream as in PyTorch's capture
    example: with a new side stream per call, memory of every call stayed allocated after it
    (+256 MiB per engine run on the H200, docs/engine_articulated.md); plain ops and autograd
    need no side stream before capture (torch.cuda.graph captures on its own stream)."""
    en = None
    use_graph = graph and iters > warmup and opt.params[0].is_cuda
    first = warmup if use_graph else iters
    for it in range(first):
        opt.prepare(decay(it, iters))
        en = step()
        if on_step is not None:
            on_step(it)
    if not use_graph:
        return en
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):  # records the kernels (running none); they read opt's scalars at replay
        en = step()
    for it in range(first, iters):
        opt.prepare(decay(it, iters))
        g.replay()
        if on_step is not None:
            on_step(it)
    return en

