"""Stage I sampling: flow matching with classifier-free guidance, known frames held fixed.

Guidance rows: [zeroed image context, full context], both with the known latents and mask;
v = v_uncond + scale (v_cond - v_uncond). Only frames with mask 0 are updated; known frames
(the anchor, and in long clips the frames an earlier window made) are fed as they are at every
step with time 0 and never change.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from .schedule import FlowSchedule

GUIDANCE_SCALE = 7.5


class VelocityModel(Protocol):
    def __call__(self, latents: torch.Tensor, context: torch.Tensor, framestep: torch.Tensor,
                 t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


def guided_velocity(model: VelocityModel, latents: torch.Tensor, context: torch.Tensor, framestep: torch.Tensor,
                    t: torch.Tensor, mask: torch.Tensor, scale: float = GUIDANCE_SCALE,
                    sequential: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One CFG evaluation. latents (1, T, N, C), context (1, T, S, D), framestep/mask (1, T), t scalar.

    Returns (v_uncond, v_cond, v_guided), each (1, T, N, C) float32. `sequential` runs the two rows
    one after the other (low-memory mode) instead of as one batch of 2.
    """
    uncond = torch.zeros_like(context)
    t = t.reshape(1)
    if sequential:
        v0 = model(latents, uncond, framestep, t, mask).float()
        v1 = model(latents, context, framestep, t, mask).float()
    else:
        v = model(torch.cat([latents, latents]), torch.cat([uncond, context]), torch.cat([framestep, framestep]),
                  t.expand(2), torch.cat([mask, mask])).float()
        v0, v1 = v[:1], v[1:]
    return v0, v1, v0 + scale * (v1 - v0)


def sample(model: VelocityModel, init_latent: torch.Tensor, context: torch.Tensor, framestep: torch.Tensor,
           mask: torch.Tensor, schedule: FlowSchedule, scale: float = GUIDANCE_SCALE, sequential: bool = False,
           on_step: Callable[[int, int, dict[str, torch.Tensor]], None] | None = None) -> torch.Tensor:
    """Integrate from `init_latent` (1, T, N, C) (known frames already in place) -> latents (1, T, N, C) float32.

    mask (1, T): 1 = known. `on_step(k, n, tensors)` runs after each step (progress, cancel, capture).
    """
    latents = init_latent.float().clone()
    free = mask[0] == 0  # (T,)
    ts = schedule.timesteps.to(latents.device)
    dist = schedule.distances.to(latents.device)
    for k in range(schedule.n_steps):
        v0, v1, v = guided_velocity(model, latents, context, framestep, ts[k], mask, scale, sequential)
        latents[:, free] = (latents + dist[k] * v)[:, free]
        if on_step is not None:
            on_step(k, schedule.n_steps, {"v_uncond": v0, "v_cond": v1, "v_guided": v, "latents_after": latents})
    return latents


def initial_latent(known: torch.Tensor, mask: torch.Tensor, tokens: int, channels: int,
                   generator: torch.Generator) -> torch.Tensor:
    """known (1, T, N, C) (zeros where unknown), mask (1, T) -> known*mask + noise*(1-mask).

    Draws like the reference: first a (1, 1, N, C) block (its correlated-noise share, weight 0, so
    unused), then the (1, T, N, C) noise, both from `generator` on the generator's device.
    """
    T = mask.shape[1]
    dev = generator.device
    torch.randn((1, 1, tokens, channels), generator=generator, device=dev)
    noise = torch.randn((1, T, tokens, channels), generator=generator, device=dev).to(known.device)
    m = mask[..., None, None].to(known.dtype)
    return known * m + noise * (1 - m)
