"""Scene settings (saved with the .blend) and window-manager runtime state (never saved)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty


def engine_search(self, context, edit_text):
    from . import runtime

    return [e for e in runtime.known_engines() if edit_text.lower() in e.lower()]


def _video_chosen(settings, context) -> None:
    """A video was picked: start the local backend now (in the background), not at the first job."""
    from . import animate, preferences, runtime
    from .operators import user_dir

    if settings.video_path:
        runtime.start_backend_early(animate.config_from_prefs(preferences.get(context), user_dir("data")))


class AFV_SceneSettings(bpy.types.PropertyGroup):
    video_path: StringProperty(name="Video", subtype="FILE_PATH", update=_video_chosen,
                               description="A video file, or one image of an image sequence (its folder is used)")
    mask_mode: EnumProperty(name="Masks", default="AUTO", items=[
        ("AUTO", "Auto", "Alpha channel when the video has one, else none"),
        ("NONE", "None", "Track the whole frame"),
        ("ALPHA", "Alpha", "The video's alpha channel"),
        ("PATH", "Folder", "A folder of mask images, one per frame"),
    ])
    mask_path: StringProperty(name="Mask Folder", subtype="DIR_PATH")
    frame_start: IntProperty(name="Start", default=0, min=0, description="First video frame (0-based)")
    frame_end: IntProperty(name="End", default=0, min=0, description="Video frame to stop before; 0 = to the end")
    frame_step: IntProperty(name="Step", default=1, min=1, description="Use every n-th video frame")
    start_frame: IntProperty(name="Scene Start", default=1, description="Scene frame where the first video frame lands")
    speed: FloatProperty(name="Speed", default=1.0, min=0.01, max=100.0,
                         description="Playback speed factor (2 = twice as fast); 1 keeps the video's real-time duration")
    video_fps: FloatProperty(name="Video FPS", default=0.0, min=0.0,
                             description="Frame rate of the video; 0 = read it from the file (image sequences: 24)")
    engine: StringProperty(name="Engine", default="", search=engine_search,
                           description="Motion engine; empty = the backend's default")
    camera_mode: EnumProperty(name="Camera", default="SCENE", items=[
        ("SCENE", "Scene Camera", "Use the active camera, aligned so the mesh sits over the video"),
        ("ESTIMATE", "Estimate", "Let the engine estimate the camera from the video"),
    ])
    first_pose: BoolProperty(name="Pose to First Frame", default=False,
                             description="Retargeting: pose the mesh to the video's first frame, so the first key already "
                                         "differs from the rest pose (default: the first key is the rest pose)")
    device: EnumProperty(name="Device", default="AUTO", items=[
        ("AUTO", "Auto", "GPU when the backend has one"), ("CPU", "CPU", ""), ("CUDA", "CUDA", "")])
    max_size: IntProperty(name="Working Size", default=512, min=64, max=4096,
                          description="Long side, in pixels, the video is analysed at")
    store_as: EnumProperty(name="Store As", default="SHAPE_KEYS", items=[
        ("SHAPE_KEYS", "Shape Keys", "One shape key per frame, keyed on the timeline"),
        ("MESH_CACHE", "Mesh Cache", "A PC2 point cache file and a Mesh Cache modifier"),
    ])
    rig_keys: EnumProperty(name="Rig Motion", default="BOTH", items=[
        ("SHAPE_KEYS", "Shape Keys", "Shape keys hold the whole motion; the rig's own action is muted"),
        ("BONE_KEYS", "Bone Keys", "An action on the mesh's armature (when the engine returns bone rotations)"),
        ("BOTH", "Both", "Bone keys, plus shape keys for what the bones cannot do (exact)"),
    ], description="For a mesh with an Armature modifier: where the motion is written")
    export_path: StringProperty(name="Export To", subtype="FILE_PATH", default="//animated.glb")
    export_format: EnumProperty(name="Format", default="GLB", items=[
        ("GLB", "glTF (.glb)", "Morph targets with weight animation"),
        ("FBX", "FBX", "Shape keys with animation"),
        ("ABC", "Alembic", "Baked vertex positions per frame"),
        ("PC2", "PC2 Point Cache", "Baked vertex positions per frame, for a Mesh Cache modifier"),
    ])
    morph_normals: BoolProperty(name="Morph Normals", default=False, description="Also export per-target normals (glTF)")


class AFV_Runtime(bpy.types.PropertyGroup):
    running: BoolProperty(default=False)
    cancel_requested: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: StringProperty(default="")
    message: StringProperty(default="")
    warnings: StringProperty(default="")  # the last job's warnings and notes, one per line
    backend_status: StringProperty(default="not checked")


CLASSES = (AFV_SceneSettings, AFV_Runtime)


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.Scene.afv = bpy.props.PointerProperty(type=AFV_SceneSettings)
    bpy.types.WindowManager.afv = bpy.props.PointerProperty(type=AFV_Runtime)


def unregister():
    del bpy.types.WindowManager.afv
    del bpy.types.Scene.afv
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
