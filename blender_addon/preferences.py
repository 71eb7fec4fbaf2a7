"""Add-on preferences: how to reach the backend."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty


class AFV_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_mode: EnumProperty(name="Backend", default="LAUNCH", items=[
        ("LAUNCH", "Launch Local Backend", "Start the backend with the Python below (stopped when Blender quits)"),
        ("CONNECT", "Connect to URL", "Use a backend already running (afv serve) at a URL with its token"),
    ])
    python_path: StringProperty(name="Backend Python", subtype="FILE_PATH",
                                description="The interpreter of the virtual environment the README installs (.venv/bin/python)")
    data_dir: StringProperty(name="Data Folder", subtype="DIR_PATH",
                             description="Where the backend keeps jobs and results; empty = the add-on's user folder")
    url: StringProperty(name="URL", default="http://127.0.0.1:8765")
    token: StringProperty(name="Token", subtype="PASSWORD")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_mode", expand=True)
        if self.backend_mode == "LAUNCH":
            layout.prop(self, "python_path")
            layout.prop(self, "data_dir")
        else:
            layout.prop(self, "url")
            layout.prop(self, "token")
        row = layout.row()
        row.operator("afv.check_backend", icon="FILE_REFRESH")
        wm = getattr(context.window_manager, "afv", None)
        if wm is not None:
            for line in wm.backend_status.split("\n"):
                layout.label(text=line)


def get(context=None) -> AFV_Preferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def register():
    bpy.utils.register_class(AFV_Preferences)


def unregister():
    bpy.utils.unregister_class(AFV_Preferences)
