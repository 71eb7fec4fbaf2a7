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
    prefs = bpy.context.preferences.addons["bl_ext.user_default.animate_from_video"].preferences
    prefs.python_path, prefs.data_dir = sys.executable, str(tmp / "data")
    s.video_path, s.camera_mode, s.engine, s.start_frame, s.max_size = str(video), "SCENE", ENGINE, 5, 128
    yield {"obj": obj, "seq": seq, "tmp": tmp}
    module("runtime").shutdown()


def _job(setup):
    animate, job_mod, runtime = module("animate"), module("job"), module("runtime")
    scene = bpy.context.scene
    req, _ = animate.build_request(scene, setup["obj"], scene.afv)
    cfg = animate.config_from_prefs(module("preferences").get(), str(setup["tmp"] / "data"))
    return job_mod.AnimateJob(runtime.STATE.session, cfg, req, setup["tmp"] / "results", poll_s=0.2).start()


def _wait(job, timeout=300, seen=None):
    t0 = time.monotonic()
    while not job.snapshot().finished:
        assert time.monotonic() - t0 < timeout, job.snapshot()
        if seen is not None:
            seen.append((job.snapshot().stage, job.snapshot().progress))
        time.sleep(0.05)
    return job.snapshot()


def test_animate_writes_keys_matching_motion_and_second_run_replaces(setup):
    obj, seq = setup["obj"], setup["seq"]
    seen: list = []
    first = _job(setup)
    st = _wait(first, seen=seen)
    assert st.state == "done", st
    # the backend's stages reach the add-on as they come (what the panel's progress bar shows):
    # the add-on's own stages, then the backend's in the backend's order. The add-on polls every
    # 0.2 s, so on an idle machine short stages finish between two polls: at least one backend
    # stage must be seen, every one seen must be one the backend ran, in its order
    stages = [s for s, _ in seen]
    own = ("starting backend", "uploading", "queued", "downloading", "done")  # the add-on's own (job.py)
    backend_seen = [s for s in dict.fromkeys(stages) if s not in own]
    ran = list(first.result.meta["timings_s"])  # every stage the backend ran, in order
    assert "starting backend" in stages and backend_seen, set(stages)
    assert len(ran) >= 4 and set(backend_seen) <= set(ran), (backend_seen, ran)
    assert [ran.index(s) for s in backend_seen] == sorted(ran.index(s) for s in backend_seen), (backend_seen, ran)
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and 0 < max(progress) <= 1
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


def test_choosing_a_video_starts_the_backend_before_the_first_job(setup):
    """Picking a video launches the backend in the background; the job then uses that process."""
    runtime = module("runtime")
    runtime.shutdown()
    scene = bpy.context.scene
    video = scene.afv.video_path
    scene.afv.video_path = ""
    assert runtime.STATE.session.client is None
    scene.afv.video_path = video  # what the file browser does
    early = runtime.STATE.early_start
    assert early is not None
    early.join(120)
    client, process = runtime.STATE.session.client, runtime.STATE.session.process
    assert client is not None and client.health()["ok"] and runtime.STATE.info.get("engines")
    t0 = time.monotonic()
    while not client.health()["warm"]:  # the worker imports the pipeline and the engines
        assert time.monotonic() - t0 < 120
        time.sleep(0.1)
    assert runtime.start_backend_early(module("animate").config_from_prefs(module("preferences").get(), str(setup["tmp"] / "data"))) is None
    st = _wait(_job(setup))
    assert st.state == "done", st
    assert runtime.STATE.session.process is process  # the early backend ran the job: no second launch


def test_engine_fit_saved_before_its_removal_runs_articulated(setup):
    """A scene or preference saved with engine `fit` (removed in round 3): the add-on sends the name
    as saved, the backend runs `articulated` under it and the result says which engine ran."""
    obj, seq = setup["obj"], setup["seq"]
    animate, job_mod, runtime = module("animate"), module("job"), module("runtime")
    scene = bpy.context.scene
    scene.afv.engine = "fit"
    try:
        req, _ = animate.build_request(scene, obj, scene.afv)
    finally:
        scene.afv.engine = ENGINE
    assert req.params["engine"] == "fit"
    req.params["options"] = {"iters": 20, "root_iters": 20, "n_tracks": 200, "n_surface": 400}  # fewer steps: a test
    cfg = animate.config_from_prefs(module("preferences").get(), str(setup["tmp"] / "data"))
    job = job_mod.AnimateJob(runtime.STATE.session, cfg, req, setup["tmp"] / "results_fit", poll_s=0.2).start()
    st = _wait(job)
    assert st.state == "done", st
    assert job.result.meta["engine"] == "articulated"
    diag = seq.mesh.bbox_diagonal()
    err = np.linalg.norm(job.result.displacements - seq.displacements, axis=-1).mean() / diag
    still = np.linalg.norm(seq.displacements, axis=-1).mean() / diag
    assert err < 0.4 * still, (err, still)  # measured 2.2 % vs still 16.0 % of the diagonal


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


