"""Engine `actionmesh` end to end on CPU with the fixtures' tiny networks.

Chain conformance: the engine's own denoise and decode steps reproduce the reference's sampler and
autoencoder outputs (same seed stream on CPU), and its output expansion reproduces the reference's
tracks. Then the real entry points: `afv animate --engine actionmesh` on a real video file (20
frames: two windows), cancel between denoising steps, missing weights, and the HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from afv.engines import get_engine_spec
from afv.engines.actionmesh import ActionMeshEngine, ActionMeshOptions
from afv.engines.actionmesh.mesh_prep import prepare_mesh
from afv.errors import Cancelled, InputError
from afv.progress import CancelToken, Progress
from afv.tracks import load_tracks

from actionmesh_support import fixtures_dir, load, max_abs, tiny_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    fixtures_dir()
    return tiny_weights(tmp_path_factory.mktemp("weights"))


def test_engine_denoise_step_reproduces_the_reference_sampler(weights):
    d = load("sampler_tiny_io.safetensors")
    eng = ActionMeshEngine(ActionMeshOptions(weights_dir=str(weights), steps=3))
    with torch.inference_mode():
        lat = eng.denoise(d["anchor_latent"], d["context"][0], torch.device("cpu"), 44, Progress())
    assert max_abs(lat, d["step2.latents_after"][0]) < 2e-4
    assert torch.equal(lat[0], d["anchor_latent"])


def test_engine_decode_and_expand_reproduce_the_reference(weights):
    ae = load("autoencoder_tiny_io.safetensors")
    m = {k: v.numpy() for k, v in load("mesh_prep.safetensors").items()}
    prep = prepare_mesh(m["orig_vertices"], m["orig_faces"])
    eng = ActionMeshEngine(ActionMeshOptions(weights_dir=str(weights)))
    with torch.inference_mode():
        frames = eng.decode(ae["latents"][0], prep, torch.device("cpu"), Progress())
    assert frames.shape == (16, 162, 3)
    assert max_abs(frames[1:], ae["positions"][0]) < 2e-5
    assert np.abs(frames[0] - prep.mesh.vertices).max() == 0.0
    tracks = prep.expand(frames)
    assert np.abs(tracks - m["tracks_original_topology"]).max() < 1e-6 * 3.0


def run_afv(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(REPO / "backend") + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run([sys.executable, "-m", "afv", *args], capture_output=True, text=True, env=e, timeout=timeout)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict[str, Path]:
    """The bundled sample rendered to a real mp4 (20 frames), and its mesh with UV-seam style duplicates."""
    out = tmp_path_factory.mktemp("sample")
    r = run_afv("sample", "--out", str(out), "--frames", "20", "--size", "96")
    assert r.returncode == 0, r.stderr
    paths = {k: Path(v) for k, v in json.loads(r.stdout).items()}
    mesh = np.load(paths["mesh"])
    v, f = mesh["vertices"], mesh["faces"].copy()
    # duplicate 40 vertices and let the faces of every other row use the copies (a split seam)
    dup = np.arange(0, 80, 2)
    copies = len(v) + np.arange(len(dup))
    remap = np.arange(len(v) + len(dup))
    remap[dup] = copies
    f[1::2] = remap[f[1::2]]
    np.savez(out / "seams.npz", vertices=np.concatenate([v, v[dup]]).astype(np.float32), faces=f.astype(np.int32))
    paths["seams"], paths["dup"], paths["copies"] = out / "seams.npz", dup, copies
    return paths


def test_cli_animate_actionmesh_end_to_end_two_windows(weights, clip, tmp_path):
    out = tmp_path / "tracks.npz"
    r = run_afv("animate", "--engine", "actionmesh", "--mesh", str(clip["seams"]), "--video", str(clip["video"]),
                "--masks", "auto", "-o", "fast=true", "--out", str(out), "--json",
                env={"AFV_ACTIONMESH_WEIGHTS": str(weights), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "FAIR Noncommercial" in r.stderr and "denoise" in r.stderr  # licence notice, progress
    tr = load_tracks(out)
    mesh = np.load(clip["seams"])
    n = len(mesh["vertices"])
    assert tr.displacements.shape == (20, n, 3)
    assert np.all(np.isfinite(tr.displacements)) and np.all(tr.displacements[0] == 0)
    info = tr.meta["info"]
    assert info["windows"] == 2 and info["steps"] == 15 and info["merged_vertices"] == n - len(clip["dup"])
    # seam copies move exactly with their twins (expanded through the merge map)
    assert np.array_equal(tr.displacements[:, clip["copies"]], tr.displacements[:, clip["dup"]])
    # decoded positions stay inside the anchor's normalisation cube (autoencoder output clamped to [-1, 1])
    pos = mesh["vertices"][None] + tr.displacements
    lo, hi = mesh["vertices"].min(0), mesh["vertices"].max(0)
    half = (hi - lo).max() / 2
    assert np.all(np.abs(pos - (lo + hi) / 2) <= half * (1 + 1e-5))
    # every frame after the anchor moved (random weights: arbitrary, but decoded, not copied)
    assert np.all(np.abs(tr.displacements[1:]).max(axis=(1, 2)) > 1e-4)


def test_cancel_between_denoising_steps(weights, clip):
    from afv.pipeline import animate
    from afv.request import parse_request

    token = CancelToken()
    seen: list[str] = []

    def on_event(ev):
        seen.append(ev.stage)
        if seen.count("denoise") == 2:  # the stage start, then the first finished step
            token.cancel()

    req = parse_request(mesh=clip["mesh"], video=clip["video"], engine="actionmesh", masks="auto",
                        options={"weights_dir": str(weights), "steps": 30})
    with pytest.raises(Cancelled):
        animate(req, Progress(on_event=on_event, cancel=token))
    assert seen.count("denoise") == 2 and "positions" not in seen


def test_missing_weights_refused_before_any_work(clip, tmp_path, monkeypatch):
    monkeypatch.delenv("AFV_ACTIONMESH_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="actionmesh weights not found"):
        get_engine_spec("actionmesh").create({})
    ok, why = get_engine_spec("actionmesh").availability()
    assert not ok and "afv weights fetch" in why
    out = tmp_path / "t.npz"
    r = run_afv("animate", "--engine", "actionmesh", "--mesh", str(clip["mesh"]), "--video", str(clip["video"]),
                "--out", str(out), env={"HF_HUB_CACHE": str(tmp_path / "empty"), "AFV_ACTIONMESH_WEIGHTS": ""})
    assert r.returncode == 2 and "actionmesh weights not found" in r.stderr and "afv weights fetch" in r.stderr
    assert not out.exists()


def test_actionmesh_is_never_the_default():
    from afv.engines import DEFAULT_ENGINE, ENGINES

    spec = ENGINES["actionmesh"]
    assert DEFAULT_ENGINE != "actionmesh" and spec.needs_weights and "Noncommercial" in spec.licence


def test_server_lists_availability_and_runs_a_job(weights, tmp_path):
    """A real `afv serve` process on loopback: unavailable without weights (and refused at submission), then a job."""
    import importlib.util

    from afv_dev import synthetic

    spec = importlib.util.spec_from_file_location("afv_backend_client_am", REPO / "blender_addon" / "backend_client.py")
    bc = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bc
    spec.loader.exec_module(bc)
    seq = synthetic.rigid_sequence(6, (64, 64), subdivisions=1)
    synthetic.write_png_folder(synthetic.render_sequence(seq), tmp_path / "clip")  # PNGs with alpha
    buf = tmp_path / "mesh.npz"
    np.savez(buf, vertices=seq.mesh.vertices.astype(np.float32), faces=seq.mesh.faces.astype(np.int32))
    base = {"PYTHONPATH": os.pathsep.join([str(REPO / "backend"), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    extra = ["--allow-root", str(tmp_path)]

    proc = bc.launch_backend(sys.executable, tmp_path / "d1", env={**base, "AFV_ACTIONMESH_WEIGHTS": ""}, timeout_s=60, extra_args=extra)
    try:
        c = proc.client()
        am = {e["name"]: e for e in c.info()["engines"]}["actionmesh"]
        assert am["available"] is False and "afv weights fetch" in am["unavailable_reason"]
        with pytest.raises(bc.BackendError) as err:
            c.submit(buf.read_bytes(), video_path=tmp_path / "clip", params={"engine": "actionmesh"})
        assert "actionmesh weights not found" in str(err.value)
    finally:
        proc.stop()

    proc = bc.launch_backend(sys.executable, tmp_path / "d2", env={**base, "AFV_ACTIONMESH_WEIGHTS": str(weights)},
                             timeout_s=60, extra_args=extra)
    try:
        c = proc.client()
        am = {e["name"]: e for e in c.info()["engines"]}["actionmesh"]
        assert am["available"] is True and am["default"] is False
        job = c.submit(buf.read_bytes(), video_path=tmp_path / "clip", params={"engine": "actionmesh", "options": {"steps": 2}})
        st = c.wait(job, poll_s=0.2, timeout_s=300)
        assert st["state"] == "done", st
        res = load_tracks(c.result(job, tmp_path / "r.npz"))
        assert res.displacements.shape == (6, len(seq.mesh.vertices), 3) and res.meta["engine"] == "actionmesh"
    finally:
        proc.stop()
