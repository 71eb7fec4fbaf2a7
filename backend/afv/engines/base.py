"""The interface every engine implements, and the data crossing it.

An engine turns an EngineInput (mesh, decoded clip, masks, optional camera, all at the
working resolution) into per-vertex displacements. It reports progress and honours
cancellation through the Progress object it is given. Engines hold no global state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from ..camera import Camera
from ..camera_motion import CameraMotion
from ..errors import InputError
from ..mesh import Mesh
from ..progress import Progress
from ..video import VideoClip


@dataclass
class EngineInput:
    mesh: Mesh
    clip: VideoClip
    masks: np.ndarray | None  # (T, H, W) bool at working resolution, True = object
    camera: Camera | None  # at working resolution; mesh_to_camera (1 or T, 4, 4)
    device: torch.device
    seed: int = 0
    up_axis: np.ndarray | None = None  # (3,) unit vector, mesh coordinates: the mesh's "up" in the world (None: unknown)
    first_pose: bool = False  # pose frame 0 to the video's first frame (retargeting); engines that cannot say so in a warning
    # Dev-only diagnosis (`afv bench --oracle`), never set by the product: ground-truth 2D tracks of
    # every mesh vertex, track i = vertex i (M = N), pixels at working resolution, and whether
    # vertex i is visible in frame t. Engines may use them in place of their own tracker.
    oracle_tracks: np.ndarray | None = None  # (T, N, 2) float32
    oracle_visible: np.ndarray | None = None  # (T, N) bool
    # The camera's own motion estimated from the background (afv.camera_motion) when no camera was given:
    # an engine that places the mesh itself (M_0: mesh -> camera 0) should use M_t = world_to_cam[t] @ M_0
    # so the pan is not baked into the object's motion. With a given camera the pipeline has already
    # composed it into `camera` (per-frame mesh_to_camera) and this is None.
    camera_motion: CameraMotion | None = None


@dataclass
class EngineOutput:
    displacements: np.ndarray  # (T, N, 3) float32, mesh coordinates, frame 0 is the rest pose (unless EngineInput.first_pose was honoured)
    confidence: np.ndarray | None = None  # (T, N) float32 in [0, 1]
    camera: Camera | None = None  # camera used or estimated, at working resolution
    info: dict[str, Any] = field(default_factory=dict)  # engine-specific diagnostics for meta
    bone_rotations: np.ndarray | None = None  # (T, B, 4) float32 wxyz, when the mesh came with a rig (afv.rig)
    root_translation: np.ndarray | None = None  # (T, 3) float32, with bone_rotations


class Engine(Protocol):
    """name: registry key; stages: {stage name: relative weight} for progress."""

    name: ClassVar[str]
    stages: ClassVar[dict[str, float]]

    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput: ...

    # Optional: `prefetch(device)`, called by the pipeline right after the engine is created and before
    # the video is decoded, so an engine with weights can start loading them in the background.


def parse_options(cls: type, options: dict[str, Any] | None) -> Any:
    """Build an options dataclass from a dict of user-given values (strings allowed).

    Unknown keys and values of the wrong type (a non-finite number, an int out of range, a
    word that is not a boolean) are InputErrors naming the option and the valid keys.
    """
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(options) - set(fields)
    if unknown:
        raise InputError(f"unknown engine option(s) {sorted(unknown)}", f"valid options: {sorted(fields)}")
    defaults = cls()
    kwargs = {}
    for key, value in options.items():
        default = getattr(defaults, key)
        try:
            kwargs[key] = _coerce(default, value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"engine option {key}={_short(value)} is not a valid {type(default).__name__}",
                             f"the default is {default!r}") from None
    return cls(**kwargs)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(default: Any, value: Any) -> Any:
    """value -> the type of `default`; raises ValueError when it does not fit."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(value)
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        out = int(value) if not isinstance(value, str) else int(value.strip())
        if abs(out) > 2**53:
            raise ValueError(value)
        return out
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(value)
        out = float(value)
        if not np.isfinite(out):
            raise ValueError(value)
        return out
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    return value


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."
