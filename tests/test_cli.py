"""The `afv` command line as a user runs it: real subprocess, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from afv.tracks import load_tracks

REPO = Path(__file__).resolve().parents[1]


def run_afv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "afv", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sample")
    r = run_afv("sample", "--out", str(out), "--frames", "6", "--size", "96")
    assert r.returncode == 0, r.stderr
    return {k: Path(v) for k, v in json.loads(r.stdout).items()}


def test_animate_static_writes_tracks_and_preview(sample, tmp_path):
    out, png = tmp_path / "t.npz", tmp_path / "sheet.png"
    r = run_afv("animate", "--engine", "static", "--mesh", str(sample["mesh"]), "--video", str(sample["video"]),
                "--camera", str(sample["camera"]), "--frames", "0:6:2", "--out", str(out), "--preview", str(png), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 3 and summary["max_displacement"] == 0.0
    tr = load_tracks(out)
    n = np.load(sample["mesh"])["vertices"].shape[0]
    assert tr.displacements.shape == (3, n, 3) and tr.frame_indices.tolist() == [0, 2, 4]
    assert tr.fps == pytest.approx(24.0) and tr.meta["engine"] == "static"
    assert png.stat().st_size > 1000
    assert "%" in r.stderr  # the progress bar went to stderr


def test_first_pose_on_an_engine_without_it_keeps_the_rest_pose_and_says_so(sample, tmp_path):
    out = tmp_path / "t.npz"
    r = run_afv("animate", "--engine", "static", "--mesh", str(sample["mesh"]), "--video", str(sample["video"]),
                "--camera", str(sample["camera"]), "--frames", "0:4", "--first-pose", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    tr = load_tracks(out)
    assert np.all(tr.displacements[0] == 0) and "first_pose" not in tr.meta["info"]
    assert any("does not pose the first frame" in w for w in tr.meta["info"]["warnings"]), tr.meta["info"]["warnings"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s, t: ["--video", str(t / "missing.mp4")], "not found"),
        (lambda s, t: ["--frames", "3:99"], "has 6 frames"),
        (lambda s, t: ["--engine", "nope"], "unknown engine"),
        (lambda s, t: ["--camera", str(_bad_size_camera(s, t))], "does not match"),
        (lambda s, t: ["--mesh", str(_no_faces_mesh(t))], "no faces"),
    ],
)
def test_animate_bad_input_clear_error_no_output(sample, tmp_path, mutate, message):
    args = {"--mesh": str(sample["mesh"]), "--video": str(sample["video"]), "--engine": "static"}
    extra = mutate(sample, tmp_path)
    args.update(dict(zip(extra[::2], extra[1::2])))
    out = tmp_path / "t.npz"
    flat = [x for kv in args.items() for x in kv]
    r = run_afv("animate", *flat, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not out.exists()


def _bad_size_camera(sample, tmp_path) -> Path:
    cam = json.loads(sample["camera"].read_text())
    cam["image_size"] = [640, 480]
    p = tmp_path / "cam.json"
    p.write_text(json.dumps(cam))
    return p


def _no_faces_mesh(tmp_path) -> Path:
    p = tmp_path / "points.npz"
    np.savez(p, vertices=np.random.rand(5, 3).astype(np.float32), faces=np.zeros((0, 3), np.int32))
    return p
