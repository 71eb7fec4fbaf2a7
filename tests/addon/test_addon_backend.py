"""The add-on's operator core path against a real backend process that the add-on launches.

Real bpy, real `afv serve` subprocess on loopback, a rendered video with known motion.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bpy  # noqa: F401  (the test extra installs it; a missing bpy must fail, not skip)

from addon_support import install_addon, mesh_object, module, positions_at, reset_scene  # noqa: E402
from afv_dev.blender_demo import blender_camera_from_cv  # noqa: E402
from afv_dev.synthetic import render_sequence, rigid_sequence, write_video  # noqa: E402

ENGINE = "rigid"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("addon_e2e")
    install_addon(tmp / "dist")
    reset_scene()
    seq = rigid_sequence(n_frames=10, size=(128, 128), subdivisions=2)
    video = tmp / "clip.mp4"
    write_video(render_sequence(seq, background=(0.3, 0.3, 0.35))[..., :3], video, fps=30.0)
    obj = mesh_object("Box", seq.mesh.vertices, seq.mesh.faces)
    cam = seq.camera
    blender_camera_from_cv(bpy, obj, cam.K, cam.image_size, cam.pose(0))
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    s = scene.afv
    s.video_path, s.camera_mode, s.engine, s.start_frame, s.max_size = str(video), "SCENE", ENGINE, 5, 128
    prefs = bpy.context.preferences.addons["bl_ext.user_default.animate_from_video"].preferences
    prefs.python_path, prefs.data_dir = sys.executable, str(tmp / "data")
    yield {"obj": obj, "seq": seq, "tmp": tmp, "prefs": prefs}
    module("runtime").shutdown()


def _job(setup):
    animate, job_mod, runtime = module("animate"), module("job"), module("runtime")
    scene = bpy.context.scene
    req, _ = animate.build_request(scene, setup["obj"], scene.afv)
    cfg = animate.config_from_prefs(setup["prefs"], str(setup["tmp"] / "data"))
    return job_mod.AnimateJob(runtime.STATE.session, cfg, req, setup["tmp"] / "results", poll_s=0.2).start()


def _wait(job, timeout=300):
    t0 = time.monotonic()
    while not job.snapshot().finished:
        assert time.monotonic() - t0 < timeout, job.snapshot()
        time.sleep(0.05)
    return job.snapshot()


def test_animate_writes_keys_matching_motion_and_second_run_replaces(setup):
    obj, seq = setup["obj"], setup["seq"]
    st = _wait(_job(setup))
    assert st.state == "done", st
    job = _job(setup)  # second run: same result, keys replaced not added
    assert _wait(job).state == "done"
    scene = bpy.context.scene
    summary = module("animate").apply_result(scene, obj, job.result, scene.afv)
    summary = module("animate").apply_result(scene, obj, job.result, scene.afv)
    assert summary["keys"] == 10 and len(obj.data.shape_keys.key_blocks) == 11
    # 10 frames at 30 fps = 0.3 s between first and last -> 7.2 frames at 24 fps, from frame 5
    assert summary["first_frame"] == 5 and summary["last_frame"] == pytest.approx(5 + 9 * 24 / 30)
    diag = seq.mesh.bbox_diagonal()
    for t in (0, 4, 9):
        got = positions_at(obj, 5 + t * 24 / 30)
        err = np.linalg.norm(got - seq.positions[t], axis=1).mean() / diag
        assert err < 0.05, (t, err)


def test_cancel_leaves_mesh_untouched(setup):
    obj = setup["obj"]
    module("shape_keys").remove_tracks(obj)
    before = positions_at(obj, 6.0)
    n_keys = len(obj.data.shape_keys.key_blocks) if obj.data.shape_keys else 0
    job = _job(setup)
    job.cancel()
    st = _wait(job)
    assert st.state == "cancelled" and job.result is None
    assert (len(obj.data.shape_keys.key_blocks) if obj.data.shape_keys else 0) == n_keys
    assert np.array_equal(positions_at(obj, 6.0), before)


def test_backend_dying_mid_job_is_an_error(setup):
    job = _job(setup)
    t0 = time.monotonic()
    while job.snapshot().job_id is None and not job.snapshot().finished:
        assert time.monotonic() - t0 < 120
        time.sleep(0.01)
    module("runtime").STATE.session.process.process.kill()
    st = _wait(job)
    assert st.state == "failed" and "stopped unexpectedly" in st.message, st


def test_missing_interpreter_and_packages_are_explained(setup, tmp_path):
    bs = module("backend_session")
    with pytest.raises(bs.BackendError) as e:
        bs.preflight(str(tmp_path / "nope" / "python"))
    assert "not found" in e.value.message and "venv" in e.value.hint
    other = shutil.which("python3", path="/usr/bin:/bin")
    if other is None:
        pytest.skip("no system python3 to check the missing-packages message")
    with pytest.raises(bs.BackendError) as e:
        bs.preflight(other)
    assert "lacks packages" in e.value.message and "pip install" in e.value.hint
