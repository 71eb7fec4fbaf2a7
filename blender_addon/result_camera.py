"""The result's camera (given or estimated, possibly moving) as a Blender camera object.

The backend's camera is OpenCV (x right, y down, z forward), K in source-video pixels, and one
mesh_to_camera (4x4) per track. In Blender the camera object's world matrix is
    object world @ inverse(mesh_to_camera) @ CV_FROM_BLENDER_CAM
with the object's scale taken out (a camera's scale does not change its view). The math is in
plain numpy functions; `apply_camera` is the thin bpy edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import bpy

from .camera_convert import CV_FROM_BLENDER_CAM, rigid

CAMERA_NAME = "AFV Camera"
OWNER_PROP = "afv_result_camera"  # custom property marking the camera object we own
SENSOR_WIDTH = 36.0


@dataclass(frozen=True)
class LensSettings:
    lens: float  # mm, with sensor_fit HORIZONTAL and SENSOR_WIDTH
    shift_x: float
    shift_y: float
    resolution: tuple[int, int]  # (W, H) render pixels
    pixel_aspect_y: float  # fx / fy (1 for square pixels)


def lens_settings(K: np.ndarray, image_size: tuple[int, int]) -> LensSettings:
    """Blender lens, shift and resolution reproducing K (3, 3) for an image of (W, H) pixels.

    The inverse of camera_convert.intrinsics for sensor_fit HORIZONTAL.
    """
    W, H = int(image_size[0]), int(image_size[1])
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    aspect = fx / fy  # pixel_aspect_y / pixel_aspect_x in intrinsics()
    return LensSettings(lens=fx / W * SENSOR_WIDTH, shift_x=(W / 2 - cx) / W, shift_y=(cy - H / 2) * aspect / W,
                        resolution=(W, H), pixel_aspect_y=aspect)


def camera_world_matrices(object_world: np.ndarray, mesh_to_camera: np.ndarray) -> np.ndarray:
    """object_world (4, 4), mesh_to_camera (T, 4, 4) -> (T, 4, 4) rigid Blender camera world matrices."""
    world = np.asarray(object_world, np.float64)[None] @ np.linalg.inv(np.asarray(mesh_to_camera, np.float64)) @ CV_FROM_BLENDER_CAM
    return np.stack([rigid(w) for w in world])


def quaternions_continuous(R: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations -> (T, 4) wxyz quaternions with consecutive signs agreeing (no flips when interpolated)."""
    from mathutils import Matrix

    q = np.array([list(Matrix(r.tolist()).to_quaternion()) for r in R], np.float64)
    for t in range(1, len(q)):
        if np.dot(q[t], q[t - 1]) < 0:
            q[t] = -q[t]
    return q


def find_camera(scene):
    """Our result camera in `scene`, or None."""
    for o in scene.objects:
        if o.type == "CAMERA" and o.get(OWNER_PROP):
            return o
    return None


def apply_camera(scene, obj, camera, frames: np.ndarray, clip=None, clip_start: int | None = None):
    """Create or update the result camera for `obj`; keyed per scene frame when it moves.

    camera: job.ResultCamera; frames: (T,) scene frames of the tracks; clip: a MovieClip shown
    as the camera's background (clip_start: its scene start frame). Sets the render size to
    the video's and makes it the scene camera. Returns the camera object.
    """
    ls = lens_settings(camera.K, camera.image_size)
    worlds = camera_world_matrices(np.array(obj.matrix_world), camera.mesh_to_camera)
    cam = find_camera(scene)
    if cam is None:
        cam = bpy.data.objects.new(CAMERA_NAME, bpy.data.cameras.new(CAMERA_NAME))
        scene.collection.objects.link(cam)
        cam[OWNER_PROP] = True
    d = cam.data
    d.type, d.sensor_fit, d.sensor_width = "PERSP", "HORIZONTAL", SENSOR_WIDTH
    d.lens, d.shift_x, d.shift_y = ls.lens, ls.shift_x, ls.shift_y
    near_far = np.linalg.norm(worlds[:, :3, 3] - np.array(obj.matrix_world)[:3, 3], axis=1).max()
    d.clip_end = max(d.clip_end, float(4 * near_far))
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = ls.resolution[0], ls.resolution[1], 100
    r.pixel_aspect_x, r.pixel_aspect_y = 1.0, ls.pixel_aspect_y
    cam.rotation_mode = "QUATERNION"
    if cam.animation_data is not None:
        cam.animation_data_clear()  # a second run replaces the previous path
    q = quaternions_continuous(worlds[:, :3, :3])
    if camera.moves:
        for t, f in enumerate(np.asarray(frames, np.float64)):
            cam.location, cam.rotation_quaternion = worlds[t, :3, 3].tolist(), q[t].tolist()
            cam.keyframe_insert("location", frame=float(f))
            cam.keyframe_insert("rotation_quaternion", frame=float(f))
    cam.location, cam.rotation_quaternion = worlds[0, :3, 3].tolist(), q[0].tolist()
    cam.scale = (1.0, 1.0, 1.0)
    if clip is not None:
        set_background(d, clip)
        if clip_start is not None:
            clip.frame_start = int(clip_start)
    scene.camera = cam
    return cam


def set_background(cam_data, clip) -> None:
    """Show `clip` behind the camera (reusing its background slot when it has one)."""
    bg = next((b for b in cam_data.background_images if b.clip == clip), None) or cam_data.background_images.new()
    bg.source, bg.clip, bg.alpha, bg.show_background_image = "MOVIE_CLIP", clip, 0.6, True
    cam_data.show_background_images = True
