"""Tracks output: per-vertex displacements over time, the product of every engine.

npz contract (docs/contracts.md), no pickles:
  displacements  float32 (T, N, 3)  mesh coordinates, relative to the input vertices
  frame_indices  int32   (T,)       indices into the source video
  fps            float64 ()         the source video's frame rate: track t is at time frame_indices[t] / fps
  confidence     float32 (T, N)     optional, in [0, 1]
  camera_K, camera_image_size, camera_mesh_to_camera (T,4,4)   optional estimated camera
  bone_rotations float32 (T, B, 4)  optional, when the mesh came with a rig: wxyz, afv.rig's FK
  root_translation float32 (T, 3)   optional, with bone_rotations
  meta           str ()             JSON: engine, version, parameters, timings
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .camera import Camera
from .errors import InputError
from .npz import read_npz


@dataclass
class Tracks:
    displacements: np.ndarray  # (T, N, 3) float32
    frame_indices: np.ndarray  # (T,) int32
    fps: float
    confidence: np.ndarray | None = None  # (T, N) float32
    camera: Camera | None = None  # estimated or used camera, at source-video resolution
    meta: dict = field(default_factory=dict)
    bone_rotations: np.ndarray | None = None  # (T, B, 4) float32 wxyz (docs/contracts.md, "Rig")
    root_translation: np.ndarray | None = None  # (T, 3) float32

    @property
    def n_frames(self) -> int:
        return int(self.displacements.shape[0])

    @property
    def n_vertices(self) -> int:
        return int(self.displacements.shape[1])

    def positions(self, rest_vertices: np.ndarray) -> np.ndarray:
        """(T, N, 3) absolute vertex positions given the rest vertices (N, 3)."""
        return rest_vertices[None] + self.displacements

    def validate(self, n_vertices: int | None = None) -> "Tracks":
        d = self.displacements
        if d.ndim != 3 or d.shape[2] != 3 or d.shape[0] == 0:
            raise InputError(f"displacements must be (T, N, 3) with T > 0, got {d.shape}")
        if n_vertices is not None and d.shape[1] != n_vertices:
            raise InputError(f"tracks have {d.shape[1]} vertices, the mesh has {n_vertices}")
        if not np.isfinite(d).all():
            raise InputError("displacements contain NaN or infinite values")
        if self.frame_indices.shape != (d.shape[0],):
            raise InputError(f"frame_indices must be ({d.shape[0]},), got {self.frame_indices.shape}")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"fps must be positive, got {self.fps}")
        if self.confidence is not None and self.confidence.shape != d.shape[:2]:
            raise InputError(f"confidence must be {d.shape[:2]}, got {self.confidence.shape}")
        if (self.bone_rotations is None) != (self.root_translation is None):
            raise InputError("bone_rotations and root_translation come together")
        if self.bone_rotations is not None:
            r, t = self.bone_rotations, self.root_translation
            if r.ndim != 3 or r.shape[0] != d.shape[0] or r.shape[2] != 4 or t.shape != (d.shape[0], 3):
                raise InputError(f"bone_rotations must be ({d.shape[0]}, B, 4) and root_translation ({d.shape[0]}, 3), got {r.shape} and {t.shape}")
            if not (np.isfinite(r).all() and np.isfinite(t).all()):
                raise InputError("bone_rotations or root_translation contain NaN or infinite values")
        return self

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename): no partial file on failure."""
        self.validate()
        arrays: dict[str, np.ndarray] = {
            "displacements": np.ascontiguousarray(self.displacements, dtype=np.float32),
            "frame_indices": np.asarray(self.frame_indices, dtype=np.int32),
            "fps": np.float64(self.fps),
            "meta": np.array(json.dumps(self.meta)),
        }
        if self.confidence is not None:
            arrays["confidence"] = np.asarray(self.confidence, dtype=np.float32)
        if self.camera is not None:
            arrays["camera_K"] = self.camera.K
            arrays["camera_image_size"] = np.asarray(self.camera.image_size, dtype=np.int32)
            arrays["camera_mesh_to_camera"] = self.camera.mesh_to_camera
        if self.bone_rotations is not None:
            arrays["bone_rotations"] = np.asarray(self.bone_rotations, dtype=np.float32)
            arrays["root_translation"] = np.asarray(self.root_translation, dtype=np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)


def load_tracks(source: str | Path | bytes, n_vertices: int | None = None) -> Tracks:
    """Read and validate a tracks npz (path or bytes) with allow_pickle=False."""
    data = read_npz(source)
    for key in ("displacements", "frame_indices", "fps"):
        if key not in data:
            raise InputError(f"tracks file lacks '{key}'")
    camera = None
    if "camera_K" in data:
        camera = Camera(
            tuple(int(x) for x in data["camera_image_size"]),  # type: ignore[arg-type]
            data["camera_K"].astype(np.float64),
            data["camera_mesh_to_camera"].astype(np.float64),
        )
    meta = json.loads(str(data["meta"])) if "meta" in data else {}
    return Tracks(
        displacements=data["displacements"].astype(np.float32),
        frame_indices=data["frame_indices"].astype(np.int32),
        fps=float(data["fps"]),
        confidence=data["confidence"].astype(np.float32) if "confidence" in data else None,
        camera=camera,
        meta=meta,
        bone_rotations=data["bone_rotations"].astype(np.float32) if "bone_rotations" in data else None,
        root_translation=data["root_translation"].astype(np.float32) if "root_translation" in data else None,
    ).validate(n_vertices)
