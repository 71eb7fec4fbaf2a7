"""Bake and export the motion: Mesh Cache (PC2 + MeshCache modifier), GLB, FBX, Alembic.

Plain functions taking the object and the scene; they select only what they export and
restore the selection afterwards. Files are written to a temp name and renamed (atomic).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

import bpy

from . import bone_keys, rig_io
from .shape_keys import PREFIX, _channel_fcurves, evaluated_positions, remove_tracks

CACHE_MODIFIER = "AFV Mesh Cache"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temp path next to `path` (same suffix); rename onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def resample(positions: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Linear-in-time samples at whole scene frames.

    positions: (T, N, 3) at scene frames `frames` (T,) increasing -> ((S, N, 3) float32, first whole frame).
    Samples run from ceil(frames[0]) to floor(frames[-1]).
    """
    f0, f1 = int(np.ceil(frames[0] - 1e-6)), int(np.floor(frames[-1] + 1e-6))
    whole = np.arange(f0, max(f1, f0) + 1, dtype=np.float64)
    k = np.clip(np.searchsorted(frames, whole, side="right") - 1, 0, max(len(frames) - 2, 0))
    if len(frames) == 1:
        return positions[:1].astype(np.float32), f0
    a = np.clip((whole - frames[k]) / (frames[k + 1] - frames[k]), 0.0, 1.0)[:, None, None]
    out = (1 - a) * positions[k] + a * positions[k + 1]
    return out.astype(np.float32), f0


def write_pc2(path: str | os.PathLike, samples: np.ndarray, start_frame: float, sample_rate: float = 1.0) -> Path:
    """Point Cache 2: header then (S, N, 3) little-endian float32 positions."""
    samples = np.ascontiguousarray(samples, dtype="<f4")
    S, N, _ = samples.shape
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<12siiffi", b"POINTCACHE2\0", 1, N, float(start_frame), float(sample_rate), S))
            fh.write(samples.tobytes())
    return Path(path)


def bake_mesh_cache(obj, path: str | os.PathLike, positions: np.ndarray | None = None, frames: np.ndarray | None = None,
                    prefix: str = PREFIX) -> bpy.types.Modifier:
    """Store the motion as a PC2 file + MeshCache modifier instead of shape keys.

    Without `positions` the current shape-key animation is sampled (evaluated per whole frame
    over the keyed range), then our shape keys are removed. With `positions` (T, N, 3) object
    space at scene `frames` (T,), those are resampled directly.
    """
    scene = bpy.context.scene
    if positions is None:
        positions, frames = _sample_shape_keys(obj, scene, prefix)
    samples, first = resample(np.asarray(positions, np.float32), np.asarray(frames, np.float64))
    write_pc2(path, samples, first)
    remove_tracks(obj, prefix)
    for m in [m for m in obj.modifiers if m.name == CACHE_MODIFIER]:
        obj.modifiers.remove(m)
    mod = obj.modifiers.new(CACHE_MODIFIER, "MESH_CACHE")
    mod.cache_format = "PC2"
    mod.filepath = str(Path(path).resolve())
    mod.time_mode = "FRAME"
    mod.play_mode = "SCENE"
    mod.deform_mode = "OVERWRITE"
    mod.frame_start = float(first)
    mod.frame_scale = 1.0
    # PC2 stores Blender's own axes: keep them as they are.
    mod.forward_axis, mod.up_axis = "POS_Y", "POS_Z"
    return mod


def animated_armature(obj):
    """The armature deforming `obj` when it carries our bone keys, else None."""
    mod = rig_io.armature_modifier(obj)
    if mod is None or bone_keys.keyed_frames(mod.object) is None:
        return None
    return mod.object


def keyed_range(obj, prefix: str = PREFIX) -> tuple[float, float]:
    """(first, last) scene frame of our animation: shape keys and the armature's bone keys."""
    key = obj.data.shape_keys
    fcs = [] if key is None else [fc for fc in (_channel_fcurves(key) or []) if fc.data_path.startswith(f'key_blocks["{prefix}')]
    ranges = [tuple(fc.range()) for fc in fcs]
    arm = animated_armature(obj)
    if arm is not None:
        ranges.append(bone_keys.keyed_frames(arm))
    if not ranges:
        raise ValueError(f"'{obj.name}' has no Animate-from-Video keys to bake")
    return float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))


def _sample_shape_keys(obj, scene, prefix):
    lo, hi = keyed_range(obj, prefix)
    frames = np.arange(int(np.ceil(lo)), int(np.floor(hi)) + 1, dtype=np.float64)
    keep = scene.frame_current
    out = []
    try:
        for f in frames:
            scene.frame_set(int(f))
            out.append(evaluated_positions(obj, bpy.context.evaluated_depsgraph_get()))
    finally:
        scene.frame_set(keep)
    return np.stack(out), frames