def test_backend_warnings_reach_the_result(setup):
    """A camera that sees the object away from where the video shows it: the backend drops the computed masks with a note,
    and the note comes back with the result, ready for the panel and the report."""
    from mathutils import Vector

    obj = setup["obj"]
    scene = bpy.context.scene
    keep = obj.location.copy()
    obj.location = keep + Vector((0.9, 0.0, 0.0))  # the camera sees it beside where the video shows it
    bpy.context.view_layer.update()
    try:
        scene.afv.mask_mode = "AUTO"
        st = _job_keep(setup)
    finally:
        obj.location = keep
        bpy.context.view_layer.update()
    assert st[0].state == "done", st[0]
    warnings = st[1].result.warnings
    assert any("masks ignored" in w for w in warnings), warnings


def test_pose_to_first_frame_is_sent_and_an_engine_without_it_says_so(setup):
    """The panel's Pose to First Frame goes out as the request's first_pose (only when ticked); this
    module's engine (rigid) keeps frame 0 at rest and the job's warnings say so."""
    scene = bpy.context.scene
    animate = module("animate")
    assert "first_pose" not in animate.build_request(scene, setup["obj"], scene.afv)[0].params
    scene.afv.first_pose = True
    try:
        assert animate.build_request(scene, setup["obj"], scene.afv)[0].params["first_pose"] is True
        st, job = _job_keep(setup)
    finally:
        scene.afv.first_pose = False
    assert st.state == "done", st
    assert any("does not pose the first frame" in w for w in job.result.warnings), job.result.warnings


def _job_keep(setup):
    job = _job(setup)
    return _wait(job), job


def test_backend_health_503_is_explained(setup, tmp_path):
    """A backend whose job worker is stuck answers /v1/health with 503; the add-on's job (Connect to URL)
    fails with a message that says so and what to do, before uploading anything."""
    bc, job_mod, animate = module("backend_client"), module("job"), module("animate")
    proc = bc.launch_backend(sys.executable, tmp_path / "srv", env=module("backend_session").backend_env(),
                             extra_args=["--stuck-after", "0.3"])
    try:
        client = proc.client()
        scene = bpy.context.scene
        req, _ = animate.build_request(scene, setup["obj"], scene.afv)
        # a job that runs for minutes (many solver steps per window; cancelled below): in its fit stage
        # progress comes once per solved window, minutes apart, so the worker reads as stuck (> 0.3 s)
        busy = client.submit(req.mesh_npz, video_path=req.video_path, camera=req.camera,
                             params={**req.params, "engine": "articulated", "options": {"iters": 100000}})
        t0 = time.monotonic()
        while True:  # until the backend itself says its worker is stuck
            st_busy = client.status(busy)
            assert time.monotonic() - t0 < 120 and st_busy["state"] in ("queued", "running"), st_busy
            if st_busy.get("stage") != "fit":
                time.sleep(0.05)
                continue
            try:
                client.health()
            except bc.BackendError as exc:
                if exc.status == 503:
                    break
            time.sleep(0.05)
        cfg = module("backend_session").BackendConfig(mode="CONNECT", url=proc.url, token=proc.token)
        job = job_mod.AnimateJob(module("backend_session").BackendSession(), cfg, req, tmp_path / "res", poll_s=0.1).start()
        st = _wait(job, timeout=60)
        assert st.state == "failed" and st.job_id is None, st
        assert "cannot take jobs (HTTP 503)" in st.message and "stuck" in st.message and "restart" in st.hint, st
        client.cancel(busy)
    finally:
        proc.stop()


def test_rigged_mesh_is_accepted_by_the_backend(setup, tmp_path):
    """The rig arrays the add-on sends pass the backend's own validation (real HTTP, real process).
    Runs last in this module: it resets the scene the other tests share."""
    from test_addon_rig import make_rigged

    reset_scene()
    obj, arm = make_rigged(with_user_action=False)
    animate, job_mod, runtime = module("animate"), module("job"), module("runtime")
    scene = bpy.context.scene
    scene.afv.video_path, scene.afv.camera_mode, scene.afv.engine = str(setup["tmp"] / "clip.mp4"), "ESTIMATE", "static"
    req, warnings = animate.build_request(scene, obj, scene.afv)
    import io

    with np.load(io.BytesIO(req.mesh_npz)) as z:
        assert {"bone_names", "skin_weights"} <= set(z.files) and z["bone_names"].tolist()[0] == "root"
    prefs = bpy.context.preferences.addons["bl_ext.user_default.animate_from_video"].preferences  # reset_scene renewed it
    prefs.python_path, prefs.data_dir = sys.executable, str(setup["tmp"] / "data")
    cfg = animate.config_from_prefs(prefs, str(setup["tmp"] / "data"))
    job = job_mod.AnimateJob(runtime.STATE.session, cfg, req, tmp_path, poll_s=0.2).start()
    st = _wait(job)
    assert st.state == "done", st
    scene.afv.rig_keys = "BOTH"
    summary = animate.apply_result(scene, obj, job.result, scene.afv)
    assert summary["mode"] == "SHAPE_KEYS" and any("no bone rotations" in n for n in summary["notes"])

