"""`afv serve` over real HTTP on loopback: a real server process, the real stdlib client.

Ground truth: the static engine returns exactly zero displacements for the clip's frames;
job states, timings and refusals are checked against what each request asked for.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from afv_dev import synthetic
from afv.tracks import load_tracks

REPO = Path(__file__).resolve().parents[2]


def _load_client():
    # loaded by path: the add-on package's __init__ imports bpy, the client must not need it
    spec = importlib.util.spec_from_file_location("afv_backend_client", REPO / "blender_addon" / "backend_client.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bc = _load_client()
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO / "backend"), os.environ.get("PYTHONPATH", "")])}
LIMIT_ARGS = ["--max-vertices", "5000", "--max-frames", "200", "--max-faces", "10000", "--max-upload-mb", "16", "--max-queued", "40"]


def mesh_bytes(vertices, faces, **extra) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, vertices=vertices, faces=faces, **extra)
    return buf.getvalue()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A small rendered clip (PNG folder + mp4), its mesh, and a slow clip for cancel tests."""
    root = tmp_path_factory.mktemp("clips")
    seq = synthetic.rigid_sequence(8, (64, 64), subdivisions=1)
    rgba = synthetic.render_sequence(seq)
    synthetic.write_png_folder(rgba, root / "clip")
    synthetic.write_video(rgba[..., :3], root / "clip.mp4")
    # slow to decode on purpose: 300 links to one 1500x1500 PNG (~80 ms per frame), so a job
    # stays in its decode stage for many seconds and cancellation is observable
    import cv2

    big = np.zeros((1500, 1500, 3), np.uint8)
    big[::7] = 255
    slow = root / "slow"
    slow.mkdir()
    cv2.imwrite(str(root / "big.png"), big)
    for i in range(300):
        os.link(root / "big.png", slow / f"f{i:04d}.png")
    (root / "notes.txt").write_text("not a video")
    (root / "fake.mp4").write_bytes(b"\x00garbage" * 100)
    outside = tmp_path_factory.mktemp("outside")
    synthetic.write_png_folder(rgba[:2], outside / "clip")
    return {"root": root, "seq": seq, "mesh": mesh_bytes(seq.mesh.vertices, seq.mesh.faces), "outside": outside}


def launch(data_dir: Path, assets, extra=()) -> "bc.BackendProcess":
    return bc.launch_backend(sys.executable, data_dir, env=ENV, timeout_s=60,
                             extra_args=[*LIMIT_ARGS, "--allow-root", str(assets["root"]), *extra])


@pytest.fixture(scope="module")
def server(tmp_path_factory, assets):
    proc = launch(tmp_path_factory.mktemp("data"), assets)
    yield proc
    proc.stop()


def wait_state(client, job_id, states, timeout_s=30.0, poll_s=0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        st = client.status(job_id)
        if st["state"] in states:
            return st
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} not in {states} after {timeout_s}s: {st}")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_happy_path_static_local_path_and_upload(server, assets, tmp_path):
    c = server.client()
    info = c.info()
    assert info["api"] == "v1" and info["local_paths"] is True
    assert {e["name"] for e in info["engines"]} >= {"static"}
    assert all("licence" in e and "needs_camera" in e for e in info["engines"])
    assert [e["name"] for e in info["engines"] if e["first_pose"]] == ["articulated"]
    assert info["device"]["type"] in ("cpu", "cuda")
    seq = assets["seq"]
    n = seq.mesh.n_vertices
    import zipfile

    frames_zip = tmp_path / "frames.zip"
    with zipfile.ZipFile(frames_zip, "w") as zf:  # hostile member names must not matter
        for i, png in enumerate(sorted((assets["root"] / "clip").glob("*.png"))):
            zf.write(png, f"../../evil/{i}.png")
        zf.writestr("readme.txt", "ignored")
    for kw in ({"video_path": str(assets["root"] / "clip"), "masks": "alpha", "camera": seq.camera.to_json()},
               {"video_file": str(assets["root"] / "clip.mp4"), "masks": "none"},
               {"video_file": str(frames_zip), "masks": "alpha"}):
        job = c.submit(assets["mesh"], params={"engine": "static", "frames": "1:7:2", "max_size": 64}, **kw)
        final = c.wait(job, poll_s=0.05, timeout_s=30)
        assert final["state"] == "done", final
        assert final["progress"] == 1.0 and final["n_vertices"] == n and final["n_frames"] == 3
        path = c.result(job, tmp_path / f"{job}.npz")
        tr = load_tracks(path, n_vertices=n)
        assert tr.displacements.shape == (3, n, 3)
        assert np.array_equal(tr.frame_indices, [1, 3, 5])
        assert np.abs(tr.displacements).max() == 0.0  # static engine: exactly zero motion
        assert tr.meta["engine"] == "static" and tr.meta["masks"] == kw["masks"]
        if "camera" in kw:  # passed through at source resolution, one pose per frame
            assert tr.meta["camera_given"] and np.allclose(tr.camera.K, seq.camera.K)
            assert np.allclose(tr.camera.mesh_to_camera, seq.camera.mesh_to_camera[0])
        else:
            assert tr.camera is None
    assert {j["id"] for j in c.jobs()} >= {job}
    assert not list(tmp_path.glob(".*"))  # the client's download left no temp file


