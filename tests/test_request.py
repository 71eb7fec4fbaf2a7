"""The typed request (afv.request): parsed once at the edge, checked once against the inputs.

Ground truth by construction: a rendered clip of known size and frame count, cameras and
mask folders made to agree or disagree with it in one known way each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from afv.camera import Camera
from afv.errors import InputError
from afv.masks import MaskSource
from afv.request import (
    AnimateRequest,
    InputProbe,
    LimitExceeded,
    RequestLimits,
    check_request,
    parse_request,
    probe_inputs,
)
from afv.video import FrameRange
from afv_dev import synthetic

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO), os.environ.get("PYTHONPATH", "")])}
T, SIZE = 6, (64, 48)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("req")
    seq = synthetic.rigid_sequence(T, SIZE, subdivisions=1)
    rgba = synthetic.render_sequence(seq)
    synthetic.write_png_folder(rgba, root / "clip")
    synthetic.write_video(rgba[..., :3], root / "clip.mp4")
    (root / "masks").mkdir()
    for i, a in enumerate(rgba[..., 3]):
        cv2.imwrite(str(root / "masks" / f"m{i:03d}.png"), a)
    np.savez(root / "mesh.npz", vertices=seq.mesh.vertices, faces=seq.mesh.faces)
    (root / "cam.json").write_text(json.dumps(seq.camera.to_json()))
    return root, seq


def test_parse_request_gives_typed_fields(clip):
    root, seq = clip
    req = parse_request(mesh=root / "mesh.npz", video=str(root / "clip"), masks=str(root / "masks"),
                        camera=str(root / "cam.json"), frames="1:5:2", engine="rigid", options={"grid_step": "3"},
                        up_axis="+z", fps=12, device="cpu", first_pose=True)
    assert req.frames == FrameRange(1, 5, 2)
    assert req.masks == MaskSource(None, root / "masks")
    assert isinstance(req.camera, Camera) and req.camera.image_size == SIZE
    assert req.options.grid_step == 3 and type(req.options).__name__ == "RigidOptions"
    assert np.array_equal(req.up_axis, [0, 0, 1]) and req.fps == 12.0 and req.mesh.n_vertices == seq.mesh.n_vertices
    assert req.first_pose is True and parse_request(mesh=seq.mesh, video=root / "clip").first_pose is False
    assert parse_request(mesh=seq.mesh, video=root / "clip", masks="  alpha ").masks == MaskSource("alpha", None)
    assert parse_request(mesh=seq.mesh, video=root / "clip", masks=None).masks == MaskSource("auto", None)
    # typed fields: strings cannot sneak past the edge
    for bad in ({"frames": "0:4"}, {"masks": "auto"}, {"video": "clip"}, {"camera": "cam.json"}, {"options": {}}):
        kw = {"mesh": seq.mesh, "video": root / "clip", "options": req.options, **bad}
        with pytest.raises(TypeError, match="parse_request"):
            AnimateRequest(**kw)


@pytest.mark.parametrize("field,value,needle", [
    ("frames", "5:2", "empty"), ("frames", "a:b", "start:end:step"), ("frames", 7, "string"),
    ("masks", "a\x00b", "NUL"), ("device", "cuda:x", "device"), ("device", "tpu", "device"),
    ("max_size", True, "max_size"), ("max_size", 8, "max_size"), ("max_size", "512", "max_size"),
    ("fps", float("nan"), "fps"), ("fps", -1, "fps"), ("seed", -1, "seed"), ("seed", 2**40, "seed"),
    ("engine", "nope", "unknown engine"), ("engine", ["rigid"], "engine"),
    ("options", {"iterz": 3}, "iterz"), ("options", {"iters": float("inf")}, "iters"), ("options", {"iters": 1e309}, "iters"),
    ("options", {"smooth": "nan"}, "smooth"), ("options", {"flips": "maybe"}, "flips"),
    ("options", {"iters": 2.5}, "iters"), ("options", {"iters": True}, "iters"), ("options", [1], "options"),
    ("up_axis", "sideways", "up_axis"), ("up_axis", 3, "up_axis"), ("first_pose", "yes", "first_pose"), ("first_pose", 1, "first_pose"),
    ("camera", {"K": "x"}, "camera"), ("camera", {"image_size": [64, 48], "K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                                  "mesh_to_camera": [[float("nan")] * 4] * 4}, "NaN"),
    ("video", "x" * 5000, "characters"), ("video", "/a/" + "b" * 300 + "/c", "component"), ("camera", "/nope/cam.json", "not found"),
])
def test_parse_request_refuses_each_bad_field(clip, field, value, needle):
    root, seq = clip
    kw = {"mesh": seq.mesh, "video": root / "clip", "engine": "articulated", field: value}
    with pytest.raises(InputError) as ei:
        parse_request(**kw)
    assert needle.lower() in str(ei.value).lower(), str(ei.value)


def test_check_request_against_probed_facts(clip):
    root, seq = clip
    ok = parse_request(mesh=seq.mesh, video=root / "clip", camera=seq.camera.to_json(), masks=str(root / "masks"),
                       frames="0:6:2", engine="rigid")
    probe = probe_inputs(ok)
    assert probe == InputProbe(SIZE, T, True, T, SIZE, seq.mesh.n_vertices, probe.cuda_devices)
    assert check_request(ok, probe) == 3
    mp4 = parse_request(mesh=seq.mesh, video=root / "clip.mp4", masks="none")
    p4 = probe_inputs(mp4)
    assert p4.video_size == SIZE and not p4.video_is_folder and check_request(mp4, p4) in (T, None)
    cam = seq.camera.to_json()
    cases = [
        ({"camera": {**cam, "image_size": [640, 480]}}, "image_size"),
        ({"camera": {**cam, "mesh_to_camera": [cam["mesh_to_camera"]] * 4}}, "4 poses but 3"),
        ({"frames": "0:60"}, "ends at 60"),
        ({"engine": "rigid", "camera": None}, "needs a camera"),
        ({"device": "cuda:99"}, "cuda:99"),
        ({"masks": "median", "frames": "0:2"}, "at least 3"),
    ]
    for change, needle in cases:
        kw = {"mesh": seq.mesh, "video": root / "clip", "camera": cam, "frames": "0:6:2", "engine": "static", **change}
        req = parse_request(**kw)
        with pytest.raises(InputError, match=needle):
            check_request(req, probe_inputs(req))
    with pytest.raises(InputError, match="no alpha"):
        req = parse_request(mesh=seq.mesh, video=root / "clip.mp4", masks="alpha")
        check_request(req, probe_inputs(req))
    short = root / "short_masks"
    short.mkdir()
    for f in sorted((root / "masks").iterdir())[:4]:
        (short / f.name).write_bytes(f.read_bytes())
    req = parse_request(mesh=seq.mesh, video=root / "clip", masks=str(short))
    with pytest.raises(InputError, match="4 images but the video has 6"):
        check_request(req, probe_inputs(req))
    req = parse_request(mesh=seq.mesh, video=root / "clip", masks=str(root / "missing"))
    with pytest.raises(InputError, match="neither a keyword"):
        probe_inputs(req)
    # limits (the server's): over one is a LimitExceeded (HTTP 413)
    for limits, needle in ((RequestLimits(max_frames=2), "3 frames selected"), (RequestLimits(max_frame_pixels=1000), "pixels"),
                           (RequestLimits(max_clip_pixels=3 * 64 * 48 - 1), "pixels"), (RequestLimits(max_size=256), "max_size")):
        with pytest.raises(InputError, match=needle) as ei:
            check_request(ok, probe, limits)
        assert isinstance(ei.value, LimitExceeded) == (needle != "max_size")


def _counts(log: Path) -> Counter:
    return Counter(log.read_text().split()) if log.exists() else Counter()


PARSERS = ("camera", "frames", "masks", "options", "up_axis")


def test_each_field_parsed_once_under_the_real_cli(clip, tmp_path):
    root, _ = clip
    log = tmp_path / "parses.log"
    r = subprocess.run([sys.executable, str(REPO / "tests" / "parse_counter.py"), "animate", "--mesh", str(root / "mesh.npz"),
                        "--video", str(root / "clip"), "--masks", str(root / "masks"), "--camera", str(root / "cam.json"),
                        "--frames", "0:4", "--engine", "static", "--up-axis", "+y", "--out", str(tmp_path / "t.npz"), "--quiet"],
                       env={**ENV, "AFV_PARSE_LOG": str(log)}, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert _counts(log) == Counter({p: 1 for p in PARSERS}), _counts(log)


def test_each_field_parsed_once_under_the_real_server(clip, tmp_path):
    root, seq = clip
    sys.path.insert(0, str(REPO / "blender_addon"))
    import backend_client as bc

    log = tmp_path / "parses.log"
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "parse_counter.py"), "serve", "--port", "0",
                             "--data-dir", str(data), "--allow-root", str(root)],
                            env={**ENV, "AFV_PARSE_LOG": str(log)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        client = bc.BackendClient(ready["url"], (data / "token").read_text().strip())
        startup = _counts(log)
        job = client.submit((root / "mesh.npz").read_bytes(), video_path=str(root / "clip"), masks=str(root / "masks"),
                            camera=seq.camera.to_json(),
                            params={"engine": "static", "frames": "0:4", "up_axis": "+y", "seed": 3})
        final = client.wait(job, poll_s=0.05, timeout_s=60)
        assert final["state"] == "done", final
        assert _counts(log) - startup == Counter({p: 1 for p in PARSERS}), (_counts(log), startup)
    finally:
        proc.terminate()
        proc.wait(10)
