"""Inside Blender (the bpy subprocess that afv_dev.bench.blender_render.build_asset starts): import
the asset, pose it over the sampled times, export the mesh, its rig and the ground truth, render RGBA
frames with Workbench and write a sequence folder (afv_dev.bench.sequences). Apart from the launcher so
that sequences -> blender_render -> (subprocess) -> blender_scene -> sequences has no import cycle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from afv_dev.bench.blender_render import CYCLIC_TOL, FOV_DEG, VIEWS, sample_times
def _render_objects(bpy):
    """Mesh objects that are rendered: not hidden, not a bone's custom display shape."""
    shapes = set()
    for o in bpy.data.objects:
        if o.type == "ARMATURE" and o.pose:
            shapes |= {pb.custom_shape.name for pb in o.pose.bones if pb.custom_shape}
    objs = [o for o in bpy.data.objects if o.type == "MESH" and o.name not in shapes and not o.hide_render]
    return sorted(objs, key=lambda o: o.name)



def _select_clip(bpy, clip: str | None, asset: str) -> tuple[float, float, str]:
    """Assign the clip's action to every animated datablock; return its frame range and name."""
    from .clips import is_reserved

    actions = list(bpy.data.actions)
    if not actions:
        raise RuntimeError("asset has no animation")
    if clip:
        if is_reserved(asset, clip):
            raise RuntimeError(f"clip '{clip}' of {Path(asset).name} is reserved for held-out evaluation")
        match = [a for a in actions if a.name == clip]  # exact: "Jump" must never pick "WalkJump" or back
        if not match:
            raise RuntimeError(f"clip '{clip}' not found; actions: {[a.name for a in actions]}")
        act = match[0]
    else:
        act = actions[0]
    if is_reserved(asset, act.name):
        raise RuntimeError(f"clip '{act.name}' of {Path(asset).name} is reserved for held-out evaluation")
    owners = []
    for o in bpy.data.objects:
        owners.append(o)
        if o.type == "MESH" and o.data.shape_keys:
            owners.append(o.data.shape_keys)
    for owner in owners:
        ad = owner.animation_data
        if ad is None:
            continue
        for tr in ad.nla_tracks:  # only the chosen clip may move the asset
            tr.mute = True
        ad.action = None
        kind = "KE" if owner.__class__.__name__ == "Key" else "OB"
        slot = [s for s in act.slots if s.identifier == kind + getattr(owner, "user", owner).name] or [
            s for s in act.slots if s.identifier.startswith(kind)
        ]
        if slot:
            ad.action = act
            ad.action_slot = slot[0]
    start, end = act.frame_range
    return float(start), float(end), act.name


def _gather(bpy, objs, depsgraph) -> tuple[np.ndarray, list[np.ndarray]]:
    """World-space vertices of all objects joined (V, 3) and per-object triangle lists."""
    verts, tris, off = [], [], 0
    for o in objs:
        ev = o.evaluated_get(depsgraph)
        me = ev.to_mesh()
        n = len(me.vertices)
        co = np.empty(n * 3, np.float64)
        me.vertices.foreach_get("co", co)
        M = np.array(ev.matrix_world, np.float64)
        co = co.reshape(n, 3) @ M[:3, :3].T + M[:3, 3]
        me.calc_loop_triangles()
        t = np.empty(len(me.loop_triangles) * 3, np.int64)
        me.loop_triangles.foreach_get("vertices", t)
        verts.append(co)
        tris.append(t.reshape(-1, 3) + off)
        off += n
        ev.to_mesh_clear()
    return np.concatenate(verts), tris


def _blender_camera(bpy, scene, M_cv: np.ndarray, fov_deg: float):
    """Blender camera object for an OpenCV world->camera matrix (square image)."""
    import mathutils

    R, t = M_cv[:3, :3], M_cv[:3, 3]
    eye = -R.T @ t
    # Blender camera looks down its -Z with +Y up: its axes are (x_cv, -y_cv, -z_cv)
    cam2world = np.eye(4)
    cam2world[:3, 0], cam2world[:3, 1], cam2world[:3, 2] = R[0], -R[1], -R[2]
    cam2world[:3, 3] = eye
    cd = bpy.data.cameras.new("bench_cam")
    cd.sensor_fit = "VERTICAL"
    cd.angle_y = np.radians(fov_deg)
    cd.clip_start, cd.clip_end = 1e-3 * np.linalg.norm(eye), 100 * np.linalg.norm(eye)
    co = bpy.data.objects.new("bench_cam", cd)
    scene.collection.objects.link(co)
    co.matrix_world = mathutils.Matrix(cam2world.tolist())
    scene.camera = co
    return co