def test_rigid_engine_over_http_recovers_known_motion(server, tmp_path):
    """The issue's happy path: a real engine through the server, numbers against the construction."""
    seq = synthetic.rigid_sequence(10, (160, 160), subdivisions=2)
    rgba = synthetic.render_sequence(seq)
    root = tmp_path  # not under --allow-root, so the clip travels as an upload
    synthetic.write_png_folder(rgba, root / "clip")
    import zipfile

    with zipfile.ZipFile(root / "clip.zip", "w") as zf:
        for png in sorted((root / "clip").glob("*.png")):
            zf.write(png, png.name)
    c = server.client()
    job = c.submit(mesh_bytes(seq.mesh.vertices, seq.mesh.faces), video_file=str(root / "clip.zip"),
                   masks="alpha", camera=seq.camera.to_json(), params={"engine": "rigid", "max_size": 160})
    final = c.wait(job, poll_s=0.1, timeout_s=120)
    assert final["state"] == "done", final
    tr = load_tracks(c.result(job, tmp_path / "rigid.npz"), n_vertices=seq.mesh.n_vertices)
    err = np.linalg.norm(tr.positions(seq.mesh.vertices) - seq.positions, axis=-1)
    static = np.linalg.norm(seq.displacements, axis=-1)
    diag = seq.mesh.bbox_diagonal()
    print(f"rigid over HTTP: mean {100 * err.mean() / diag:.2f} %, static {100 * static.mean() / diag:.2f} %")
    assert err.mean() / diag < 0.01 and err.mean() < 0.05 * static.mean()  # measured 0.18 % vs 15.95 %


def test_cancel_running_job_within_two_seconds(server, assets):
    c = server.client()
    job = c.submit(assets["mesh"], video_path=str(assets["root"] / "slow"), params={"max_size": 64, "frames": "0:150"})
    st = wait_state(c, job, {"running"})
    t_wait = time.monotonic()
    while c.status(job)["progress"] <= 0.0:  # really inside the decode loop
        assert time.monotonic() - t_wait < 20
        time.sleep(0.05)
    t0 = time.monotonic()
    c.cancel(job)
    st = wait_state(c, job, {"cancelled", "done", "failed"}, timeout_s=5, poll_s=0.02)
    dt = time.monotonic() - t0
    assert st["state"] == "cancelled" and dt < 2.0, (st, dt)
    print(f"\ncancel: running -> cancelled in {dt:.3f}s")
    assert st["progress"] < 0.9
    with pytest.raises(bc.BackendError) as ei:
        c.result(job, server.log_path.parent / "never.npz")
    assert ei.value.status == 409
    job_dir = server.log_path.parent / "jobs" / job
    assert not (job_dir / "tracks.npz").exists() and not (job_dir / "input").exists()
    assert not (server.log_path.parent / "never.npz").exists()


def test_two_jobs_queue_and_both_finish(server, assets):
    c = server.client()
    clip = str(assets["root"] / "clip")
    a = c.submit(assets["mesh"], video_path=clip, params={"engine": "static", "frames": "0:4"})
    b = c.submit(assets["mesh"], video_path=clip, params={"engine": "static", "frames": "4:8"})
    fa, fb = c.wait(a, 0.05, 30), c.wait(b, 0.05, 30)
    assert fa["state"] == fb["state"] == "done"
    assert fa["n_frames"] == fb["n_frames"] == 4
    # one worker: b started only after a finished
    assert fb["started_unix"] >= fa["finished_unix"]


