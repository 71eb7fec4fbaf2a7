"""Video time -> scene frames.

Track t sits at video time frame_indices[t] / video_fps seconds. It lands on scene frame
start_frame + (that time - time of the first track) * scene_fps / speed, so the motion keeps
its real-time duration when the video's and the scene's frame rates differ, and `speed`
(> 1 = faster) rescales it on purpose. Pure Python + numpy: no bpy.
"""

from __future__ import annotations

import numpy as np


def scene_frames(frame_indices: np.ndarray, video_fps: float, scene_fps: float, start_frame: float = 1.0,
                 speed: float = 1.0) -> np.ndarray:
    """frame_indices: (T,) int video frame numbers -> (T,) float64 scene frames (may be fractional)."""
    if not (video_fps > 0 and scene_fps > 0 and speed > 0):
        raise ValueError(f"fps and speed must be positive (video {video_fps}, scene {scene_fps}, speed {speed})")
    idx = np.asarray(frame_indices, dtype=np.float64)
    if idx.ndim != 1 or len(idx) == 0:
        raise ValueError("frame_indices must be a non-empty 1-D array")
    seconds = (idx - idx[0]) / video_fps
    return start_frame + seconds * scene_fps / speed


def scene_fps(render) -> float:
    """The scene's real frame rate from `scene.render` (fps / fps_base)."""
    return float(render.fps) / float(render.fps_base)
