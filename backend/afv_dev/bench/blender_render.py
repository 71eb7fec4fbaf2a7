"""Real animated assets (glTF) rendered through Blender's Python module (bpy).

`build_asset(recipe, folder)` runs this module in a subprocess (bpy keeps global state, and a
crash there must not take the caller down); the subprocess imports the asset into an empty
scene, selects the clip, samples `n_frames` at `fps` (looping the clip if it is shorter),
records every vertex of every rendered mesh object at every frame, renders RGBA frames with
Workbench (textures, studio light, transparent film) and writes a sequence folder.

Coordinates: the input mesh is all rendered mesh objects joined (object-name order, each
object's own vertex order), in Blender world coordinates at the first sampled frame (Z up).
So the mesh's coordinates are Blender world coordinates; camera.json maps them to OpenCV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from afv.errors import EngineError

VIEWS = {
    # direction from the object centre to the camera, Blender world (Z up, glTF front = -Y)
    "three_quarter": (np.sin(np.radians(40)), -np.cos(np.radians(40)), 0.35),
    "side": (1.0, 0.0, 0.15),
    "front": (0.0, -1.0, 0.2),
}
FOV_DEG = 35.0


def data_roots() -> list[Path]:
    """Where the shared development data may live ($AFV_DATA first)."""
    roots = []
    if os.environ.get("AFV_DATA"):
        roots.append(Path(os.environ["AFV_DATA"]))
    here = Path(__file__).resolve()
    for p in here.parents:
        roots.append(p / "shared" / "data")
    return roots


def asset_path(rel: str) -> Path | None:
    for r in data_roots():
        p = r / "assets" / rel
        if p.is_file():
            return p
    return None


def build_asset(recipe, folder: Path, timeout_s: float = 1800) -> Path:
    """Render one asset recipe into `folder` (via a bpy subprocess). Returns the folder."""
    folder = Path(folder)
    src = recipe.source.split(":", 1)[1]
    rel, _, clip = src.partition("#")
    path = asset_path(rel)
    if path is None:
        raise FileNotFoundError(rel)
    job = {"recipe": asdict(recipe), "asset": str(path), "clip": clip or None, "folder": str(folder)}
    env = dict(os.environ)
    backend = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = backend + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("BLENDER_USER_RESOURCES", str(folder.parent / ".blender-user"))
    r = subprocess.run(
        [sys.executable, "-m", "afv_dev.bench.blender_render", json.dumps(job)], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if r.returncode != 0 or not (folder / "gt.npz").is_file():
        tail = (r.stderr or r.stdout)[-2000:]
        raise EngineError(f"Blender could not build {recipe.name}: {tail}")
    return folder


# ----------------------------------------------------------------------------- inside bpy


def _render_objects(bpy):
    """Mesh objects that are rendered: not hidden, not a bone's custom display shape."""
    shapes = set()
    for o in bpy.data.objects:
        if o.type == "ARMATURE" and o.pose:
            shapes |= {pb.custom_shape.name for pb in o.pose.bones if pb.custom_shape}
    objs = [o for o in bpy.data.objects if o.type == "MESH" and o.name not in shapes and not o.hide_render]
    return sorted(objs, key=lambda o: o.name)


def _select_clip(bpy, clip: str | None) -> tuple[float, float, str]:
    """Assign the clip's action to every animated datablock; return its frame range and name."""
    actions = list(bpy.data.actions)
    if not actions:
        raise RuntimeError("asset has no animation")
    if clip:
        match = [a for a in actions if a.name == clip] or [a for a in actions if clip.lower() in a.name.lower()]
        if not match:
            raise RuntimeError(f"clip '{clip}' not found; actions: {[a.name for a in actions]}")
        act = match[0]
    else:
        act = actions[0]
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


def _run_in_blender(job: dict) -> None:
    import bpy

    from afv.camera import Camera, intrinsics, look_at
    from afv.mesh import Mesh
    from .sequences import Recipe, write_sequence

    rd = dict(job["recipe"])
    rd["variants"] = tuple(rd["variants"])
    recipe = Recipe(**rd)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    asset = job["asset"]
    bpy.ops.import_scene.gltf(filepath=asset)
    scene = bpy.context.scene
    start, end, clip_name = _select_clip(bpy, job["clip"])
    objs = _render_objects(bpy)
    for o in bpy.data.objects:  # hide helper meshes (bone shapes) from the render
        if o.type == "MESH" and o not in objs:
            o.hide_render = True
    scene_fps = scene.render.fps / scene.render.fps_base
    length = max(end - start, 1e-6)
    times = start + (np.arange(recipe.n_frames) / recipe.fps * scene_fps) % length
    # ground truth: every vertex at every sampled time
    positions, faces = [], None
    for tt in times:
        scene.frame_set(int(np.floor(tt)), subframe=float(tt - np.floor(tt)))
        dg = bpy.context.evaluated_depsgraph_get()
        v, tris = _gather(bpy, objs, dg)
        if faces is None:
            faces = np.concatenate(tris)
        elif len(v) != len(positions[0]):
            raise RuntimeError("vertex count changes over the clip (topology-changing modifier)")
        positions.append(v)
    pos = np.stack(positions).astype(np.float32)
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
    mesh = Mesh(pos[0].copy(), faces.astype(np.int32))
    write_sequence(
        Path(job["folder"]),
        recipe,
        mesh,
        pos,
        camera,
        np.stack(rgba),
        {"asset": Path(asset).name, "clip": clip_name, "objects": [o.name for o in objs], "blender": bpy.app.version_string,
         "clip_times_blender_frames": [float(x) for x in times], "coordinates": "Blender world, Z up, first sampled frame"},
    )


if __name__ == "__main__":
    _run_in_blender(json.loads(sys.argv[1]))