def test_token_and_origin(server):
    base = server.url
    with httpx.Client(timeout=10) as h:
        assert h.get(f"{base}/v1/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.token}):
            r = h.get(f"{base}/v1/info", headers=headers)
            assert r.status_code == 401 and "token" in r.json()["error"]
        good = {"Authorization": f"Bearer {server.token}"}
        assert h.get(f"{base}/v1/info", headers=good).status_code == 200
        r = h.get(f"{base}/v1/info", headers={**good, "Origin": "https://evil.example"})
        assert r.status_code == 403 and "origin" in r.json()["error"]
        assert h.get(f"{base}/v1/health", headers={"Origin": "null"}).status_code == 403
        # DNS rebinding: a foreign Host header on a loopback server
        assert h.get(f"{base}/v1/info", headers={**good, "Host": "evil.example"}).status_code == 403
        assert h.get(f"{base}/v1/openapi.json", headers=good).json()["info"]["title"]
        assert h.get(f"{base}/v1/openapi.json").status_code == 401
    with pytest.raises(bc.BackendError) as ei:
        bc.BackendClient(server.url, "wrong-token").info()
    assert ei.value.status == 401 and ei.value.hint


def _post(server, files=None, data=None, headers=None):
    with httpx.Client(timeout=30) as h:
        return h.post(f"{server.url}/v1/jobs", files=files, data=data,
                      headers={"Authorization": f"Bearer {server.token}", **(headers or {})})


def _malformed_cases(assets):
    seq = assets["seq"]
    v, f = seq.mesh.vertices, seq.mesh.faces
    clip = str(assets["root"] / "clip")
    good = assets["mesh"]
    nan_v = v.copy()
    nan_v[3, 1] = np.nan
    bomb = io.BytesIO()
    np.savez_compressed(bomb, vertices=np.zeros((400_000, 3)), faces=f)  # claims ~9.6 MB, limit ~0.2 MB
    pickled = mesh_bytes(v, f, extra=np.array([{"a": 1}], dtype=object))
    return {
        "truncated npz": (400, {"mesh": ("m.npz", good[: len(good) // 2])}, {"video_path": clip}, "npz"),
        "pickled npz": (400, {"mesh": ("m.npz", pickled)}, {"video_path": clip}, "pickle"),
        "wrong vertex shape": (400, {"mesh": ("m.npz", mesh_bytes(v[:, :2], f))}, {"video_path": clip}, "(N, 3)"),
        "faces out of range": (400, {"mesh": ("m.npz", mesh_bytes(v, f + len(v)))}, {"video_path": clip}, "outside"),
        "NaN vertices": (400, {"mesh": ("m.npz", mesh_bytes(nan_v, f))}, {"video_path": clip}, "NaN"),
        "oversized claims": (400, {"mesh": ("m.npz", bomb.getvalue())}, {"video_path": clip}, "claims"),
        "too many vertices": (400, {"mesh": ("m.npz", mesh_bytes(np.random.rand(6000, 3), f))}, {"video_path": clip}, "limit"),
        "no mesh": (400, None, {"video_path": clip}, "mesh"),
        "non-video local file": (400, {"mesh": ("m.npz", good)}, {"video_path": str(assets["root"] / "notes.txt")}, "not a video"),
        "corrupt video file": (400, {"mesh": ("m.npz", good)}, {"video_path": str(assets["root"] / "fake.mp4")}, "video"),
        "non-video upload": (400, {"mesh": ("m.npz", good), "video_file": ("notes.txt", b"hello")}, None, "unsupported"),
        "relative path": (400, {"mesh": ("m.npz", good)}, {"video_path": "clip"}, "absolute"),
        "dotdot path outside roots": (403, {"mesh": ("m.npz", good)}, {"video_path": f"{clip}/../../{assets['outside'].name}/clip"}, "allowed roots"),
        "path outside roots": (403, {"mesh": ("m.npz", good)}, {"video_path": str(assets["outside"] / "clip")}, "allowed roots"),
        "missing path outside roots": (403, {"mesh": ("m.npz", good)}, {"video_path": "/nonexistent/x.mp4"}, "allowed roots"),
        "missing path": (400, {"mesh": ("m.npz", good)}, {"video_path": clip + "_nope"}, "not found"),
        "both videos": (400, {"mesh": ("m.npz", good), "video_file": ("a.mp4", b"x")}, {"video_path": clip}, "exactly one"),
        "unknown engine": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "params": '{"engine": "nope"}'}, "engine"),
        "unknown option": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "params": '{"options": {"zz": 1}}'}, "option"),
        "params not JSON": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "params": "{engine"}, "JSON"),
        "max_size too big": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "params": '{"max_size": 100000}'}, "max_size"),
        "frames beyond clip": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "params": '{"frames": "0:50"}'}, "frame"),
        "too many frames": (413, {"mesh": ("m.npz", good)}, {"video_path": str(assets["root"] / "slow")}, "limit of 200"),
        "fps not finite": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "params": '{"fps": 1e999}'}, "fps"),
        "camera size mismatch": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "camera": json.dumps({**seq.camera.to_json(), "image_size": [640, 480]})}, "image_size"),
        "camera garbage": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "camera": '{"K": "x"}'}, "camera"),
        "unknown field": (400, {"mesh": ("m.npz", good)}, {"video_path": clip, "evil": "1"}, "unknown"),
    }


