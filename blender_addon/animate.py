"""The operator's core path without any UI: inputs from the scene -> JobRequest; result -> keys.

The modal operator (operators.py) is a thin wrapper around these, and tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import bpy

from . import bake, bone_keys, camera_convert, mesh_io, result_camera, rig_io, shape_keys, skinning, timing
from .backend_session import BackendConfig
from .job import JobRequest, TracksResult

MIN_FRAMES = 2  # one frame has no motion: refused before anything is sent or written
MAX_BONE_MISFIT = 0.05  # mean distance between skinned bones and the result, of the bbox diagonal, above which bones are not keyed



@dataclass(frozen=True)
class VideoInfo:
    path: Path  # what the backend reads: the file, or the folder of an image sequence
    is_sequence: bool
    size: tuple[int, int]  # (W, H)
    n_frames: int


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
    if p.suffix.lower() not in bpy.path.extensions_movie:
        raise ValueError(f"{p.name} is not a video or an image: choose a video file (.mp4, .mov, .avi, .mkv, ...) "
                         "or one image of a sequence")
    return p, False


def images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in bpy.path.extensions_image)


def first_image(folder: Path) -> Path:
    files = images_in(folder)
    if not files:
        raise ValueError(f"no images in {folder}")
    return files[0]


def _read_clip(path: Path) -> tuple[tuple[int, int], int]:
    """((W, H), frame count) of a movie or image sequence as Blender reads it, leaving bpy.data as it was."""
    before = {c.as_pointer() for c in bpy.data.movieclips}
    try:
        clip = bpy.data.movieclips.load(str(path), check_existing=True)
    except RuntimeError as exc:
        raise ValueError(f"Blender cannot read {path.name}: {exc}") from None
    try:
        return (int(clip.size[0]), int(clip.size[1])), int(clip.frame_duration)
    finally:
        if clip.as_pointer() not in before:
            bpy.data.movieclips.remove(clip)


def probe_video(path_text: str) -> VideoInfo:
    """Size and frame count of the video, refusing what is not a readable video or image sequence."""
    p, seq = resolve_video(path_text)
    if seq:
        files = images_in(p)
        if not files:
            raise ValueError(f"no images in {p}")
        size, _ = _read_clip(files[0])
        n = len(files)
    else:
        size, n = _read_clip(p)
    if n <= 0 or min(size) <= 0:
        raise ValueError(f"{p.name} has no frames Blender can read: is it really a video?")
    return VideoInfo(p, seq, size, n)


def load_clip(path_text: str):
    """The video (or image sequence) as a Blender MovieClip, reused when already loaded; refuses non-videos."""
    info = probe_video(path_text)
    return bpy.data.movieclips.load(str(first_image(info.path) if info.is_sequence else info.path), check_existing=True)


def video_size(path_text: str) -> tuple[int, int]:
    """(W, H) of the video's frames, read by Blender itself."""
    return probe_video(path_text).size


def selected_frames(settings, n_frames: int) -> range:
    """The video frames the settings select (start:end:step like a Python slice, end 0 = to the end)."""
    end = n_frames if settings.frame_end <= 0 else min(settings.frame_end, n_frames)
    return range(settings.frame_start, end, settings.frame_step)


def count_masks(path: Path) -> int:
    """Masks in a folder of images or a mask video."""
    if path.is_dir():
        return len(images_in(path))
    return probe_video(str(path)).n_frames


def frames_text(settings) -> str:
    end = "" if settings.frame_end <= 0 else str(settings.frame_end)
    return f"{settings.frame_start}:{end}:{settings.frame_step}"


def up_axis_text(matrix_world) -> str:
    """The world's up (+Z) in the object's own coordinates, as the request's up_axis (docs/contracts.md):
    '+x'..'-z' when it is an axis, else 'x,y,z'."""
    M = np.array(matrix_world, np.float64)[:3, :3]
    up = np.linalg.solve(M, np.array([0.0, 0.0, 1.0]))
    up /= np.linalg.norm(up)
    i = int(np.argmax(np.abs(up)))
    if abs(abs(up[i]) - 1.0) < 1e-6:
        return ("+" if up[i] > 0 else "-") + "xyz"[i]
    return ",".join(f"{c:.6f}" for c in up)


