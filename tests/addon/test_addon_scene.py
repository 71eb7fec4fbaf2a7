"""The add-on's scene-facing behaviour in real Blender with real video files: the result's camera
in the scene (moving too), the scene range, warnings shown, refusals that change nothing, and
File > Import of a tracks file made by the real `afv animate` CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bpy  # noqa: E402  (the test extra installs it; a missing bpy must fail, not skip)

from addon_support import REPO, install_addon, mesh_object, module, positions_at, reset_scene  # noqa: E402
from afv_dev.synthetic import render_sequence, rigid_sequence, write_video  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scene")
    install_addon(tmp / "dist")
    seq = rigid_sequence(n_frames=8, size=(96, 96), subdivisions=1)
    frames = render_sequence(seq, background=(0.3, 0.3, 0.35))[..., :3]
    write_video(frames, tmp / "clip.mp4", fps=24.0)
    write_video(frames[:1], tmp / "one.mp4", fps=24.0)
    (tmp / "notes.txt").write_text("not a video\n")
    masks = tmp / "masks"
    masks.mkdir()
    import cv2

    for i in range(5):  # 5 masks for an 8-frame video
        cv2.imwrite(str(masks / f"{i:05d}.png"), np.full((96, 96), 255, np.uint8))
    (tmp / "seq").mkdir()
    (tmp / "masks7").mkdir()
    for i, f in enumerate(frames):  # the same clip as an image sequence, with 7 masks for its 8 images
        cv2.imwrite(str(tmp / "seq" / f"{i:05d}.png"), np.ascontiguousarray(f[..., ::-1]))
        if i < 7:
            cv2.imwrite(str(tmp / "masks7" / f"{i:05d}.png"), np.full((96, 96), 255, np.uint8))
    return {"tmp": tmp, "seq": seq}


@pytest.fixture()
def scene_obj(clips):
    reset_scene()
    seq = clips["seq"]
    obj = mesh_object("Box", seq.mesh.vertices, seq.mesh.faces)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.afv.start_frame = 1
    return obj


def snapshot() -> dict:
    """What a refusal must leave exactly as it was: every datablock, object transforms and mesh
    data (bytes), shape keys, animation, scene range and render settings."""
    snap: dict = {}
    for coll in ("objects", "meshes", "cameras", "actions", "movieclips", "images", "armatures", "shape_keys"):
        snap[coll] = sorted(d.name for d in getattr(bpy.data, coll))
    for o in bpy.data.objects:
        snap[f"obj:{o.name}"] = (np.array(o.matrix_world).tobytes(), [m.name for m in getattr(o, "modifiers", [])],
                                 o.animation_data is not None and o.animation_data.action is not None)
    for m in bpy.data.meshes:
        co = np.empty(len(m.vertices) * 3, np.float32)
        m.vertices.foreach_get("co", co)
        keys = [] if m.shape_keys is None else [k.name for k in m.shape_keys.key_blocks]
        snap[f"mesh:{m.name}"] = (co.tobytes(), keys)
    for c in bpy.data.cameras:
        snap[f"cam:{c.name}"] = (c.lens, c.shift_x, c.shift_y, len(c.background_images), c.show_background_images)
    s = bpy.context.scene
    r = s.render
    snap["scene"] = (s.frame_start, s.frame_end, s.frame_current, s.camera and s.camera.name, r.resolution_x,
                     r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y)
    return snap


# ---- refusals --------------------------------------------------------------------------------------
def test_one_frame_clip_is_refused_without_change(clips, scene_obj):
    scene = bpy.context.scene
    scene.afv.camera_mode = "ESTIMATE"
    for video, frames, why in ((clips["tmp"] / "one.mp4", (0, 0, 1), "1 frame"),
                               (clips["tmp"] / "clip.mp4", (7, 0, 1), "1 frame"),  # the last frame only
                               (clips["tmp"] / "clip.mp4", (0, 0, 9), "1 frame")):  # a step past the end
        scene.afv.video_path = str(video)
        scene.afv.frame_start, scene.afv.frame_end, scene.afv.frame_step = frames
        before = snapshot()
        with pytest.raises(RuntimeError, match=f"give {why}.*at least 2"):
            bpy.ops.afv.animate()
        assert snapshot() == before
    # a 1-frame result (e.g. a tracks file) is refused by the writer before it changes anything
    res = module("job").TracksResult(np.zeros((1, len(scene_obj.data.vertices), 3), np.float32),
                                     np.zeros(1, np.int32), 24.0, None, {})
    before = snapshot()
    with pytest.raises(ValueError, match="at least 2"):
        module("animate").apply_result(scene, scene_obj, res, scene.afv)
    assert snapshot() == before


def test_non_video_background_is_refused_without_change(clips, scene_obj):
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y = 640, 360
    scene.afv.video_path = str(clips["tmp"] / "notes.txt")
    before = snapshot()
    with pytest.raises(RuntimeError, match="not a video or an image"):
        bpy.ops.afv.video_background()
    assert snapshot() == before and (scene.render.resolution_x, scene.render.resolution_y) == (640, 360)
    # a real video is accepted and sizes the render to it
    scene.afv.video_path = str(clips["tmp"] / "clip.mp4")
    assert bpy.ops.afv.video_background() == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.resolution_y) == (96, 96)
    assert cam.data.background_images[0].clip.filepath.endswith("clip.mp4")


def test_mask_count_mismatch_is_refused_without_change(clips, scene_obj):
    scene = bpy.context.scene
    s = scene.afv
    s.video_path, s.camera_mode, s.mask_mode = str(clips["tmp"] / "clip.mp4"), "ESTIMATE", "PATH"
    s.mask_path = str(clips["tmp"] / "masks")
    before = snapshot()
    with pytest.raises(RuntimeError, match="5 masks but the video has 8 frames"):
        bpy.ops.afv.animate()
    assert snapshot() == before
    s.video_path, s.mask_path = str(clips["tmp"] / "seq" / "00000.png"), str(clips["tmp"] / "masks7")
    with pytest.raises(RuntimeError, match="7 masks but the video has 8 frames"):  # image sequences: exact
        bpy.ops.afv.animate()
    assert snapshot() == before


# ---- camera, range, warnings ---------------------------------------------------------------------
def _moving_camera(seq, T):
    """A camera panning and dollying around the object: (K, (W, H), (T, 4, 4) mesh_to_camera)."""
    from afv.camera import look_at

    K = np.array([[110.0, 0, 50.0], [0, 110.0, 46.0], [0, 0, 1]])
    c = seq.mesh.vertices.mean(0)
    eyes = [c + np.array([0.8 * np.sin(a), 0.3, 3.0 - 0.15 * t]) for t, a in enumerate(np.linspace(-0.4, 0.4, T))]
    return K, (96, 96), np.stack([look_at(e, c + np.array([0.05 * t, 0, 0])) for t, e in enumerate(eyes)])


def test_estimated_moving_camera_is_animated_in_the_scene_with_background(clips, scene_obj):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    scene = bpy.context.scene
    seq = clips["seq"]
    obj = scene_obj
    obj.matrix_world = Matrix.LocRotScale(Vector((1.0, 2.0, 0.5)), Matrix.Rotation(0.7, 3, "X").to_quaternion(), Vector((2.0,) * 3))
    s = scene.afv
    s.video_path, s.camera_mode, s.start_frame = str(clips["tmp"] / "clip.mp4"), "ESTIMATE", 10
    job = module("job")
    T = 8
    K, size, m2c = _moving_camera(seq, T)
    res = job.TracksResult(np.zeros((T, len(obj.data.vertices), 3), np.float32), np.arange(T, dtype=np.int32), 24.0,
                           None, {"engine": "construction", "info": {"warnings": ["the object touches the image border"]},
                                  "masks_result": {"notes": ["auto: camera moves"]}}, job.ResultCamera(K, size, m2c))
    summary = module("animate").apply_result(scene, obj, res, s)
    assert (scene.frame_start, scene.frame_end) == (10, 17)
    assert summary["warnings"] == ["the object touches the image border", "masks: auto: camera moves"]
    cam = scene.camera
    assert cam is not None and cam.name == summary["camera"] and cam.animation_data.action is not None
    assert cam.data.background_images[0].clip.filepath.endswith("clip.mp4")
    v = seq.mesh.vertices[::5].astype(np.float64)
    for t in (0, 3, 7):
        scene.frame_set(10 + t)
        pc = v @ m2c[t][:3, :3].T + m2c[t][:3, 3]
        uv = (pc / pc[:, 2:]) @ K.T
        ref = np.array([world_to_camera_view(scene, cam, obj.matrix_world @ Vector(p))[:] for p in v])
        ref_px = np.stack([ref[:, 0] * 96, (1 - ref[:, 1]) * 96], 1)
        assert np.abs(uv[:, :2] - ref_px).max() < 1e-2, t  # pixels
        assert np.allclose(ref[:, 2], pc[:, 2] * 2.0, rtol=1e-4)  # depth in world units: the object is scaled 2x
    # a second result replaces the path of the same camera (no second camera)
    module("animate").apply_result(scene, obj, res, s)
    assert sum(o.type == "CAMERA" for o in bpy.data.objects) == 1


# ---- File > Import of a real `afv animate` output ------------------------------------------------
@pytest.fixture(scope="module")
def cli_tracks(clips):
    from afv.mesh import save_mesh_npz

    tmp, seq = clips["tmp"], clips["seq"]
    save_mesh_npz(seq.mesh, tmp / "mesh.npz")
    (tmp / "cam.json").write_text(json.dumps(seq.camera.to_json()))
    out = tmp / "tracks.npz"
    env = {"PYTHONPATH": f"{REPO / 'backend'}", "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    r = subprocess.run([sys.executable, "-m", "afv", "animate", "--mesh", str(tmp / "mesh.npz"), "--video",
                        str(tmp / "clip.mp4"), "--camera", str(tmp / "cam.json"), "--engine", "rigid", "--max-size", "96",
                        "--out", str(out), "--json", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_import_cli_tracks_applies_keys_and_camera(clips, scene_obj, cli_tracks):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    scene = bpy.context.scene
    seq = clips["seq"]
    with np.load(cli_tracks) as z:
        disp, K, m2c = z["displacements"], z["camera_K"], z["camera_mesh_to_camera"]
    assert bpy.ops.afv.import_tracks(filepath=str(cli_tracks)) == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (1, 8)
    for t in (0, 4, 7):
        assert np.abs(positions_at(scene_obj, 1 + t) - (seq.mesh.vertices + disp[t])).max() < 1e-5
    diag = seq.mesh.bbox_diagonal()
    err = np.linalg.norm(positions_at(scene_obj, 8) - seq.positions[7], axis=1).mean() / diag
    assert err < 0.05, err  # the rigid engine followed the rendered motion
    cam = scene.camera
    assert cam is not None and cam.name == "AFV Camera"
    v = seq.mesh.vertices[::7].astype(np.float64)
    pc = v @ m2c[0][:3, :3].T + m2c[0][:3, 3]
    uv = (pc / pc[:, 2:]) @ K.T
    ref = np.array([world_to_camera_view(scene, cam, scene_obj.matrix_world @ Vector(p))[:] for p in v])
    assert np.abs(uv[:, :2] - np.stack([ref[:, 0] * 96, (1 - ref[:, 1]) * 96], 1)).max() < 1e-2
    assert "applied tracks.npz" in bpy.context.window_manager.afv.warnings  # the panel lists what was done


def test_import_refuses_other_vertex_count_without_change(clips, cli_tracks):
    reset_scene()
    seq = clips["seq"]
    mesh_object("Other", seq.mesh.vertices[:-3], seq.mesh.faces[np.all(seq.mesh.faces < len(seq.mesh.vertices) - 3, 1)])
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"mesh of \d+ vertices, this mesh has \d+"):
        bpy.ops.afv.import_tracks(filepath=str(cli_tracks))
    (clips["tmp"] / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(RuntimeError, match="not a tracks .npz"):
        bpy.ops.afv.import_tracks(filepath=str(clips["tmp"] / "bad.npz"))
    assert snapshot() == before