def test_malformed_inputs_are_4xx_and_server_keeps_serving(server, assets):
    data_dir = server.log_path.parent
    before = set((data_dir / "jobs").iterdir())
    cases = _malformed_cases(assets)
    for name, (status, files, data, needle) in cases.items():
        r = _post(server, files=files if files is not None else {"video_file": ("a.mp4", b"x")}, data=data)
        body = r.json()
        assert r.status_code == status, (name, r.status_code, body)
        assert needle.lower() in (body["error"] + body["hint"]).lower(), (name, body)
    # the `..` in client file names is dropped: the upload lands inside the job dir
    r = _post(server, files={"mesh": ("../../m.npz", assets["mesh"]),
                             "video_file": ("../../../escape.mp4", (assets["root"] / "clip.mp4").read_bytes())},
              data={"params": '{"engine": "static"}'})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    c = server.client()
    assert c.wait(job, 0.05, 30)["state"] == "done"
    assert not list(data_dir.parent.rglob("escape.mp4"))
    # ids that try to walk out of the jobs dir
    for bad in ("..%2F..%2Ftoken", "../token", "0" * 31 + "g"):
        with httpx.Client(timeout=10) as h:
            r = h.get(f"{server.url}/v1/jobs/{bad}", headers={"Authorization": f"Bearer {server.token}"})
        assert r.status_code == 404, (bad, r.status_code)
    # a body claiming to be huge is refused before it is read
    with socket.create_connection((server.url.split("//")[1].split(":")[0], int(server.url.rsplit(":", 1)[1])), 5) as s:
        s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
                  f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {10**12}\r\n\r\n".encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert c.health()["ok"]
    # refused submissions left no job folders behind (only the one accepted job)
    assert len(set((data_dir / "jobs").iterdir()) - before) == 1