def build_request(scene, obj, settings, depsgraph=None) -> tuple[JobRequest, list[str]]:
    """Gather mesh (with its rig), video, masks, camera and parameters. Returns (request, warnings).

    Every refusal is a ValueError raised before anything is sent, and nothing in the scene or in
    bpy.data changes here.
    """
    mesh = mesh_io.extract_mesh(obj, depsgraph)
    video = probe_video(settings.video_path)
    sel = selected_frames(settings, video.n_frames)
    if settings.frame_start >= video.n_frames:
        raise ValueError(f"Start frame {settings.frame_start} is past the end of the video ({video.n_frames} frames, 0-based)")
    if len(sel) < MIN_FRAMES:
        raise ValueError(f"the selected video frames give {len(sel)} frame(s) ({video.path.name}: {video.n_frames} frames, "
                         f"start {settings.frame_start}, end {settings.frame_end or 'end'}, step {settings.frame_step}); "
                         f"at least {MIN_FRAMES} are needed to see motion")
    camera = None
    if settings.camera_mode == "SCENE":
        if scene.camera is None:
            raise ValueError("the scene has no active camera; add one aligned over the video, or choose 'Estimate'")
        camera = camera_convert.camera_dict(scene.camera, obj, scene.render, video.size)
    masks = {"AUTO": "auto", "NONE": "none", "ALPHA": "alpha"}.get(settings.mask_mode)
    if settings.mask_mode == "PATH":
        if not settings.mask_path:
            raise ValueError("choose a mask folder or file, or another mask source")
        mp = Path(bpy.path.abspath(settings.mask_path)).resolve()
        if not mp.exists():
            raise ValueError(f"mask folder not found: {mp}")
        n_masks = count_masks(mp)
        # an image sequence's count is exact; a video container's count (Blender's) can be one off
        slack = 0 if video.is_sequence and mp.is_dir() else 1
        if abs(n_masks - video.n_frames) > slack:
            raise ValueError(f"{mp.name} has {n_masks} masks but the video has {video.n_frames} frames: "
                             "give one mask per video frame, named in the same order")
        masks = str(mp)
    warnings = list(mesh.warnings)
    if rig_io.armature_modifier(obj) is not None:
        try:
            rig = rig_io.extract_rig(obj)
            mesh.extra = rig.npz_arrays()
            warnings += rig.notes
        except ValueError as exc:
            warnings.append(f"the rig is not sent: {exc}")
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
    params["up_axis"] = up_axis_text(obj.matrix_world)
    if settings.first_pose:  # only when asked: a backend older than the field refuses it by name
        params["first_pose"] = True
    req = JobRequest(mesh.to_npz_bytes(), len(mesh.vertices), str(video.path), masks, camera, params)
    return req, warnings


def config_from_prefs(prefs, data_dir_default: str) -> BackendConfig:
    return BackendConfig(
        mode=prefs.backend_mode,
        python=bpy.path.abspath(prefs.python_path) if prefs.python_path else "",
        data_dir=bpy.path.abspath(prefs.data_dir) if prefs.data_dir else data_dir_default,
        url=prefs.url.strip(),
        token=prefs.token.strip(),
    )


def _rig_plan(obj, result: TracksResult, settings) -> tuple[str, object, list[str]]:
    """(mode SHAPE_KEYS | BONE_KEYS | BOTH, rig_io.RigData or None, notes) for this result on `obj`."""
    if rig_io.armature_modifier(obj) is None:
        return "SHAPE_KEYS", None, []
    mode = settings.rig_keys if settings.store_as == "SHAPE_KEYS" else "SHAPE_KEYS"
    if mode == "SHAPE_KEYS":
        return mode, None, []
    if result.bone_rotations is None:
        return "SHAPE_KEYS", None, ["the engine returned no bone rotations: shape keys hold the whole motion"]
    try:
        rig = rig_io.extract_rig(obj)
    except ValueError as exc:
        return "SHAPE_KEYS", None, [f"bone keys cannot be written ({exc}): shape keys hold the whole motion"]
    rotations = result.bone_rotations
    if result.bone_names is not None:  # bones named in the result: put them in the armature's order
        where = {n: i for i, n in enumerate(result.bone_names)}
        missing = [n for n in rig.names if n not in where]
        if missing:
            return "SHAPE_KEYS", None, [f"the result has no rotations for bones {missing[:5]} of the armature: "
                                        "shape keys hold the whole motion"]
        rotations = rotations[:, [where[n] for n in rig.names]]
    if rotations.shape[1] != len(rig.names):
        return "SHAPE_KEYS", None, [f"the result has {rotations.shape[1]} bones, the armature "
                                    f"{len(rig.names)}: shape keys hold the whole motion"]
    result.bone_rotations = rotations  # from here on in the armature's (the add-on's) bone order
    result.bone_names = list(rig.names)
    # the bones must explain the motion (same bone order, same convention): else they would animate the rig wrongly
    base = mesh_io.base_vertices(obj.data).astype(np.float64)
    skinned = skinning.skin(base, result.bone_rotations, result.root_translation, rig.parents, rig.heads, rig.joints,
                            rig.weights)
    diag = float(np.linalg.norm(base.max(0) - base.min(0))) or 1.0
    off = float(np.linalg.norm(skinned - (base + result.displacements), axis=-1).mean()) / diag
    if off > MAX_BONE_MISFIT:
        return "SHAPE_KEYS", None, [f"the bone rotations do not reproduce the result on this armature (mean misfit "
                                    f"{100 * off:.1f} % of the size; bone order or rest pose differ?): shape keys hold "
                                    "the whole motion"]
    return mode, rig, list(rig.notes)


