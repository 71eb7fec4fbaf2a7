"""Add-on core in real Blender (bpy module): installed from the built zip, no backend needed.

Ground truth by construction: known displacement tracks, Blender's own camera projection,
and re-imported exports.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpy  # noqa: E402  (the test extra installs it; a missing bpy must fail, not skip)

from addon_support import install_addon, mesh_object, module, positions_at, reset_scene  # noqa: E402
from afv_dev.synthetic import waving_sheet  # noqa: E402


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    return install_addon(tmp_path_factory.mktemp("dist"))


@pytest.fixture()
def sheet(addon):
    reset_scene()
    seq = waving_sheet(n_frames=6)
    obj = mesh_object("Sheet", seq.mesh.vertices, seq.mesh.faces)
    return obj, seq


def test_installed_from_zip_and_registered(addon):
    assert addon.__name__ == "bl_ext.user_default.animate_from_video"
    assert hasattr(bpy.types.Scene, "afv") and hasattr(bpy.ops.afv, "animate")
    assert "torch" not in open(addon.__file__.replace("__init__.py", "job.py")).read()


def test_time_mapping_keeps_duration_across_fps(addon):
    timing = module("timing")
    # 30 fps video, every 2nd frame from 3 to 63 -> 2 s; a 24 fps scene must span 48 frames.
    f = timing.scene_frames(np.arange(3, 64, 2), 30.0, 24.0, start_frame=10)
    assert f[0] == 10 and f[-1] == pytest.approx(10 + 48.0)
    assert np.allclose(np.diff(f), 2 * 24 / 30)
    assert timing.scene_frames(np.arange(0, 31), 30.0, 24.0, 1, speed=2.0)[-1] == pytest.approx(13.0)
    with pytest.raises(ValueError):
        timing.scene_frames(np.arange(3), 0.0, 24.0)


def test_keys_reproduce_tracks_and_blend_linearly(sheet):
    obj, seq = sheet
    sk = module("shape_keys")
    disp = seq.displacements
    frames = module("timing").scene_frames(np.arange(len(disp)) * 5, 30.0, 24.0, start_frame=1)  # 4-frame spacing
    res = sk.write_tracks(obj, disp, frames)
    assert len(res.key_names) == len(disp)
    rest = seq.mesh.vertices
    for k in range(len(disp)):
        assert np.abs(positions_at(obj, frames[k]) - (rest + disp[k])).max() < 1e-5
    mid = 0.25 * frames[2] + 0.75 * frames[3]  # a fractional frame between keys 2 and 3
    want = rest + 0.25 * disp[2] + 0.75 * disp[3]
    assert np.abs(positions_at(obj, mid) - want).max() < 1e-5
    assert np.abs(positions_at(obj, frames[-1] + 7) - (rest + disp[-1])).max() < 1e-5  # holds after the end


def test_second_run_replaces_first_and_keeps_user_keys(sheet):
    obj, seq = sheet
    sk = module("shape_keys")
    basis = obj.shape_key_add(name="Basis", from_mix=False)
    user = obj.shape_key_add(name="Smile", from_mix=False)  # a user's own key stays
    sk.write_tracks(obj, seq.displacements, np.arange(6) * 2.0 + 1)
    sk.write_tracks(obj, -seq.displacements[:3], np.array([1.0, 2.0, 3.0]))
    names = [kb.name for kb in obj.data.shape_keys.key_blocks]
    assert names == ["Basis", "Smile", "AFV_00000", "AFV_00001", "AFV_00002"]
    assert obj.data.shape_keys.reference_key.name == basis.name and user.name == "Smile"
    fcurves = module("shape_keys")._channel_fcurves(obj.data.shape_keys)
    assert sorted(fc.data_path for fc in fcurves) == [f'key_blocks["AFV_0000{i}"].value' for i in range(3)]
    assert np.abs(positions_at(obj, 3.0) - (seq.mesh.vertices - seq.displacements[2])).max() < 1e-5


def test_mesh_extraction_keeps_order_and_warns_on_topology_modifiers(sheet):
    obj, seq = sheet
    md = module("mesh_io").extract_mesh(obj, bpy.context.evaluated_depsgraph_get())
    assert np.array_equal(md.vertices, seq.mesh.vertices) and md.warnings == []
    assert md.faces.shape == seq.mesh.faces.shape and md.faces.max() == len(seq.mesh.vertices) - 1
    obj.modifiers.new("Sub", "SUBSURF")
    md = module("mesh_io").extract_mesh(obj, bpy.context.evaluated_depsgraph_get())
    assert len(md.warnings) == 1 and "vertex count" in md.warnings[0]


def test_camera_conversion_matches_blender_projection(sheet):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    obj, seq = sheet
    cc = module("camera_convert")
    obj.matrix_world = Matrix.LocRotScale(Vector((0.3, -0.2, 0.1)), Matrix.Rotation(0.4, 3, "Z").to_quaternion(), Vector((1.5, 1.5, 1.5)))
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location = (0.5, -4.0, 1.5)
    cam.rotation_euler = (1.25, 0.05, 0.1)
    cam.data.lens, cam.data.shift_x, cam.data.shift_y = 42.0, 0.07, -0.04
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 200, 100
    bpy.context.view_layer.update()
    for fit in ("AUTO", "VERTICAL"):
        cam.data.sensor_fit = fit
        d = cc.camera_dict(cam, obj, scene.render, (640, 400))  # the video is twice the render size
        K, M = np.array(d["K"]), np.array(d["mesh_to_camera"])
        v = seq.mesh.vertices[::37].astype(np.float64)
        pc = v @ M[:3, :3].T + M[:3, 3]
        uv = (pc / pc[:, 2:]) @ K.T
        ref = np.array([world_to_camera_view(scene, cam, obj.matrix_world @ Vector(p))[:] for p in v])
        ref_px = np.stack([ref[:, 0] * 640, (1 - ref[:, 1]) * 400], 1)
        assert np.abs(uv[:, :2] - ref_px).max() < 1e-3 and np.allclose(pc[:, 2], ref[:, 2], atol=1e-4)
    with pytest.raises(ValueError, match="aspect"):
        cc.camera_dict(cam, obj, scene.render, (400, 400))


def test_mesh_cache_matches_shape_keys(sheet, tmp_path):
    obj, seq = sheet
    sk, bake = module("shape_keys"), module("bake")
    frames = np.array([1.0, 3.5, 6.0, 8.5, 11.0, 13.5])  # fractional: the cache resamples whole frames
    sk.write_tracks(obj, seq.displacements, frames)
    want = {f: positions_at(obj, f) for f in (1, 5, 9, 13)}
    mod = bake.bake_mesh_cache(obj, tmp_path / "sheet.pc2")
    assert obj.data.shape_keys is None or not any(kb.name.startswith("AFV_") for kb in obj.data.shape_keys.key_blocks)
    assert mod.frame_start == 1.0 and (tmp_path / "sheet.pc2").stat().st_size == 32 + 13 * len(seq.mesh.vertices) * 12
    for f, p in want.items():
        assert np.abs(positions_at(obj, f) - p).max() < 1e-5


def _imported_mesh(before):
    new = [o for o in bpy.data.objects if o.name not in before and o.type == "MESH"]
    assert len(new) == 1, [o.name for o in new]
    return new[0]


@pytest.mark.parametrize("fmt", ["GLB", "FBX", "ABC"])
def test_export_reimports_with_animation(sheet, tmp_path, fmt):
    obj, seq = sheet
    bake = module("bake")
    frames = np.arange(6) * 2.0 + 1  # keys at 1, 3, ..., 11
    module("shape_keys").write_tracks(obj, seq.displacements, frames)
    want = positions_at(obj, 5.0)  # key 2 at frame 5
    path = tmp_path / f"sheet.{fmt.lower()}"
    {"GLB": bake.export_glb, "FBX": bake.export_fbx, "ABC": bake.export_alembic}[fmt](obj, path)
    before = {o.name for o in bpy.data.objects}
    if fmt == "GLB":
        bpy.ops.import_scene.gltf(filepath=str(path))
    elif fmt == "FBX":
        bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0.0)  # the importer shifts by 1 frame by default
    else:
        bpy.ops.wm.alembic_import(filepath=str(path))
    imp = _imported_mesh(before)
    if fmt != "ABC":
        assert len(imp.data.shape_keys.key_blocks) == 1 + len(seq.displacements)
    got = positions_at(imp, 5.0)
    # importers may apply their own axis conversion to the object: compare in world space
    Mi, Mo = np.array(imp.matrix_world), np.array(obj.matrix_world)
    gw = got @ Mi[:3, :3].T + Mi[:3, 3]
    ww = want @ Mo[:3, :3].T + Mo[:3, 3]
    if fmt == "GLB":  # glTF may reorder/split vertices: compare as point sets
        from scipy.spatial import cKDTree

        assert cKDTree(ww).query(gw)[0].max() < 1e-4 and cKDTree(gw).query(ww)[0].max() < 1e-4
    else:
        assert np.abs(gw - ww).max() < 1e-4
    rest = positions_at(imp, 1.0) @ Mi[:3, :3].T + Mi[:3, 3]
    assert np.abs(rest - gw).max() > 0.01  # the motion is really there


def test_up_axis_is_world_z_in_object_coordinates(sheet):
    from mathutils import Euler, Matrix, Vector

    from afv.mesh import parse_up_axis

    obj, _ = sheet
    animate = module("animate")
    assert animate.up_axis_text(obj.matrix_world) == "+z"
    obj.rotation_euler = (np.pi / 2, 0.0, 0.0)  # a Y-up asset stood up in Blender: its +y is the world's up
    bpy.context.view_layer.update()
    assert animate.up_axis_text(obj.matrix_world) == "+y"
    obj.matrix_world = Matrix.LocRotScale(Vector((1, 2, 3)), Euler((0.3, -0.5, 1.1)).to_quaternion(), Vector((2, 1, 0.5)))
    bpy.context.view_layer.update()
    up = parse_up_axis(animate.up_axis_text(obj.matrix_world))  # what the backend reads
    world = np.array(obj.matrix_world)[:3, :3] @ up
    assert np.allclose(world / np.linalg.norm(world), [0, 0, 1], atol=1e-5)