def _deforming_armature(objs):
    """The one armature that moves the rendered objects (modifier or bone parent), else None."""
    arms = {m.object.name: m.object for o in objs for m in o.modifiers if m.type == "ARMATURE" and m.object is not None}
    arms.update({o.parent.name: o.parent for o in objs if o.parent is not None and o.parent_type == "BONE" and o.parent.type == "ARMATURE"})
    if len(arms) != 1:
        return None
    return next(iter(arms.values()))


def _skin(objs, arm) -> dict | None:
    """The armature's bones (parent-first) and every joined vertex's influences.

    An object with an Armature modifier uses its vertex groups named after bones (weights
    normalised, as Blender's deform does); an object parented to a bone follows that bone with
    weight 1; anything else (and a skinned vertex without weights) is given to the root bone and
    counted in `unskinned_vertices`. None when no vertex is skinned or bone-parented.
    """
    def depth(b):
        return 0 if b.parent is None else 1 + depth(b.parent)

    bones = sorted(arm.data.bones, key=depth)  # stable: keeps Blender's order within a depth
    index = {b.name: i for i, b in enumerate(bones)}
    parents = np.array([index[b.parent.name] if b.parent else -1 for b in bones], np.int32)
    root = int(np.flatnonzero(parents < 0)[0])
    infl: list[list[tuple[int, float]]] = []
    unskinned = 0
    for o in objs:
        modded = any(m.type == "ARMATURE" and m.object == arm for m in o.modifiers)
        if modded:
            gname = {g.index: g.name for g in o.vertex_groups}
            for v in o.data.vertices:
                w = [(index[gname[g.group]], float(g.weight)) for g in v.groups if gname.get(g.group) in index and g.weight > 0]
                if not w:
                    w, unskinned = [(root, 1.0)], unskinned + 1
                infl.append(w)
        elif o.parent == arm and o.parent_type == "BONE" and o.parent_bone in index:
            infl += [[(index[o.parent_bone], 1.0)]] * len(o.data.vertices)
        else:
            infl += [[(root, 1.0)]] * len(o.data.vertices)
            unskinned += len(o.data.vertices)
    if unskinned == len(infl):
        return None
    K = max(len(w) for w in infl)
    joints = np.zeros((len(infl), K), np.int32)
    weights = np.zeros((len(infl), K), np.float32)
    for i, w in enumerate(infl):
        w = sorted(w, key=lambda x: -x[1])
        joints[i, : len(w)] = [j for j, _ in w]
        weights[i, : len(w)] = [x for _, x in w]
    weights /= weights.sum(1, keepdims=True)
    return {"bones": bones, "names": [b.name for b in bones], "parents": parents, "joints": joints, "weights": weights,
            "unskinned_vertices": unskinned}


