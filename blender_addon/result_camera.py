"""The result's camera (given or estimated, possibly moving) as a Blender camera object.

The backend's camera is OpenCV (x right, y down, z forward), K in source-video pixels, and one
mesh_to_camera (4x4) per track. The conversion is camera_convert.blender_camera_from_cv (written
once), per frame, with the object's scale taken out of the camera's world matrix (a camera's scale
does not change its view). `apply_camera` is the thin bpy edge.
"""

from __future__ import annotations

import numpy as np

import bpy
from mathutils import Matrix

from .camera_convert import blender_camera_from_cv, rigid

CAMERA_NAME = "AFV Camera"
OWNER_PROP = "afv_result_camera"  # custom property marking the camera object we own


def camera_world_matrices(K: np.ndarray, image_size: tuple[int, int], object_world: np.ndarray,
                          mesh_to_camera: np.ndarray) -> np.ndarray:
    """mesh_to_camera (T, 4, 4) -> (T, 4, 4) Blender camera world matrices with the object's scale
    taken out (camera_convert.blender_camera_from_cv per frame, then rigid)."""
    return np.stack([rigid(blender_camera_from_cv(K, image_size, m, object_world)[1]) for m in mesh_to_camera])


def quaternions_continuous(R: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations -> (T, 4) wxyz quaternions with consecutive signs agreeing (no flips when interpolated)."""
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
    W, H = (int(x) for x in camera.image_size)
    lens, _ = blender_camera_from_cv(camera.K, (W, H), camera.mesh_to_camera[0], np.array(obj.matrix_world))
    worlds = camera_world_matrices(camera.K, (W, H), np.array(obj.matrix_world), camera.mesh_to_camera)
    cam = find_camera(scene)
    if cam is None:
        cam = bpy.data.objects.new(CAMERA_NAME, bpy.data.cameras.new(CAMERA_NAME))
        scene.collection.objects.link(cam)
        cam[OWNER_PROP] = True
    d = cam.data
    d.type = "PERSP"
    for k, v in lens.items():
        setattr(d, k, v)
    far = np.linalg.norm(worlds[:, :3, 3] - np.array(obj.matrix_world)[:3, 3], axis=1).max()
    d.clip_end = max(d.clip_end, float(4 * far))
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = W, H, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0  # the conversion assumes square pixels (fx == fy)
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
