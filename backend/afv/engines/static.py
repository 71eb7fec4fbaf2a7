"""`static`: zero motion. The baseline every engine must beat, and a cheap real engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..progress import Progress
from .base import EngineInput, EngineOutput


@dataclass
class StaticOptions:
    pass


class StaticEngine:
    name = "static"
    stages = {"static": 1.0}

    def __init__(self, options: StaticOptions | None = None) -> None:
        self.options = options or StaticOptions()

    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        progress.start("static")
        t, n = inp.clip.n_frames, inp.mesh.n_vertices
        return EngineOutput(
            displacements=np.zeros((t, n, 3), np.float32),
            confidence=np.ones((t, n), np.float32),
            camera=inp.camera,
        )
