"""The "Animate" tab of the 3D View sidebar."""

from __future__ import annotations

import textwrap

import bpy

from . import rig_io
from .operators import _mesh_problem


WRAP = 56  # characters per line of a warning in the sidebar


class AFV_PT_panel(bpy.types.Panel):
    bl_label = "Animate from Video"
    bl_idname = "AFV_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Animate"

    def draw(self, context):
        layout = self.layout
        s, wm = context.scene.afv, context.window_manager.afv
        col = layout.column()
        col.prop(s, "video_path")
        col.prop(s, "mask_mode")
        if s.mask_mode == "PATH":
            col.prop(s, "mask_path")
        box = layout.box()
        box.label(text="Video Frames")
        row = box.row(align=True)
        row.prop(s, "frame_start")
        row.prop(s, "frame_end")
        row.prop(s, "frame_step")
        box.prop(s, "video_fps")
        box = layout.box()
        box.label(text="Timing")
        box.prop(s, "start_frame")
        box.prop(s, "speed")
        layout.prop(s, "engine")
        layout.prop(s, "first_pose")
        layout.prop(s, "device")
        layout.prop(s, "camera_mode", expand=True)
        # in Estimate mode the result's camera becomes the scene camera (with the video behind it)
        layout.operator("afv.video_background", icon="IMAGE_BACKGROUND")
        layout.prop(s, "store_as", expand=True)
        obj = context.active_object
        if obj is not None and rig_io.armature_modifier(obj) is not None and s.store_as == "SHAPE_KEYS":
            layout.prop(s, "rig_keys", expand=True)
        if wm.running:
            row = layout.row(align=True)
            row.progress(factor=wm.progress, type="BAR", text=f"{wm.stage} {wm.progress * 100:.0f}%")
            row.operator("afv.cancel", text="", icon="CANCEL")
        else:
            col = layout.column()
            col.scale_y = 1.5
            col.operator("afv.animate", icon="PLAY")
            problem = _mesh_problem(context)
            if problem:
                layout.label(text=problem, icon="INFO")
        if wm.message:
            layout.label(text=wm.message)
        if wm.warnings and not wm.running:
            box = layout.box()
            for line in wm.warnings.split("\n"):  # labels do not wrap: break long lines ourselves
                for i, part in enumerate(textwrap.wrap(line, WRAP) or [""]):
                    box.label(text=part, icon="ERROR" if i == 0 else "BLANK1")
        box = layout.box()
        box.label(text="Bake and Export")
        box.prop(s, "export_format")
        box.prop(s, "export_path")
        if s.export_format == "GLB":
            box.prop(s, "morph_normals")
        box.operator("afv.bake_export", icon="EXPORT")
        box.operator("afv.bake_mesh_cache", icon="FILE_CACHE")


def register():
    bpy.utils.register_class(AFV_PT_panel)


def unregister():
    bpy.utils.unregister_class(AFV_PT_panel)
