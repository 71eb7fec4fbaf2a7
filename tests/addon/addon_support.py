"""Helpers for the add-on tests: build the extension zip, install it into the (isolated) bpy, reset scenes."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = "bl_ext.user_default.animate_from_video"


def install_addon(tmp_dir: Path):
    """Build the zip with build_addon.py, install and enable it; returns the add-on package module."""
    import bpy

    if PKG in {a.module for a in bpy.context.preferences.addons}:
        return importlib.import_module(PKG)
    out = subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", str(tmp_dir)],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    res = bpy.ops.extensions.package_install_files(filepath=out, repo="user_default", enable_on_install=True)
    assert res == {"FINISHED"}, res
    return importlib.import_module(PKG)


def module(name: str):
    return importlib.import_module(f"{PKG}.{name}")


def reset_scene():
    """Factory-empty scene with the add-on enabled again (factory settings disable it)."""
    import addon_utils
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable(PKG, default_set=True)


def mesh_object(name: str, vertices, faces):
    import bpy

    me = bpy.data.meshes.new(name)
    me.from_pydata([tuple(map(float, v)) for v in vertices], [], [tuple(map(int, f)) for f in faces])
    me.update()
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def positions_at(obj, frame: float):
    """(N, 3) evaluated object-space vertex positions at a (fractional) scene frame."""
    import bpy

    scene = bpy.context.scene
    scene.frame_set(int(frame // 1), subframe=float(frame % 1))
    return module("shape_keys").evaluated_positions(obj, bpy.context.evaluated_depsgraph_get())
