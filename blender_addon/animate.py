"""The operator's core path without any UI: inputs from the scene -> JobRequest; result -> keys.

The modal operator (operators.py) is a thin wrapper around these, and tests call them directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import bpy

from . import camera_convert, mesh_io, shape_keys, timing
from .backend_session import BackendConfig
from .job import JobRequest, TracksResult

def resolve_video(path_text: str) -> tuple[Path, bool]:
    """(path for the backend, is_image_sequence). An image file means its folder (a sequence).

    "Image" is what Blender itself loads (bpy.path.extensions_image); which of those the
    backend reads is the backend's own list (afv.video.IMAGE_SUFFIXES), checked when it
    validates the request."""
    if not path_text:
        raise ValueError("choose a video file or an image sequence first")
    p = Path(bpy.path.abspath(path_text)).resolve()
    if p.is_dir():
        return p, True
    if not p.exists():
        raise ValueError(f"video not found: {p}")
    if p.suffix.lower() in bpy.path.extensions_image:
        return p.parent, True
    return p, False


def first_image(folder: Path) -> Path:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in bpy.path.extensions_image)
    if not files:
        raise ValueError(f"no images in {folder}")
    return files[0]


def load_clip(path_text: str):
    """The video (or image sequence) as a Blender MovieClip, reused when already loaded."""
    p, seq = resolve_video(path_text)
    return bpy.data.movieclips.load(str(first_image(p) if seq else p), check_existing=True)


def video_size(path_text: str) -> tuple[int, int]:
    """(W, H) of the video's frames, read by Blender itself."""
    p, seq = resolve_video(path_text)
    if seq:
        img = bpy.data.images.load(str(first_image(p)), check_existing=True)
        size = tuple(img.size)
    else:
        size = tuple(load_clip(path_text).size)
    if min(size) <= 0:
        raise ValueError(f"Blender could not read the frame size of {p}")
    return int(size[0]), int(size[1])


def frames_text(settings) -> str:
    end = "" if settings.frame_end <= 0 else str(settings.frame_end)
    return f"{settings.frame_start}:{end}:{settings.frame_step}"


def build_request(scene, obj, settings, depsgraph=None) -> tuple[JobRequest, list[str]]:
    """Gather mesh, video, masks, camera and parameters. Returns (request, warnings)."""
    mesh = mesh_io.extract_mesh(obj, depsgraph)
    video, _ = resolve_video(settings.video_path)
    camera = None
    if settings.camera_mode == "SCENE":
        if scene.camera is None:
            raise ValueError("the scene has no active camera; add one aligned over the video, or choose 'Estimate'")
        camera = camera_convert.camera_dict(scene.camera, obj, scene.render, video_size(settings.video_path))
    masks = {"AUTO": "auto", "NONE": "none", "ALPHA": "alpha"}.get(settings.mask_mode)
    if settings.mask_mode == "PATH":
        if not settings.mask_path:
            raise ValueError("choose a mask folder or file, or another mask source")
        masks = str(Path(bpy.path.abspath(settings.mask_path)).resolve())
    params = {
        "frames": frames_text(settings),
        "device": settings.device.lower(),
        "max_size": int(settings.max_size),
        "seed": 0,
    }
    if settings.engine:
        params["engine"] = settings.engine
    if settings.video_fps > 0:
        params["fps"] = float(settings.video_fps)
    req = JobRequest(mesh.to_npz_bytes(), len(mesh.vertices), str(video), masks, camera, params)
    return req, mesh.warnings


def config_from_prefs(prefs, data_dir_default: str) -> BackendConfig:
    return BackendConfig(
        mode=prefs.backend_mode,
        python=bpy.path.abspath(prefs.python_path) if prefs.python_path else "",
        data_dir=bpy.path.abspath(prefs.data_dir) if prefs.data_dir else data_dir_default,
        url=prefs.url.strip(),
        token=prefs.token.strip(),
    )


def apply_result(scene, obj, result: TracksResult, settings, cache_dir: str | None = None) -> dict:
    """Write the tracks on `obj`: shape keys (default) or a Mesh Cache. Returns a summary."""
    frames = timing.scene_frames(result.frame_indices, result.fps, timing.scene_fps(scene.render),
                                 settings.start_frame, settings.speed)
    if settings.store_as == "MESH_CACHE":
        from . import bake

        base = mesh_io.base_vertices(obj.data)
        path = Path(cache_dir or bpy.app.tempdir) / f"{bpy.path.clean_name(obj.name)}_afv.pc2"
        bake.bake_mesh_cache(obj, path, base[None] + result.displacements, frames)
        names: list[str] = []
    else:
        for m in [m for m in obj.modifiers if m.name == "AFV Mesh Cache"]:
            obj.modifiers.remove(m)  # a second run replaces a cached result too
        names = shape_keys.write_tracks(obj, result.displacements, frames, result.frame_indices).key_names
    end = int(np.ceil(frames[-1]))
    if scene.frame_end < end:
        scene.frame_end = end
    return {"keys": len(names), "first_frame": float(frames[0]), "last_frame": float(frames[-1]),
            "engine": result.meta.get("engine", "")}
