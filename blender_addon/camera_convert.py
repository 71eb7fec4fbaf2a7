"""Blender camera <-> backend camera (OpenCV convention: x right, y down, z forward; pixels).

mesh_to_camera = CV_FROM_BLENDER_CAM @ inverse(camera world matrix) @ object world matrix,
so the backend works in the mesh's own (object) coordinates. Plain functions; the bpy objects
are only read. The inverse (`blender_camera_from_cv`) is here too, so the conversion is written
once: the dev tooling (afv_dev.blender_demo) loads this file by path to set up Blender cameras.
"""

from __future__ import annotations

import numpy as np

# Blender cameras look down -Z with +Y up; OpenCV looks down +Z with +Y down.
CV_FROM_BLENDER_CAM = np.diag([1.0, -1.0, -1.0, 1.0])


def intrinsics(cam_data, render, image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """K (3, 3) in pixels and (W, H) for a perspective camera.

    Uses lens, sensor size and fit, shift, render resolution (with percentage) and pixel aspect.
    image_size: the video's (W, H); K is rescaled to it (the video is shown fitted to the camera
    frame, so its aspect must match the render's; raises ValueError otherwise).
    """
    if cam_data.type != "PERSP":
        raise ValueError(f"camera '{cam_data.name}' is {cam_data.type.lower()}; only perspective cameras are supported")
    scale = render.resolution_percentage / 100.0
    W = render.resolution_x * scale
    H = render.resolution_y * scale
    pax, pay = float(render.pixel_aspect_x), float(render.pixel_aspect_y)
    fit = cam_data.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if W * pax >= H * pay else "VERTICAL"
        sensor = cam_data.sensor_width
    else:
        sensor = cam_data.sensor_width if fit == "HORIZONTAL" else cam_data.sensor_height
    aspect = pay / pax
    view_px = W if fit == "HORIZONTAL" else aspect * H
    f_px = cam_data.lens / sensor * view_px
    fx, fy = f_px, f_px / aspect
    cx = W / 2 - cam_data.shift_x * view_px
    cy = H / 2 + cam_data.shift_y * view_px / aspect
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    if image_size is None:
        return K, (int(round(W)), int(round(H)))
    w, h = int(image_size[0]), int(image_size[1])
    if abs((w / h) / (W * pax / (H * pay)) - 1.0) > 0.01:
        raise ValueError(
            f"the video is {w}x{h} but the render resolution is {int(W)}x{int(H)}: aspect ratios differ; "
            "press 'Use Video as Camera Background' to match the render resolution to the video"
        )
    S = np.diag([w / W, h / H, 1.0])
    return S @ K, (w, h)


def rigid(matrix) -> np.ndarray:
    """(4, 4) float64 of a Blender matrix with scale removed (a camera's scale does not change its view)."""
    M = np.array(matrix, dtype=np.float64)
    R = M[:3, :3]
    M[:3, :3] = R / np.linalg.norm(R, axis=0, keepdims=True)
    return M


def mesh_to_camera(cam_obj, obj) -> np.ndarray:
    """(4, 4) float64: object coordinates -> OpenCV camera coordinates."""
    cam_world = rigid(cam_obj.matrix_world)
    return CV_FROM_BLENDER_CAM @ np.linalg.inv(cam_world) @ np.array(obj.matrix_world, dtype=np.float64)


def camera_dict(cam_obj, obj, render, image_size: tuple[int, int] | None = None) -> dict:
    """The backend camera JSON (docs/contracts.md) for a static Blender camera."""
    K, size = intrinsics(cam_obj.data, render, image_size)
    return {"image_size": list(size), "K": K.tolist(), "mesh_to_camera": mesh_to_camera(cam_obj, obj).tolist()}


def blender_camera_from_cv(K: np.ndarray, size: tuple[int, int], mesh_to_camera: np.ndarray, object_world: np.ndarray,
                           sensor_width: float = 36.0) -> tuple[dict, np.ndarray]:
    """The inverse of camera_dict: Blender camera data settings and the camera's world matrix
    reproducing an OpenCV camera (K (3, 3) in pixels without skew, fx == fy; size (W, H);
    mesh_to_camera (4, 4)) for an object whose world matrix is object_world (4, 4).

    Returns ({sensor_fit, sensor_width, lens, shift_x, shift_y}, camera world (4, 4)); the render
    resolution must be set to size at 100 %.
    """
    W, H = size
    data = {
        "sensor_fit": "HORIZONTAL",
        "sensor_width": float(sensor_width),
        "lens": float(K[0, 0]) / W * sensor_width,
        "shift_x": (W / 2 - float(K[0, 2])) / W,
        "shift_y": (float(K[1, 2]) - H / 2) / W,
    }
    world = np.asarray(object_world, np.float64) @ np.linalg.inv(mesh_to_camera) @ CV_FROM_BLENDER_CAM
    return data, world
