"""Pictures a person looks at: a contact sheet of video frames with the animated mesh overlaid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from .atomic import atomic_path
from .camera import Camera, default_camera, intrinsics, look_at
from .geometry.projection import transform_points
from .geometry.raster import interpolate, rasterize
from .geometry.surface import vertex_normals
from .mesh import Mesh, load_mesh
from .video import load_video


def shade_mesh(
    verts_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int],
    colour=(0.95, 0.6, 0.2), vertex_colours: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a Lambert-shaded mesh (one colour, or vertex_colours (N, 3) in [0, 1]).

    Returns (H, W, 3) float RGB in [0, 1] (0 where uncovered) and (H, W) bool coverage.
    """
    v = torch.as_tensor(verts_cam, dtype=torch.float32)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    r = rasterize(v, f, torch.as_tensor(K, dtype=torch.float32), size)
    n = torch.nn.functional.normalize(interpolate(r, vertex_normals(v, f), f), dim=-1)
    view = torch.nn.functional.normalize(-interpolate(r, v, f), dim=-1)
    lam = (n * view).sum(-1).abs().numpy()[..., None]
    if vertex_colours is None:
        base = np.broadcast_to(np.asarray(colour, np.float32), lam.shape[:2] + (3,))
    else:
        base = interpolate(r, torch.as_tensor(vertex_colours, dtype=torch.float32), f).numpy()
    img = (0.35 + 0.65 * lam) * base
    return img, r.mask.numpy()


def overlay_frames(
    frames: np.ndarray, mesh: Mesh, positions: np.ndarray, camera: Camera | None, alpha: float = 0.55,
    camera_override: Camera | None = None,
) -> np.ndarray:
    """frames: (T, H, W, 3) uint8; positions: (T, N, 3) mesh coordinates; camera at the frames' size.

    With a camera the mesh is drawn over the frame; without one it is drawn from a
    default view on a grey tile beside nothing (same size as the frame).
    """
    T, H, W = frames.shape[:3]
    out = []
    for t in range(T):
        if camera is not None:
            M = camera.pose(t)
            K, bg = camera.K, frames[t].astype(np.float32) / 255
        else:
            cam = camera_override or default_camera(mesh.vertices, (W, H))
            M, K, bg = cam.pose(0), cam.K, np.full((H, W, 3), 0.25, np.float32)
        pc = transform_points(positions[t], M)
        img, m = shade_mesh(pc, mesh.faces, K, (W, H))
        comp = bg.copy()
        comp[m] = (1 - alpha) * bg[m] + alpha * img[m] if camera is not None else img[m]
        out.append(np.clip(comp * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def side_view(mesh: Mesh, positions: np.ndarray, camera: Camera | None, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8: the animated mesh seen from 90 degrees beside the video camera.

    Motion along the camera's rays is invisible in the overlay; this view shows it.
    """
    W, H = size
    c = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    if camera is not None:  # video camera's right axis, in mesh coordinates
        R = camera.pose(0)[:3, :3]
        right, down = R[0], R[1]
        eye_dir, up = right, -down
    else:
        eye_dir, up = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    extent = np.linalg.norm(positions.reshape(-1, 3).max(0) - positions.reshape(-1, 3).min(0))
    fov = 40.0
    dist = 0.65 * extent / np.tan(np.radians(fov) / 2)
    side_cam = Camera((W, H), intrinsics(W, H, fov), look_at(c + eye_dir * dist, c, up)[None])
    return overlay_frames(np.zeros((len(positions), H, W, 3), np.uint8), mesh, positions, None, camera_override=side_cam)


def contact_sheet(rows: list[np.ndarray], labels: list[str], max_cols: int = 8, tile_width: int = 256) -> np.ndarray:
    """rows: each (T, H, W, 3) uint8 with the same T; picks up to max_cols evenly spaced frames."""
    T = rows[0].shape[0]
    cols = np.unique(np.linspace(0, T - 1, min(max_cols, T)).round().astype(int))
    sheet_rows = []
    for row, label in zip(rows, labels):
        tiles = []
        for c in cols:
            tile = row[c]
            s = tile_width / tile.shape[1]
            tile = cv2.resize(tile, (tile_width, max(1, round(tile.shape[0] * s))), interpolation=cv2.INTER_AREA)
            tile = np.ascontiguousarray(tile)
            cv2.putText(tile, f"{label} {c}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        sheet_rows.append(np.concatenate(tiles, 1))
    return np.concatenate(sheet_rows, 0)


def save_contact_sheet(req, tracks, path: str | Path) -> Path:
    """Contact sheet for a finished job (req: afv.request.AnimateRequest): video frames above,
    the animated mesh over them below."""
    mesh = req.mesh if isinstance(req.mesh, Mesh) else load_mesh(req.mesh)
    clip = load_video(req.video, req.frames, max_size=req.max_size, fps=req.fps)
    cam = tracks.camera if tracks.camera is not None else req.camera
    if cam is not None:
        cam = cam.scaled(clip.size[0] / cam.image_size[0], clip.size[1] / cam.image_size[1]).with_frames(clip.n_frames)
    positions = tracks.positions(mesh.vertices)
    over = overlay_frames(clip.frames, mesh, positions, cam)
    side = side_view(mesh, positions, cam, clip.size)
    sheet = contact_sheet([clip.frames, over, side], ["video", tracks.meta.get("engine", "result"), "side view"])
    path = Path(path)
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path
