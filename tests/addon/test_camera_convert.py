"""The add-on's Blender <-> OpenCV camera conversion round-trips (numpy only, no bpy: the module
is plain functions over matrices and the attributes of Blender's camera and render settings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from afv.camera import intrinsics, look_at

PATH = Path(__file__).resolve().parents[2] / "blender_addon" / "camera_convert.py"


def _module():
    spec = importlib.util.spec_from_file_location("camera_convert_under_test", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cv_to_blender_and_back_is_identity():
    cc = _module()
    W, H = 640, 360
    K = intrinsics(W, H, 35.0)
    K[0, 2] += 12.0  # an off-centre principal point exercises the shifts
    K[1, 2] -= 7.0
    M = look_at(np.array([0.4, 1.2, 4.0]), np.array([0.1, 0.0, 0.2]))
    obj_world = np.eye(4)
    obj_world[:3, :3] = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]])  # +Y up mesh in a +Z up scene
    obj_world[:3, 3] = [0.3, -0.2, 0.5]
    data, cam_world = cc.blender_camera_from_cv(K, (W, H), M, obj_world)
    cam_data = SimpleNamespace(type="PERSP", name="Cam", sensor_height=24.0, **data)
    render = SimpleNamespace(resolution_x=W, resolution_y=H, resolution_percentage=100, pixel_aspect_x=1.0, pixel_aspect_y=1.0)
    d = cc.camera_dict(SimpleNamespace(data=cam_data, matrix_world=cam_world), SimpleNamespace(matrix_world=obj_world), render)
    assert d["image_size"] == [W, H]
    assert np.allclose(d["K"], K, atol=1e-9)
    assert np.allclose(d["mesh_to_camera"], M, atol=1e-9)
