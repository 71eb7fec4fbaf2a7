"""Data contracts: mesh, camera, tracks, video input and frame ranges, with bad input."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest

from afv.camera import Camera, camera_from_dict, intrinsics, load_camera, look_at
from afv.geometry.projection import project_points, transform_points
from afv.errors import InputError
from afv.mesh import load_mesh, validate_mesh
from afv_dev.synthetic import render_sequence, rigid_sequence, write_png_folder, write_video
from afv.tracks import Tracks, load_tracks
from afv.video import FrameRange, load_video


def test_frame_range_parse():
    assert FrameRange.parse("2:10:3").indices(20).tolist() == [2, 5, 8]
    assert FrameRange.parse("").indices(3).tolist() == [0, 1, 2]
    assert FrameRange.parse("5:").indices(7).tolist() == [5, 6]
    for bad in ("a:b", "3:1", "0:5:0", "1:2:3:4"):
        with pytest.raises(InputError):
            FrameRange.parse(bad)
    with pytest.raises(InputError, match="has 5 frames"):
        FrameRange.parse("0:9").indices(5)


def test_mesh_validation_errors(tmp_path):
    v = np.random.rand(10, 3).astype(np.float32)
    f = np.array([[0, 1, 2], [2, 3, 4]], np.int32)
    m = validate_mesh(v, f)
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32
    with pytest.raises(InputError, match="no faces"):
        validate_mesh(v, np.zeros((0, 3), np.int32))
    bad = v.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        validate_mesh(bad, f)
    with pytest.raises(InputError, match="outside"):
        validate_mesh(v, np.array([[0, 1, 99]]))
    # a pickled object array inside an npz is refused
    p = tmp_path / "pickled.npz"
    np.savez(p, vertices=np.array([object()], dtype=object), faces=f)
    with pytest.raises(InputError, match="pickle"):
        load_mesh(p)
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="not a valid"):
        load_mesh(tmp_path / "trunc.npz")


def test_mesh_obj_keeps_vertex_order(tmp_path):
    # duplicate vertices (a UV seam) and an unusual order must survive loading
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]], np.float32)
    f = np.array([[0, 1, 2], [3, 4, 2]])
    lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    (tmp_path / "m.obj").write_text("\n".join(lines))
    m = load_mesh(tmp_path / "m.obj")
    np.testing.assert_array_equal(m.vertices, v)
    np.testing.assert_array_equal(m.faces, f)


def test_camera_json_roundtrip_and_projection(tmp_path):
    K = intrinsics(640, 480, 50)
    M = look_at(np.array([0.0, 0.0, 4.0]), np.zeros(3))
    cam = Camera((640, 480), K, M[None])
    p = tmp_path / "cam.json"
    p.write_text(json.dumps(cam.to_json()))
    back = load_camera(p)
    np.testing.assert_allclose(back.K, K)
    # the target projects to the principal point; +x world is to the right, +y world is up
    uv = project_points(transform_points(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]), back.pose(0)), back.K)
    np.testing.assert_allclose(uv[0], [320, 240])
    assert uv[1, 0] > 320 and uv[2, 1] < 240
    with pytest.raises(InputError):
        camera_from_dict({"image_size": [640, 480], "K": [[1, 0], [0, 1]], "mesh_to_camera": np.eye(4).tolist()})


def test_tracks_roundtrip_and_atomic(tmp_path):
    d = np.random.rand(4, 7, 3).astype(np.float32)
    tr = Tracks(d, np.arange(0, 8, 2, dtype=np.int32), 30.0, np.ones((4, 7), np.float32), meta={"engine": "x"})
    p = tmp_path / "t.npz"
    tr.save(p)
    back = load_tracks(p, n_vertices=7)
    np.testing.assert_array_equal(back.displacements, d)
    assert back.meta == {"engine": "x"} and back.fps == 30.0
    with zipfile.ZipFile(p) as zf:  # nothing pickled on disk
        for name in zf.namelist():
            assert b"pickle" not in zf.read(name)[:200]
    with pytest.raises(InputError, match="7 vertices"):
        load_tracks(p, n_vertices=8)
    bad = Tracks(np.full((2, 3, 3), np.nan, np.float32), np.arange(2), 24.0)
    with pytest.raises(InputError):
        bad.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
    assert [x.name for x in tmp_path.iterdir()] == ["t.npz"]  # no temp leftovers


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    seq = rigid_sequence(n_frames=10, size=(96, 64))
    rgba = render_sequence(seq)
    root = tmp_path_factory.mktemp("clip")
    write_png_folder(rgba, root / "png")
    write_video(rgba[..., :3], root / "clip.mp4", fps=30)
    return root, rgba


def test_video_file_and_folder(clip_files):
    root, rgba = clip_files
    clip = load_video(root / "clip.mp4", "2:9:3", max_size=None)
    assert clip.frame_indices.tolist() == [2, 5, 8] and clip.fps == pytest.approx(30)
    assert clip.size == (96, 64)
    # lossy codec: compare loosely against the rendered frames
    assert np.abs(clip.frames.astype(int) - rgba[[2, 5, 8], ..., :3].astype(int)).mean() < 12
    folder = load_video(root / "png", None, max_size=48)
    assert folder.size == (48, 32) and folder.scale == pytest.approx(0.5)
    assert folder.alpha is not None and folder.alpha.shape == (10, 32, 48)


def test_video_bad_input(clip_files, tmp_path):
    root, _ = clip_files
    with pytest.raises(InputError, match="not found"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError):
        load_video(tmp_path / "corrupt.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_video(tmp_path / "empty")
    with pytest.raises(InputError, match="10 frames"):
        load_video(root / "clip.mp4", "5:40")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported"):
        load_video(tmp_path / "notes.txt")
