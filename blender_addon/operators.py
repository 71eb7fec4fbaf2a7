"""Operators: the modal Animate-from-Video wrapper, cancel, backend check, camera background, bake/export."""

from __future__ import annotations

import time
from pathlib import Path

import bpy
from bpy_extras.io_utils import ImportHelper

from . import animate, bake, preferences, result_camera, runtime, tracks_import
from .backend_client import BackendError
from .job import AnimateJob


def user_dir(sub: str) -> str:
    """A folder in the add-on's user directory (never the add-on's own folder)."""
    return bpy.utils.extension_path_user(__package__, path=sub, create=True)


def _redraw(context):
    for win in context.window_manager.windows:
        for area in win.screen.areas:
            if area.type in {"VIEW_3D", "PREFERENCES"}:
                area.tag_redraw()


def _mesh_problem(context) -> str:
    obj = context.active_object
    if obj is None or obj.type != "MESH":
        return "Select a mesh object to animate"
    if obj.mode != "OBJECT":
        return "Switch to Object Mode"
    s = context.scene.afv
    if not s.video_path:
        return "Choose a video or image sequence"
    if s.camera_mode == "SCENE" and context.scene.camera is None:
        return "Add an active camera, or set Camera to Estimate"
    return ""


class AFV_OT_animate(bpy.types.Operator):
    """Compute the motion of the active mesh from the video and write it as shape keys"""

    bl_idname = "afv.animate"
    bl_label = "Animate from Video"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if context.window_manager.afv.running:
            cls.poll_message_set("A job is already running")
            return False
        problem = _mesh_problem(context)
        if problem:
            cls.poll_message_set(problem)
        return not problem

    def invoke(self, context, event):
        wm = context.window_manager
        scene, obj = context.scene, context.active_object
        try:
            req, warnings = animate.build_request(scene, obj, scene.afv, context.evaluated_depsgraph_get())
            cfg = animate.config_from_prefs(preferences.get(context), user_dir("data"))
        except (ValueError, BackendError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for w in warnings:
            self.report({"WARNING"}, w)
        self._warnings = list(warnings)
        self._job = AnimateJob(runtime.STATE.session, cfg, req, user_dir("results")).start()
        self._obj_name = obj.name
        wm.afv.running, wm.afv.cancel_requested, wm.afv.progress = True, False, 0.0
        wm.afv.stage, wm.afv.message, wm.afv.warnings = "starting backend", "", "\n".join(warnings)
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        return self.invoke(context, None)

    def modal(self, context, event):
        wm = context.window_manager
        if event.type == "ESC" and event.value == "PRESS":
            wm.afv.cancel_requested = True
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if wm.afv.cancel_requested:
            self._job.cancel()
        st = self._job.snapshot()
        wm.afv.progress, wm.afv.stage = st.progress, st.stage + (f": {st.detail}" if st.detail else "")
        _redraw(context)
        if not st.finished:
            return {"PASS_THROUGH"}
        wm.event_timer_remove(self._timer)
        wm.afv.running = False
        if st.state != "done":
            msg = st.message + (f" ({st.hint})" if st.hint else "")
            wm.afv.message = msg
            self.report({"WARNING" if st.state == "cancelled" else "ERROR"}, msg)
            return {"CANCELLED"}
        obj = bpy.data.objects.get(self._obj_name)
        if obj is None:
            self.report({"ERROR"}, f"object '{self._obj_name}' was removed while the job ran")
            return {"CANCELLED"}
        t0 = time.perf_counter()
        try:
            summary = animate.apply_result(context.scene, obj, self._job.result, context.scene.afv, user_dir("cache"))
        except ValueError as exc:
            wm.afv.message = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm.afv.message = result_message(summary, time.perf_counter() - t0)
        report_summary(self, wm, summary, [*self._warnings, *self._job.notes])
        return {"FINISHED"}


def result_message(summary: dict, seconds: float) -> str:
    return (f"{summary['keys']} shape keys ({summary['mode'].replace('_', ' ').lower()}), frames "
            f"{summary['first_frame']:.1f}-{summary['last_frame']:.1f} ({summary['engine'] or 'engine ?'}, "
            f"written in {seconds:.2f} s)")


def report_summary(op, wm, summary: dict, earlier: list[str] = ()) -> None:
    """The result line, then every warning and note: in the operator report and in the panel."""
    op.report({"INFO"}, wm.afv.message)
    for w in summary["warnings"]:
        op.report({"WARNING"}, w)
    for n in summary["notes"]:
        op.report({"INFO"}, n)
    wm.afv.warnings = "\n".join([*earlier, *summary["warnings"], *summary["notes"]])


class AFV_OT_cancel(bpy.types.Operator):
    """Cancel the running job; the object is left untouched"""

    bl_idname = "afv.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        context.window_manager.afv.cancel_requested = True
        return {"FINISHED"}


class AFV_OT_check_backend(bpy.types.Operator):
    """Start or reach the backend and show its version, device and engines"""

    bl_idname = "afv.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        wm = context.window_manager
        try:
            cfg = animate.config_from_prefs(preferences.get(context), user_dir("data"))
            client = runtime.STATE.session.ensure(cfg)
            runtime.STATE.info = client.info()
        except BackendError as exc:
            msg = getattr(exc, "message", str(exc))
            hint = getattr(exc, "hint", "")
            wm.afv.backend_status = f"not available: {msg}" + (f"\nfix: {hint}" if hint else "")
            self.report({"ERROR"}, wm.afv.backend_status)
            return {"CANCELLED"}
        wm.afv.backend_status = runtime.status_line(runtime.STATE.info)
        self.report({"INFO"}, wm.afv.backend_status)
        return {"FINISHED"}


class AFV_OT_video_background(bpy.types.Operator):
    """Show the video behind the active camera and match the render size to it, for aligning the camera"""

    bl_idname = "afv.video_background"
    bl_label = "Use Video as Camera Background"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if context.scene.camera is None:
            cls.poll_message_set("The scene has no active camera (in Estimate mode, a run creates one)")
            return False
        if not context.scene.afv.video_path:
            cls.poll_message_set("Choose a video first")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        try:  # refuses what is not a readable video or image before anything changes
            w, h = animate.video_size(scene.afv.video_path)
            clip = animate.load_clip(scene.afv.video_path)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        clip.frame_start = scene.afv.start_frame - scene.afv.frame_start
        result_camera.set_background(scene.camera.data, clip)
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
        self.report({"INFO"}, f"video {w}x{h} set as background of '{scene.camera.name}'")
        return {"FINISHED"}


def _mesh_selected(cls, context, message: str) -> bool:
    """poll() of operators that act on the active mesh: False, with `message` shown, otherwise."""
    obj = context.active_object
    if obj is None or obj.type != "MESH":
        cls.poll_message_set(message)
        return False
    return True


class AFV_OT_bake_export(bpy.types.Operator):
    """Export the animated mesh (glTF morph targets, FBX shape keys, or Alembic)"""

    bl_idname = "afv.bake_export"
    bl_label = "Export Animation"

    @classmethod
    def poll(cls, context):
        return _mesh_selected(cls, context, "Select the animated mesh")

    def execute(self, context):
        s, obj = context.scene.afv, context.active_object
        ext = {"GLB": ".glb", "FBX": ".fbx", "ABC": ".abc", "PC2": ".pc2"}[s.export_format]
        path = Path(bpy.path.abspath(s.export_path or "//animated")).with_suffix(ext)
        try:
            if s.export_format == "GLB":
                bake.export_glb(obj, path, s.morph_normals)
            elif s.export_format == "FBX":
                bake.export_fbx(obj, path)
            elif s.export_format == "PC2":
                bake.export_pc2(obj, path)
            else:
                bake.export_alembic(obj, path)
        except (ValueError, RuntimeError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"exported {path}")
        return {"FINISHED"}


class AFV_OT_bake_mesh_cache(bpy.types.Operator):
    """Replace the shape keys by a PC2 point cache and a Mesh Cache modifier"""

    bl_idname = "afv.bake_mesh_cache"
    bl_label = "Bake to Mesh Cache"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = context.active_object
        base = Path(bpy.path.abspath("//")) if bpy.data.filepath else Path(user_dir("cache"))
        try:
            bake.bake_mesh_cache(obj, base / f"{bpy.path.clean_name(obj.name)}_afv.pc2")
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class AFV_OT_import_tracks(bpy.types.Operator, ImportHelper):
    """Apply a tracks file from 'afv animate' to the selected mesh (keys, camera, bone keys)"""

    bl_idname = "afv.import_tracks"
    bl_label = "Import Animate from Video Tracks"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: bpy.props.StringProperty(default="*.npz", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return _mesh_selected(cls, context, "Select the mesh the tracks were computed for")

    def execute(self, context):
        wm = context.window_manager
        t0 = time.perf_counter()
        try:
            summary = tracks_import.import_tracks(context.scene, context.active_object, self.filepath,
                                                  context.scene.afv, user_dir("cache"))
        except ValueError as exc:
            wm.afv.message = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm.afv.message = result_message(summary, time.perf_counter() - t0)
        report_summary(self, wm, summary)
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(AFV_OT_import_tracks.bl_idname, text="Animate from Video tracks (.npz)")


CLASSES = (AFV_OT_animate, AFV_OT_import_tracks, AFV_OT_cancel, AFV_OT_check_backend, AFV_OT_video_background, AFV_OT_bake_export,
           AFV_OT_bake_mesh_cache)


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister():
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