def apply_result(scene, obj, result: TracksResult, settings, cache_dir: str | None = None,
                 place_camera: bool | None = None) -> dict:
    """Write the result on `obj` and the scene: keys (shape keys, bone keys or both) or a Mesh Cache,
    the camera (when the result has one), the scene frame range. Returns a summary with the
    notes and warnings to show.

    Everything that can refuse (frame count, vertex count, bone count) is checked before the
    first change. place_camera: None = only an estimated or moving camera (a static scene camera
    is already there), True = whenever the result has one.
    """
    T = len(result.frame_indices)
    if T < MIN_FRAMES:
        raise ValueError(f"the result has {T} frame; at least {MIN_FRAMES} are needed (choose a longer frame range)")
    if result.displacements.shape[1] != len(obj.data.vertices):
        raise ValueError(f"the result is for {result.displacements.shape[1]} vertices, '{obj.name}' has "
                         f"{len(obj.data.vertices)}")
    frames = timing.scene_frames(result.frame_indices, result.fps, timing.scene_fps(scene.render),
                                 settings.start_frame, settings.speed)
    mode, rig, notes = _rig_plan(obj, result, settings)
    base = mesh_io.base_vertices(obj.data)
    disp = result.displacements
    if mode == "BOTH":  # shape keys hold what the bones do not: skin(base + residual) == base + disp
        try:
            disp = skinning.rest_residual(base, base[None] + disp, result.bone_rotations, result.root_translation,
                                          rig.parents, rig.heads, rig.joints, rig.weights).astype(np.float32)
        except np.linalg.LinAlgError:  # a vertex whose blended bone rotations cancel out
            disp = np.full_like(disp, np.nan)
        if not np.isfinite(disp).all():
            raise ValueError("the bone rotations cannot reproduce the result (degenerate skinning); choose Shape Keys")
    clip = None
    if result.camera is not None:
        try:
            clip = load_clip(settings.video_path)
        except ValueError:
            clip = None  # the camera still goes in; only its background is missing

    # ---- from here on the scene changes ----
    mod = rig_io.armature_modifier(obj)
    if mod is not None:
        notes += bone_keys.release_rig(mod.object)
        if mode == "SHAPE_KEYS":
            bone_keys.rest_pose(mod.object)
        else:
            name = bone_keys.write_bone_keys(mod.object, rig, result.bone_rotations, result.root_translation, frames)
            notes.append(f"bone keys written on '{mod.object.name}' (action '{name}')")
    names: list[str] = []
    if settings.store_as == "MESH_CACHE":
        path = Path(cache_dir or bpy.app.tempdir) / f"{bpy.path.clean_name(obj.name)}_afv.pc2"
        bake.bake_mesh_cache(obj, path, base[None] + disp, frames)
    else:
        for m in [m for m in obj.modifiers if m.name == "AFV Mesh Cache"]:
            obj.modifiers.remove(m)  # a second run replaces a cached result too
        if mode == "BONE_KEYS":
            shape_keys.remove_tracks(obj)
        else:
            names = shape_keys.write_tracks(obj, disp, frames, result.frame_indices).key_names
    camera_name = None
    # a static camera given by the scene is already there; an estimated or moving one is new
    if place_camera is None:
        place_camera = settings.camera_mode == "ESTIMATE" or (result.camera is not None and result.camera.moves)
    if result.camera is not None and place_camera:
        clip_start = int(round(frames[0])) - int(result.frame_indices[0])
        cam = result_camera.apply_camera(scene, obj, result.camera, frames, clip, clip_start)
        camera_name = cam.name
        notes.append(f"camera '{cam.name}' {'animated along the video' if result.camera.moves else 'placed'}"
                     f"{' with the video as background' if clip is not None else ''}")
    scene.frame_start, scene.frame_end = int(np.floor(frames[0])), int(np.ceil(frames[-1]))
    return {"keys": len(names), "first_frame": float(frames[0]), "last_frame": float(frames[-1]),
            "engine": result.meta.get("engine", ""), "mode": mode, "camera": camera_name,
            "notes": notes, "warnings": result.warnings}
