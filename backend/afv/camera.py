"""Pinhole camera in OpenCV convention (x right, y down, z forward), pixels.

JSON contract (docs/contracts.md):
  {"image_size": [W, H], "K": [[fx,0,cx],[0,fy,cy],[0,0,1]],
   "mesh_to_camera": 4x4 | [4x4, ...]  (one matrix, or one per selected frame)}
`mesh_to_camera` maps the mesh's own coordinates to camera coordinates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Camera:
    image_size: tuple[int, int]  # (W, H) in pixels
    K: np.ndarray  # (3, 3) float64 intrinsics in pixels
    mesh_to_camera: np.ndarray  # (T, 4, 4) float64, T == 1 means static

    def pose(self, t: int) -> np.ndarray:
        """(4, 4) mesh-to-camera transform of frame t (static cameras repeat)."""
        return self.mesh_to_camera[min(t, len(self.mesh_to_camera) - 1)]

    def scaled(self, sx: float, sy: float | None = None) -> "Camera":
        """The same camera for an image resized by (sx, sy)."""
        sy = sx if sy is None else sy
        S = np.diag([sx, sy, 1.0])
        w, h = self.image_size
        return replace(self, image_size=(int(round(w * sx)), int(round(h * sy))), K=S @ self.K)

    def with_frames(self, n: int) -> "Camera":
        """Broadcast a static pose to n frames (or check a per-frame one)."""
        if len(self.mesh_to_camera) == n:
            return self
        if len(self.mesh_to_camera) == 1:
            return replace(self, mesh_to_camera=np.repeat(self.mesh_to_camera, n, axis=0))
        raise InputError(f"camera has {len(self.mesh_to_camera)} poses but {n} frames are selected")

    def to_json(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "K": self.K.tolist(),
            "mesh_to_camera": self.mesh_to_camera[0].tolist() if len(self.mesh_to_camera) == 1 else self.mesh_to_camera.tolist(),
        }


def camera_from_dict(d: dict) -> Camera:
    try:
        size = tuple(int(x) for x in d["image_size"])
        K = np.asarray(d["K"], dtype=np.float64)
        M = np.asarray(d["mesh_to_camera"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"camera JSON is malformed: {exc}", "expected keys image_size, K, mesh_to_camera") from None
    if len(size) != 2 or min(size) <= 0 or max(size) > 32768:
        raise InputError(f"camera image_size must be [W, H] positive, got {list(size)}")
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError("camera K must be a finite 3x3 matrix with positive focal lengths")
    if M.shape == (4, 4):
        M = M[None]
    if M.ndim != 3 or M.shape[1:] != (4, 4) or len(M) == 0 or len(M) > 100_000:
        raise InputError(f"camera mesh_to_camera must be 4x4 or (T,4,4), got {M.shape}")
    if not np.isfinite(M).all():
        raise InputError("camera mesh_to_camera contains NaN or infinite values")
    return Camera(size, K, M)  # type: ignore[arg-type]


def load_camera(path: str | Path) -> Camera:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"camera file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"camera file {path.name} is not valid JSON: {exc}") from None
    return camera_from_dict(d)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """(4, 4) world-to-camera (OpenCV) for a camera at `eye` looking at `target`, `up` up."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)  # right-handed: x = y_down x z_forward
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def intrinsics(width: int, height: int, fov_y_deg: float) -> np.ndarray:
    """(3, 3) K for a centred principal point and a vertical field of view."""
    fy = 0.5 * height / np.tan(np.radians(fov_y_deg) / 2)
    return np.array([[fy, 0, width / 2], [0, fy, height / 2], [0, 0, 1.0]])


def default_camera(mesh_vertices: np.ndarray, size=(256, 256), fov=40.0, direction=(0.6, -0.5, 1.0), dist_factor=2.2) -> Camera:
    """Static camera framing the object from `direction` (mesh coords, +y up)."""
    c = 0.5 * (mesh_vertices.min(0) + mesh_vertices.max(0))
    r = np.linalg.norm(mesh_vertices.max(0) - mesh_vertices.min(0)) / 2
    d = np.asarray(direction, float)
    eye = c + d / np.linalg.norm(d) * r * dist_factor / np.tan(np.radians(fov) / 2) * 0.6
    return Camera(size, intrinsics(*size, fov), look_at(eye, c)[None])