def test_load_concurrent_polls_and_queued_submissions(server, assets, tmp_path):
    """50 concurrent status polls while a job runs, 20 queued submissions: no errors, and no
    threads or temp files left behind."""
    c = server.client()
    data_dir = server.log_path.parent
    pid = server.process.pid
    # warm up first: the worker thread, torch's OpenMP pool and the file-response pool start
    # with the first job; leaks are growth beyond that
    warm = c.submit(assets["mesh"], video_path=str(assets["root"] / "clip"), params={"engine": "static", "frames": "0:2"})
    assert c.wait(warm, 0.05, 60)["state"] == "done"
    c.result(warm, tmp_path / "warm.npz")
    threads_before = thread_count(pid)
    slow = c.submit(assets["mesh"], video_path=str(assets["root"] / "slow"), params={"engine": "static", "max_size": 64, "frames": "0:150"})
    wait_state(c, slow, {"running"})
    errors: list[BaseException] = []
    polled: list[dict] = []
    submitted: list[str] = []
    lock = threading.Lock()

    def poll():
        try:
            st = bc.BackendClient(server.url, server.token, timeout=20).status(slow)
            with lock:
                polled.append(st)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def submit(i):
        try:
            job = bc.BackendClient(server.url, server.token, timeout=30).submit(
                assets["mesh"], video_path=str(assets["root"] / "clip"), params={"engine": "static", "frames": f"{i % 4}:{i % 4 + 4}"})
            with lock:
                submitted.append(job)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t0 = time.monotonic()
    workers = [threading.Thread(target=poll) for _ in range(50)] + [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    burst_s = time.monotonic() - t0
    assert not errors, errors[:3]
    assert len(polled) == 50 and all(p["state"] == "running" for p in polled)
    assert len(submitted) == 20 and len(set(submitted)) == 20
    queued = [c.status(j) for j in submitted]
    assert all(s["state"] == "queued" for s in queued)  # the slow job still holds the worker
    assert sorted(s["queue_position"] for s in queued) == list(range(20))
    c.cancel(slow)
    for j in submitted:
        assert c.wait(j, 0.05, 60)["state"] == "done"
    for j in submitted[:3]:
        assert load_tracks(c.result(j, tmp_path / f"{j}.npz")).displacements.shape[0] == 4
    print(f"\nload: 50 polls + 20 submissions in {burst_s:.2f}s; threads {threads_before} -> {thread_count(pid)}")
    # threads: bounded executors only; nothing grows with the number of requests
    assert thread_count(pid) <= threads_before + 2
    assert not list((data_dir / "tmp").iterdir()), list((data_dir / "tmp").iterdir())
    assert not list((data_dir / "jobs").glob("*/.*")) and not list((data_dir / "jobs").glob("*/input"))


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # an unreaped zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_server_exits_when_parent_dies(tmp_path, assets):
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(REPO / "blender_addon")!r})
        import backend_client as bc
        p = bc.launch_backend(sys.executable, {str(tmp_path / "data")!r}, env={ENV!r}, timeout_s=60)
        print(json.dumps({{"pid": p.process.pid, "url": p.url, "token": p.token}}), flush=True)
        os._exit(0)  # die abruptly, like a crashing Blender: the server is not told
    """)
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert parent.returncode == 0, parent.stderr
    info = json.loads(parent.stdout.strip().splitlines()[-1])
    t0 = time.monotonic()
    try:
        while not _dead(info["pid"]):
            assert time.monotonic() - t0 < 10, "server outlived its parent"
            time.sleep(0.1)
    finally:
        if not _dead(info["pid"]):
            os.kill(info["pid"], signal.SIGKILL)
    print(f"\nparent death: server gone {time.monotonic() - t0:.2f}s after the parent exited")
    assert "parent process" in (tmp_path / "data" / "server.log").read_text()
    assert (tmp_path / "data" / "token").stat().st_mode & 0o777 == 0o600


def test_restart_serves_finished_result_and_fails_interrupted_jobs(tmp_path, assets):
    data = tmp_path / "data"
    a = launch(data, assets)
    try:
        c = a.client()
        done = c.submit(assets["mesh"], video_path=str(assets["root"] / "clip"), params={"engine": "static"})
        assert c.wait(done, 0.05, 30)["state"] == "done"
        first = c.result(done, tmp_path / "first.npz").read_bytes()
        slow = c.submit(assets["mesh"], video_path=str(assets["root"] / "slow"), params={"max_size": 64, "frames": "0:150"})
        queued = c.submit(assets["mesh"], video_path=str(assets["root"] / "clip"), params={"engine": "static"})
        wait_state(c, slow, {"running"})
    finally:
        t0 = time.monotonic()
        a.stop()
        stop_s = time.monotonic() - t0
    assert stop_s < 5.0, stop_s
    print(f"\nSIGTERM with a running job: stopped in {stop_s:.2f}s")  # SIGTERM cancels the running job instead of waiting for it
    b = launch(data, assets)
    try:
        c = b.client()
        assert b.token == a.token  # the token file is reused
        assert c.status(done)["state"] == "done"
        assert c.result(done, tmp_path / "again.npz").read_bytes() == first
        for j in (slow, queued):
            st = c.status(j)
            assert st["state"] == "failed" and "interrupted" in st["error"], st
        assert {j["id"] for j in c.jobs()} == {done, slow, queued}
    finally:
        b.stop()
