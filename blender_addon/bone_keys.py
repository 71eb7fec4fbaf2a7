"""Bone keys on the user's own armature, and keeping the rig's other animation out of the way.

The engine's bone rotations R_b (wxyz, relative to the parent, mesh axes) and root translation
u (mesh coordinates) follow docs/contracts.md. In armature space (the Armature modifier maps
mesh -> armature by `mesh_to_armature`, rotation part A, linear part L):
    R_b^arm = A R_b A^T,   u^arm = L u,
and Blender's pose channels are  rotation_quaternion = M_b^T R_b^arm M_b  (M_b the bone's rest
orientation) and, for root bones, location = M_b^T u^arm (children keep location 0).
Keys are linear F-Curves on an action "AFV_<armature>" (Blender 4.4+ slotted actions, legacy
action.fcurves on 4.2/4.3), one key per track at its scene frame.
"""

from __future__ import annotations

import numpy as np

import bpy

from . import skinning
from .shape_keys import PREFIX, _channel_fcurves, _linear_enum

OLD_ACTION_PROP = "afv_muted_action"  # name of the user's action we unassigned (to tell them, and restore)


def pose_channels(rotations: np.ndarray, root_translation: np.ndarray, rig) -> tuple[np.ndarray, np.ndarray]:
    """(T, B, 4) wxyz mesh-axes rotations + (T, 3) translation -> (quaternions (T, B, 4), locations (T, B, 3)).

    rig: rig_io.RigData (parents, rest_orientations, mesh_to_armature). Quaternion signs are
    made continuous over time so linear interpolation never flips.
    """
    L = np.asarray(rig.mesh_to_armature, np.float64)[:3, :3]
    A = L / np.linalg.norm(L, axis=0, keepdims=True)
    M = np.asarray(rig.rest_orientations, np.float64)  # (B, 3, 3)
    R = skinning.quat_to_matrix(rotations)  # (T, B, 3, 3)
    R_arm = A[None, None] @ R @ A.T[None, None]
    local = np.swapaxes(M, -1, -2)[None] @ R_arm @ M[None]
    q = skinning.matrix_to_quat(local)
    for t in range(1, len(q)):
        flip = (q[t] * q[t - 1]).sum(-1) < 0
        q[t, flip] *= -1
    u_arm = np.asarray(root_translation, np.float64) @ L.T  # (T, 3)
    loc = np.zeros(q.shape[:2] + (3,))
    roots = np.flatnonzero(np.asarray(rig.parents) < 0)
    loc[:, roots] = np.einsum("bji,tj->tbi", M[roots], u_arm)  # M^T u
    return q, loc


def _fcurve(action, idblock, path: str, index: int, group: str):
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+ slotted actions
        return action.fcurve_ensure_for_datablock(idblock, path, index=index, group_name=group)
    fc = action.fcurves.find(path, index=index)
    return fc or action.fcurves.new(path, index=index, action_group=group)


def _ours(action) -> bool:
    return action is not None and action.name.startswith(PREFIX)


def release_rig(arm) -> list[str]:
    """Stop the rig's own animation from playing over our result; returns what was done (for the user).

    The user's active action is unassigned but kept (fake user, name remembered on the armature),
    unmuted NLA tracks are muted, and a previous result's action of ours is deleted.
    """
    notes: list[str] = []
    ad = arm.animation_data
    if ad is None:
        return notes
    act = ad.action
    if act is not None:
        ad.action = None
        if _ours(act):
            if act.users == 0:
                bpy.data.actions.remove(act)
        else:
            act.use_fake_user = True
            arm[OLD_ACTION_PROP] = act.name
            notes.append(f"the rig's action '{act.name}' on '{arm.name}' no longer plays (unassigned, kept with a "
                         f"fake user): it would move the mesh on top of the result")
    muted = [tr.name for tr in ad.nla_tracks if not tr.mute]
    for tr in ad.nla_tracks:
        tr.mute = True
    if muted:
        notes.append(f"NLA tracks of '{arm.name}' muted: {', '.join(muted)}")
    return notes


def rest_pose(arm) -> None:
    """Every pose bone at its rest transform (an unassigned action leaves its last pose behind)."""
    for pb in arm.pose.bones:
        pb.location = (0.0, 0.0, 0.0)
        pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        pb.rotation_euler = (0.0, 0.0, 0.0)
        pb.rotation_axis_angle = (0.0, 0.0, 1.0, 0.0)
        pb.scale = (1.0, 1.0, 1.0)


def write_bone_keys(arm, rig, rotations: np.ndarray, root_translation: np.ndarray, frames: np.ndarray) -> str:
    """Key every bone of `arm` (rig.names order) at scene `frames` (T,); returns the action's name.

    rotations (T, B, 4) wxyz and root_translation (T, 3) in the contract's mesh-axes convention.
    Pose bones switch to quaternion rotation. Call release_rig first.
    """
    frames = np.asarray(frames, np.float64)
    q, loc = pose_channels(rotations, root_translation, rig)
    T, B = q.shape[:2]
    if frames.shape != (T,):
        raise ValueError(f"{T} bone poses for {len(frames)} frames")
    missing = [n for n in rig.names if n not in arm.pose.bones]
    if missing:
        raise ValueError(f"the armature '{arm.name}' lacks bones {missing[:5]}: was it edited after the job started?")
    rest_pose(arm)
    ad = arm.animation_data or arm.animation_data_create()
    action = bpy.data.actions.new(f"{PREFIX}{arm.name}")
    ad.action = action
    lin = _linear_enum()
    for b, name in enumerate(rig.names):
        arm.pose.bones[name].rotation_mode = "QUATERNION"
        base = f'pose.bones["{bpy.utils.escape_identifier(name)}"]'
        for prop, values in (("rotation_quaternion", q[:, b]), ("location", loc[:, b])):
            for i in range(values.shape[1]):
                fc = _fcurve(action, arm, f"{base}.{prop}", i, name)
                co = np.stack([frames, values[:, i]], 1).astype(np.float32).ravel()
                fc.keyframe_points.add(T)
                fc.keyframe_points.foreach_set("co", co)
                fc.keyframe_points.foreach_set("interpolation", [lin] * T)
                fc.update()
    return action.name


def keyed_frames(arm) -> tuple[float, float] | None:
    """(first, last) frame of our bone keys on `arm`, None when it has none."""
    ad = arm.animation_data
    if ad is None or not _ours(ad.action):
        return None
    fcs = list(_channel_fcurves(arm) or [])
    if not fcs:
        return None
    return min(fc.range()[0] for fc in fcs), max(fc.range()[1] for fc in fcs)
