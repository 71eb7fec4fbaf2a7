"""Headless Blender demo: the add-on's own path, end to end, with the bpy module.

run_blender_demo(out_dir, sample, python_exe) builds the extension zip, installs it into an isolated
Blender user folder, loads the sample mesh and a camera matching the sample's, lets the add-on
launch the backend (`python_exe -m afv serve`), writes the shape keys, saves a .blend and a
contact sheet (video frames above, the evaluated Blender mesh drawn over them below).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PKG = "bl_ext.user_default.animate_from_video"


def _camera_convert():
    """The add-on's Blender <-> OpenCV camera conversion, loaded by path: the add-on cannot import
    the backend, so the dev tooling borrows the add-on's module rather than keep an inverse copy."""
    spec = importlib.util.spec_from_file_location("afv_addon_camera_convert", REPO / "blender_addon" / "camera_convert.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{REPO / 'blender_addon' / 'camera_convert.py'} not found: run from a checkout of the repository")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def blender_camera_from_cv(bpy, obj, K: np.ndarray, size: tuple[int, int], mesh_to_camera: np.ndarray):
    """A Blender camera object reproducing an OpenCV camera (K in pixels, mesh->camera pose) for `obj`."""
    from mathutils import Matrix

    settings, world = _camera_convert().blender_camera_from_cv(K, size, mesh_to_camera, np.array(obj.matrix_world))
    cam = bpy.data.objects.new("Video Camera", bpy.data.cameras.new("Video Camera"))
    bpy.context.scene.collection.objects.link(cam)
    for key, value in settings.items():
        setattr(cam.data, key, value)
    cam.matrix_world = Matrix(world.tolist())
    r = bpy.context.scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = size[0], size[1], 100
    bpy.context.scene.camera = cam
    return cam


