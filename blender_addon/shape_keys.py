"""Write displacement tracks as shape keys keyed on the timeline (one key per output frame).

Key k holds base + displacements[k]; its value is 1 at scene frame frames[k] and 0 at the
neighbouring keys' frames with linear interpolation, so the mesh equals key k at frames[k]
and blends linearly in between. Keys and curves we wrote earlier are removed first, so a
second run replaces the first. Callable without a window (no operators, no context).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import bpy

PREFIX = "AFV_"


@dataclass
class WriteResult:
    key_names: list[str]
    frames: np.ndarray  # (T,) float64 scene frames of the keys
    action_name: str


def _is_ours(name: str, prefix: str) -> bool:
    return name.startswith(prefix)


def _path(name: str) -> str:
    return f'key_blocks["{name}"].value'


def _channel_fcurves(key):
    """The F-Curve collection that animates `key` (slotted actions in 4.4+, legacy before)."""
    ad = key.animation_data
    if ad is None or ad.action is None:
        return None
    try:
        from bpy_extras import anim_utils

        bag = anim_utils.animdata_get_channelbag_for_assigned_slot(ad)
        return None if bag is None else bag.fcurves
    except (ImportError, AttributeError):
        return ad.action.fcurves  # Blender 4.2/4.3


def remove_tracks(obj, prefix: str = PREFIX) -> int:
    """Remove the shape keys named `prefix*` and their F-Curves; returns how many keys went."""
    mesh = obj.data
    key = mesh.shape_keys
    if key is None:
        return 0
    fcurves = _channel_fcurves(key)
    if fcurves is not None:
        for fc in [fc for fc in fcurves if fc.data_path.startswith(f'key_blocks["{prefix}')]:
            fcurves.remove(fc)
    ours = [kb for kb in key.key_blocks if _is_ours(kb.name, prefix)]
    for kb in reversed(ours):
        obj.shape_key_remove(kb)
    return len(ours)


def _ensure_action(key, name: str):
    ad = key.animation_data or key.animation_data_create()
    if ad.action is None:
        ad.action = bpy.data.actions.new(name)
    return ad.action


def _fcurve(action, key, data_path: str):
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+ slotted actions
        return action.fcurve_ensure_for_datablock(key, data_path)
    fc = action.fcurves.find(data_path)
    return fc or action.fcurves.new(data_path)


def _linear_enum() -> int:
    return bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value


def write_tracks(obj, displacements: np.ndarray, frames: np.ndarray, video_frames: np.ndarray | None = None,
                 prefix: str = PREFIX) -> WriteResult:
    """Write shape keys for `obj` (a mesh object).

    displacements: (T, N, 3) float32 in object space, relative to the base (Basis) vertices.
    frames: (T,) float scene frames, strictly increasing.
    video_frames: (T,) int video frame numbers used in the key names (default 0..T-1).
    """
    from .mesh_io import base_vertices

    mesh = obj.data
    disp = np.asarray(displacements, dtype=np.float32)
    frames = np.asarray(frames, dtype=np.float64)
    T = disp.shape[0]
    if disp.ndim != 3 or disp.shape[1:] != (len(mesh.vertices), 3):
        raise ValueError(f"tracks have shape {disp.shape}, the mesh has {len(mesh.vertices)} vertices")
    if frames.shape != (T,) or (T > 1 and np.any(np.diff(frames) <= 0)):
        raise ValueError("scene frames must be one per track and strictly increasing")
    if not np.isfinite(disp).all():
        raise ValueError("tracks contain NaN or infinite values")
    names = [f"{prefix}{int(v):05d}" for v in (np.arange(T) if video_frames is None else video_frames)]

    remove_tracks(obj, prefix)
    if mesh.shape_keys is None:
        obj.shape_key_add(name="Basis", from_mix=False)
    key = mesh.shape_keys
    ref = key.reference_key
    base = base_vertices(mesh)
    for k in range(T):
        kb = obj.shape_key_add(name=names[k], from_mix=False)
        kb.data.foreach_set("co", (base + disp[k]).ravel())
        kb.relative_key = ref
        kb.value = 0.0
    action = _ensure_action(key, f"{prefix}{obj.name}")
    lin = _linear_enum()
    for k in range(T):
        lo, hi = max(k - 1, 0), min(k + 1, T - 1)
        co = [(frames[j], 1.0 if j == k else 0.0) for j in range(lo, hi + 1)]
        fc = _fcurve(action, key, _path(names[k]))
        fc.keyframe_points.add(len(co))
        fc.keyframe_points.foreach_set("co", np.asarray(co, np.float32).ravel())
        fc.keyframe_points.foreach_set("interpolation", [lin] * len(co))
        fc.update()
    mesh.update()
    return WriteResult(names, frames, action.name)


def evaluated_positions(obj, depsgraph) -> np.ndarray:
    """(N, 3) float32 evaluated vertex positions of `obj` (object space) at the current frame."""
    ev = obj.evaluated_get(depsgraph)
    m = ev.to_mesh()
    try:
        co = np.empty(len(m.vertices) * 3, np.float32)
        m.vertices.foreach_get("co", co)
    finally:
        ev.to_mesh_clear()
    return co.reshape(-1, 3)