def _bone_world(arm, names) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World matrices (B, 4, 4), heads (B, 3) and tails (B, 3) of the pose bones now."""
    W = np.array(arm.matrix_world, np.float64)
    mats = np.stack([W @ np.array(arm.pose.bones[n].matrix, np.float64) for n in names])
    heads = np.stack([W[:3, :3] @ np.array(arm.pose.bones[n].head) + W[:3, 3] for n in names])
    tails = np.stack([W[:3, :3] @ np.array(arm.pose.bones[n].tail) + W[:3, 3] for n in names])
    return mats, heads, tails


def _run_in_blender(job: dict) -> None:
    import bpy

    from afv.camera import Camera, intrinsics, look_at
    from afv.mesh import Mesh
    from afv.rig import validate_rig
    from .rig_pose import contract_pose, deforming_bones, skin_contract, subset_rig
    from .sequences import Recipe, write_sequence

    rd = dict(job["recipe"])
    rd["variants"] = tuple(rd["variants"])
    recipe = Recipe(**rd)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    asset = job["asset"]
    bpy.ops.import_scene.gltf(filepath=asset)
    scene = bpy.context.scene
    start, end, clip_name = _select_clip(bpy, job["clip"], asset)
    objs = _render_objects(bpy)
    for o in bpy.data.objects:  # hide helper meshes (bone shapes) from the render
        if o.type == "MESH" and o not in objs:
            o.hide_render = True
    scene_fps = scene.render.fps / scene.render.fps_base

    def pose_at(tt):
        scene.frame_set(int(np.floor(tt)), subframe=float(tt - np.floor(tt)))
        return _gather(bpy, objs, bpy.context.evaluated_depsgraph_get())

    first, _ = pose_at(start)
    last, _ = pose_at(end)
    diag0 = float(np.linalg.norm(first.max(0) - first.min(0)))
    cyclic = bool(np.linalg.norm(last - first, axis=1).max() < CYCLIC_TOL * diag0)
    times, video_fps = sample_times(recipe.sampling, recipe.n_frames, start, end, scene_fps, recipe.fps, cyclic)
    arm = _deforming_armature(objs)
    skin = _skin(objs, arm) if arm is not None else None
    # ground truth: every vertex (and every pose bone) at every sampled time
    positions, faces, bone_mats, bone_ht = [], None, [], None
    for tt in times:
        v, tris = pose_at(tt)
        if faces is None:
            faces = np.concatenate(tris)
        elif len(v) != len(positions[0]):
            raise RuntimeError("vertex count changes over the clip (topology-changing modifier)")
        positions.append(v)
        if skin is not None:
            mats, heads, tails = _bone_world(arm, skin["names"])
            bone_mats.append(mats)
            bone_ht = bone_ht or (heads, tails)
    pos = np.stack(positions).astype(np.float32)
    rig = rig_gt = None
    rig_meta: dict = {"rig": None}
    if skin is not None:
        if len(skin["joints"]) != pos.shape[1]:
            raise RuntimeError(f"skin covers {len(skin['joints'])} vertices, the evaluated meshes have {pos.shape[1]}")
        keep = deforming_bones(skin["parents"], skin["joints"], skin["weights"])
        parents, joints = subset_rig(keep, skin["parents"], skin["joints"], skin["weights"])
        rig = validate_rig([skin["names"][i] for i in keep], parents, bone_ht[0][keep], bone_ht[1][keep], joints, skin["weights"], pos.shape[1])
        mats = np.stack(bone_mats)[:, keep]
        pose = contract_pose(mats, rig.parents, rig.heads)
        rig_gt = {"bone_matrices": mats.astype(np.float64), "bone_rotations": pose["bone_rotations"],
                  "root_translation": pose["root_translation"]}
        # how well the contract (parent-relative rotations + one root translation) expresses the clip:
        # the error of skinning the GT rotations, a floor for any engine given this rig
        floor = np.linalg.norm(skin_contract(pos[0], rig.parents, rig.heads, rig.joints, rig.weights, pose["bone_rotations"],
                                             pose["root_translation"]) - pos, axis=-1) / diag0
        rig_meta = {"rig": {"contract_floor_mean": float(floor[1:].mean()) if len(floor) > 1 else 0.0,
                            "contract_floor_max": float(floor.max()), "armature": arm.name, "n_bones": rig.n_bones, "armature_bones": len(skin["names"]), "max_influences": int(rig.joints.shape[1]),
                            "unskinned_vertices": skin["unskinned_vertices"], "scale_deviation": pose["scale_deviation"],
                            "child_offset_error": pose["child_offset_error"]}}
    # camera framing the object over the whole clip
    lo, hi = pos.reshape(-1, 3).min(0), pos.reshape(-1, 3).max(0)
    c, r = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
    d = np.asarray(VIEWS[recipe.view], float)
    d /= np.linalg.norm(d)
    dist = r / np.sin(np.radians(FOV_DEG) / 2) * 1.05
    M = look_at(c + d * dist, c, up=np.array([0.0, 0.0, 1.0]))
    W = H = recipe.size
    camera = Camera((W, H), intrinsics(W, H, FOV_DEG), M[None])
    _blender_camera(bpy, scene, M, FOV_DEG)
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "TEXTURE"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    tmp = Path(job["folder"]).with_name(f".{recipe.name}.render")
    tmp.mkdir(parents=True, exist_ok=True)
    import cv2

    rgba = []
    for i, tt in enumerate(times):
        scene.frame_set(int(np.floor(tt)), subframe=float(tt - np.floor(tt)))
        scene.render.filepath = str(tmp / f"{i:05d}.png")
        bpy.ops.render.render(write_still=True)
        im = cv2.imread(str(tmp / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        rgba.append(cv2.cvtColor(im, cv2.COLOR_BGRA2RGBA))
    for f in tmp.glob("*.png"):
        f.unlink()
    tmp.rmdir()
    mesh = Mesh(pos[0].copy(), faces.astype(np.int32), rig)
    write_sequence(
        Path(job["folder"]),
        recipe,
        mesh,
        pos,
        camera,
        np.stack(rgba),
        {"asset": Path(asset).name, "clip": clip_name, "objects": [o.name for o in objs], "blender": bpy.app.version_string,
         "fps": float(video_fps), "sampling": recipe.sampling, "cyclic": cyclic,
         "clip_range_blender_frames": [float(start), float(end)], "scene_fps": float(scene_fps),
         "clip_times_blender_frames": [float(x) for x in times], "coordinates": "Blender world, Z up, first sampled frame",
         **rig_meta},
        rig_gt,
    )


if __name__ == "__main__":
    _run_in_blender(json.loads(sys.argv[1]))
