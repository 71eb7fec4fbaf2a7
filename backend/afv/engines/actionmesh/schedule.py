"""Flow-matching schedule of the reference (shift 3, 1000 training steps) and its window split.

The schedule applies the shift twice, as the reference does: once to the end points, once to the
linearly spaced times. It ends at 8.93 (not 0), and a step is x <- x + (t_k - t_{k+1})/1000 * v.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FULL_STEPS = 30
FAST_STEPS = 15


@dataclass(frozen=True)
class FlowSchedule:
    timesteps: torch.Tensor  # (n+1,) float32, on the 0..1000 scale, first 1000
    distances: torch.Tensor  # (n,) float32, (t_k - t_{k+1}) / 1000

    @property
    def n_steps(self) -> int:
        return int(self.distances.shape[0])

    @property
    def sigmas(self) -> torch.Tensor:
        return self.timesteps / 1000.0


def flow_schedule(n_steps: int, shift: float = 3.0, train_steps: int = 1000) -> FlowSchedule:
    """n_steps denoising steps -> n_steps + 1 timesteps (float64 arithmetic, stored as float32)."""
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")

    def shifted(s: np.ndarray) -> np.ndarray:
        return shift * s / (1 + (shift - 1) * s)

    full = shifted((np.linspace(1, train_steps, train_steps) / train_steps)[::-1])
    t = np.linspace(full[0] * train_steps, full[-1] * train_steps, n_steps + 1)
    timesteps = torch.from_numpy((shifted(t / train_steps) * train_steps).astype(np.float32))
    return FlowSchedule(timesteps, (timesteps[:-1] - timesteps[1:]) / train_steps)


def windows(n_frames: int, size: int = 16, slide: int = 15) -> list[list[int]]:
    """Overlapping windows anchored on frame 0 (the reference's long-clip mode).

    The first window is frames 0..size-1; each next one ends `slide` frames later (clipped to the
    clip's end) and starts `size` frames before its end, so it overlaps the frames already made.
    """
    if n_frames <= size:
        return [list(range(n_frames))]
    out: list[list[int]] = []
    end = 0
    while end < n_frames:
        end = min(size, n_frames) if not out else min(end + slide, n_frames)
        out.append(list(range(max(0, end - size), end)))
    return out