def build_zip(out_dir: Path) -> Path:
    script = REPO / "build_addon.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: the Blender demo runs from a checkout of the repository")
    res = subprocess.run([sys.executable, str(script), "--out", str(out_dir)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"build_addon.py failed: {res.stderr or res.stdout}")
    return Path(res.stdout.strip().splitlines()[-1])


def install_and_enable(dist_dir: Path) -> Path:
    """The add-on built from this checkout (zip into dist_dir), installed into the (isolated)
    Blender user folder unless it is there already, in a factory-fresh scene, enabled. Needs the
    bpy module. Returns the zip's path."""
    import addon_utils  # noqa: PLC0415 (with bpy)
    import bpy  # noqa: PLC0415

    zip_path = build_zip(dist_dir)
    if PKG not in {a.module for a in bpy.context.preferences.addons}:
        bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable(PKG, default_set=True)
    return zip_path


def run_blender_demo(out_dir, sample: dict, python_exe: str | None = None, engine: str | None = None,
                     timeout_s: float = 900.0) -> dict:
    """Run the add-on headlessly on a sample written by afv_dev.sample.write_sample (its dict of
    paths); returns a summary dict (paths, error vs ground truth, timings)."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Blender reads its user folder once, at import: isolate it before importing bpy.
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(out / "blender_user"))
    import bpy  # noqa: PLC0415 (bpy is optional: only the test extra installs it)

    t0 = time.monotonic()
    python_exe = python_exe or sys.executable
    sample = {k: Path(v) for k, v in sample.items()}
    zip_path = install_and_enable(out / "dist")
    animate = importlib.import_module(f"{PKG}.animate")
    job_mod = importlib.import_module(f"{PKG}.job")
    shape_keys = importlib.import_module(f"{PKG}.shape_keys")
    runtime = importlib.import_module(f"{PKG}.runtime")
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    with np.load(sample["mesh"]) as z:
        verts, faces = z["vertices"].astype(np.float32), z["faces"].astype(np.int64)
    me = bpy.data.meshes.new("Sample")
    me.from_pydata(verts.tolist(), [], faces.tolist())
    obj = bpy.data.objects.new("Sample", me)
    scene.collection.objects.link(obj)
    obj.rotation_euler = (np.pi / 2, 0.0, 0.0)  # the sample is +Y up, Blender is +Z up
    bpy.context.view_layer.objects.active = obj
    bpy.context.view_layer.update()
    cam_json = json.loads(sample["camera"].read_text())
    M = np.asarray(cam_json["mesh_to_camera"], np.float64).reshape(-1, 4, 4)[0]
    blender_camera_from_cv(bpy, obj, np.asarray(cam_json["K"]), tuple(cam_json["image_size"]), M)
    bpy.context.view_layer.update()

    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.backend_mode, prefs.python_path, prefs.data_dir = "LAUNCH", str(python_exe), str(out / "backend_data")
    s = scene.afv
    s.video_path, s.camera_mode, s.start_frame = str(sample["video"]), "SCENE", 1
    if engine:
        s.engine = engine
    req, warnings = animate.build_request(scene, obj, s, bpy.context.evaluated_depsgraph_get())
    cfg = animate.config_from_prefs(prefs, str(out / "backend_data"))
    job = job_mod.AnimateJob(runtime.STATE.session, cfg, req, out / "results").start()
    deadline = time.monotonic() + timeout_s
    longest_tick = 0.0
    while not job.snapshot().finished:
        if time.monotonic() > deadline:
            job.cancel()
        t = time.perf_counter()
        job.snapshot()  # what one modal timer step does on the main thread before the final write
        longest_tick = max(longest_tick, time.perf_counter() - t)
        time.sleep(0.1)
    st = job.snapshot()
    if st.state != "done":
        runtime.shutdown()
        raise RuntimeError(f"the add-on's job ended '{st.state}': {st.message} {st.hint}")
    t = time.perf_counter()
    summary = animate.apply_result(scene, obj, job.result, s)
    write_s = time.perf_counter() - t
    runtime.shutdown()

    frames = shape_keys.evaluated_positions  # alias for brevity below

    key_frames = animate.timing.scene_frames(job.result.frame_indices, job.result.fps, 24.0, 1, 1.0)
    positions = []
    for f in key_frames:
        scene.frame_set(int(f // 1), subframe=float(f % 1))
        positions.append(frames(obj, bpy.context.evaluated_depsgraph_get()))
    positions = np.stack(positions)
    gt_path = sample.get("ground_truth")
    err_pct = None
    if gt_path and Path(gt_path).is_file():
        gt = np.load(gt_path)["positions"][job.result.frame_indices]
        diag = float(np.linalg.norm(verts.max(0) - verts.min(0)))
        err_pct = round(100 * float(np.linalg.norm(positions - gt, axis=-1).mean()) / diag, 3)
    blend = out / "animated.blend"
    scene.frame_set(1)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    sheet = _contact_sheet(sample, cam_json, faces, positions, job.result.frame_indices, out / "blender_contact_sheet.png")
    return {
        "blend": str(blend),
        "contact_sheet": str(sheet),
        "addon_zip": str(zip_path),
        "engine": summary["engine"],
        "shape_keys": summary["keys"],
        "scene_frames": [summary["first_frame"], summary["last_frame"]],
        "mean_error_pct_of_bbox_diagonal": err_pct,
        "key_write_s": round(write_s, 3),
        "longest_poll_step_ms": round(1000 * longest_tick, 3),
        "warnings": warnings,
        "seconds": round(time.monotonic() - t0, 2),
    }


def _contact_sheet(sample, cam_json, faces, positions, frame_indices, path: Path) -> Path:
    """Video frames above, the mesh as Blender evaluated it drawn over them below."""
    import cv2

    from afv.atomic import atomic_path
    from afv.camera import camera_from_dict
    from afv.mesh import Mesh
    from afv.preview import contact_sheet, overlay_frames
    from afv.video import FrameRange, load_video

    clip = load_video(sample["video"], FrameRange(), max_size=256)
    cam = camera_from_dict(cam_json)
    cam = cam.scaled(clip.size[0] / cam.image_size[0], clip.size[1] / cam.image_size[1])
    video = clip.frames[np.clip(frame_indices, 0, clip.n_frames - 1)]
    mesh = Mesh(np.asarray(positions[0], np.float32), np.asarray(faces, np.int32))
    sheet = contact_sheet([video, overlay_frames(video, mesh, np.asarray(positions), cam)], ["video", "blender"])
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path