@contextlib.contextmanager
def _only_selected(obj, *others):
    view_layer = bpy.context.view_layer
    prev_sel = [o for o in view_layer.objects if o.select_get()]
    prev_active = view_layer.objects.active
    for o in prev_sel:
        o.select_set(False)
    for o in (obj, *others):
        o.select_set(True)
    view_layer.objects.active = obj
    try:
        yield
    finally:
        for o in (obj, *others):
            o.select_set(False)
        for o in prev_sel:
            o.select_set(True)
        view_layer.objects.active = prev_active


def _frame_range(obj, scene, prefix) -> tuple[int, int]:
    try:
        lo, hi = keyed_range(obj, prefix)
        return int(np.floor(lo)), int(np.ceil(hi))
    except ValueError:
        return scene.frame_start, scene.frame_end


@contextlib.contextmanager
def _scene_range_of_keys(obj, prefix):
    """Set the scene range to the keyed frames while an exporter runs (exporters read it)."""
    scene = bpy.context.scene
    lo, hi = _frame_range(obj, scene, prefix)
    keep = (scene.frame_start, scene.frame_end)
    scene.frame_start, scene.frame_end = lo, hi
    try:
        yield lo, hi
    finally:
        scene.frame_start, scene.frame_end = keep


def export_glb(obj, path: str | os.PathLike, morph_normals: bool = False, prefix: str = PREFIX) -> Path:
    """GLB with morph targets (one per shape key) and their weight animation, plus the skin and
    its bone animation when the mesh's armature carries our bone keys."""
    path = Path(path)
    arm = animated_armature(obj)
    rig = () if arm is None else (arm,)
    with _scene_range_of_keys(obj, prefix), _only_selected(obj, *rig), atomic_file(path) as tmp:
        bpy.ops.export_scene.gltf(
            filepath=str(tmp), export_format="GLB", use_selection=True, export_animations=True,
            export_morph=True, export_morph_normal=morph_normals, export_morph_animation=True,
            export_frame_range=True, export_force_sampling=True, export_optimize_animation_size=False,
            export_anim_slide_to_zero=False, export_animation_mode="ACTIVE_ACTIONS",
            export_skins=arm is not None,
        )
    return path


def export_fbx(obj, path: str | os.PathLike, prefix: str = PREFIX) -> Path:
    """FBX with shape-key animation (curves are only written without all-actions / NLA baking),
    plus the armature and its bone animation when it carries our bone keys."""
    path = Path(path)
    arm = animated_armature(obj)
    rig = () if arm is None else (arm,)
    with _scene_range_of_keys(obj, prefix), _only_selected(obj, *rig), atomic_file(path) as tmp:
        bpy.ops.export_scene.fbx(
            filepath=str(tmp), use_selection=True, bake_anim=True, bake_anim_use_all_actions=False,
            bake_anim_use_nla_strips=False, bake_anim_force_startend_keying=True, bake_anim_step=1.0,
            bake_anim_simplify_factor=0.0, object_types={"MESH", "ARMATURE"} if rig else {"MESH"},
            use_mesh_modifiers=False, add_leaf_bones=False,
        )
    return path


def export_alembic(obj, path: str | os.PathLike, prefix: str = PREFIX) -> Path:
    """Alembic with the evaluated (animated) vertex positions per frame."""
    path = Path(path)
    scene = bpy.context.scene
    lo, hi = _frame_range(obj, scene, prefix)
    with _only_selected(obj), atomic_file(path) as tmp:
        bpy.ops.wm.alembic_export(filepath=str(tmp), selected=True, start=lo, end=hi, normals=True)
    return path


def export_pc2(obj, path: str | os.PathLike, prefix: str = PREFIX) -> Path:
    """PC2 point cache of the evaluated vertex positions per whole frame over the keyed range
    (shape keys and bone keys together); the object is not changed."""
    scene = bpy.context.scene
    positions, frames = _sample_shape_keys(obj, scene, prefix)
    return write_pc2(path, positions, frames[0])


def read_pc2(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """((S, N, 3) float32 positions, start frame) of a PC2 file."""
    raw = Path(path).read_bytes()
    sig, _ver, n, start, _rate, s = struct.unpack("<12siiffi", raw[:32])
    if sig != b"POINTCACHE2\0":
        raise ValueError(f"{Path(path).name} is not a PC2 file")
    return np.frombuffer(raw[32:], "<f4").reshape(s, n, 3).copy(), float(start)
