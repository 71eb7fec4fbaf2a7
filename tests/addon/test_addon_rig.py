"""Rigged meshes in real Blender: the rig is read, bone keys reproduce known skinning, the rig's own
action is taken out of the way, and the four export formats agree.

Ground truth by construction: known bone rotations -> linear blend skinning computed here with
numpy from docs/contracts.md ("Rig") -> tracks -> the add-on writes keys -> Blender's Armature
modifier evaluates the mesh -> compare.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpy  # noqa: E402  (the test extra installs it; a missing bpy must fail, not skip)

from addon_support import install_addon, module, positions_at, reset_scene  # noqa: E402


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    return install_addon(tmp_path_factory.mktemp("dist"))


# ---- the contract's FK + LBS, written here independently of the add-on -------------------------
def _rot(q):
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def contract_lbs(v, rot, u, parents, heads, joints, weights):
    """v (N,3), rot (B,4) wxyz, u (3,) -> (N,3): Q_b = Q_p R_b, P_b = P_p + Q_p (h_b - h_p), G_b(x) = Q_b (x - h_b) + P_b."""
    B = len(parents)
    Q, P = [None] * B, [None] * B
    for b in range(B):
        p = parents[b]
        R = _rot(rot[b])
        Q[b] = R if p < 0 else Q[p] @ R
        P[b] = heads[b] + u if p < 0 else P[p] + Q[p] @ (heads[b] - heads[p])
    out = np.zeros_like(v, dtype=np.float64)
    for k in range(joints.shape[1]):
        G = np.stack([(Q[j] @ (x - heads[j])) + P[j] for x, j in zip(v, joints[:, k])])
        out += weights[:, k:k + 1] * G
    return out


# ---- a rigged tube: 4 bones (a chain of 3 + a second root), transformed armature and mesh ---------
BONES = [  # name, head, tail, parent (listed child-first on purpose: the add-on must sort parent-first)
    ("tip", (0.3, 0.2, 2.0), (0.2, 0.5, 3.0), "mid"),
    ("mid", (0.0, 0.0, 1.0), (0.3, 0.2, 2.0), "root"),
    ("root", (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), None),
    ("fin", (0.5, 0.0, 0.5), (1.0, 0.1, 0.6), None),
]


def _tube(rings=13, around=8, radius=0.3, height=3.0):
    z = np.linspace(0, height, rings)
    a = np.linspace(0, 2 * np.pi, around, endpoint=False)
    v = np.array([(radius * np.cos(t) + 0.1 * zz * zz / height, radius * np.sin(t), zz) for zz in z for t in a])
    f = []
    for r in range(rings - 1):
        for i in range(around):
            a0, a1 = r * around + i, r * around + (i + 1) % around
            f += [(a0, a1, a1 + around), (a0, a1 + around, a0 + around)]
    return v, np.array(f)


def make_rigged(with_user_action=True):
    from mathutils import Euler, Matrix, Vector

    scene = bpy.context.scene
    arm = bpy.data.objects.new("Rig", bpy.data.armatures.new("Rig"))
    scene.collection.objects.link(arm)
    arm.matrix_world = Matrix.LocRotScale(Vector((0.4, -0.3, 0.2)), Euler((0.3, -0.2, 0.7)).to_quaternion(), Vector((1.5,) * 3))
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    eb = {}
    for name, head, tail, _ in BONES:
        b = arm.data.edit_bones.new(name)
        b.head, b.tail, b.roll = head, tail, 0.4
        eb[name] = b
    for name, _, _, parent in BONES:
        if parent:
            eb[name].parent = eb[parent]
    bpy.ops.object.mode_set(mode="OBJECT")

    v, f = _tube()
    me = bpy.data.meshes.new("Tube")
    me.from_pydata(v.tolist(), [], f.tolist())
    obj = bpy.data.objects.new("Tube", me)
    scene.collection.objects.link(obj)
    # the mesh sits somewhere else than the armature: its vertices (object space) are placed so
    # that, in world space, the tube lies along the bones
    obj.matrix_world = Matrix.LocRotScale(Vector((-1.0, 2.0, 0.5)), Euler((0.0, 0.5, -0.4)).to_quaternion(), Vector((1.0,) * 3))
    to_obj = np.linalg.inv(np.array(obj.matrix_world)) @ np.array(arm.matrix_world)
    world_v = v @ to_obj[:3, :3].T + to_obj[:3, 3]
    me.vertices.foreach_set("co", world_v.astype(np.float32).ravel())
    me.update()
    groups = {name: obj.vertex_groups.new(name=name) for name, *_ in BONES}
    for i, (x, y, z) in enumerate(v):  # weights from the height along the chain (armature space)
        w = {"root": max(0.0, 1 - abs(z - 0.3)), "mid": max(0.0, 1 - abs(z - 1.5)), "tip": max(0.0, 1 - abs(z - 2.6))}
        if x > 0.1 and z < 1.0:
            w["fin"] = 0.5
        for name, wt in w.items():
            if wt > 0:
                groups[name].add([i], float(wt), "REPLACE")
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm
    if with_user_action:  # the rig's own animation, which must not play over the result
        pb = arm.pose.bones["mid"]
        pb.rotation_mode = "QUATERNION"
        for fr, ang in ((1, 0.0), (30, 1.2)):
            pb.rotation_quaternion = Euler((ang, 0, 0)).to_quaternion()
            pb.keyframe_insert("rotation_quaternion", frame=fr)
        arm.animation_data.action.name = "UserWave"
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj, arm


def _tracks(rig, rest, T=5, seed=0, residual=0.0):
    """Known bone motion -> (TracksResult, target positions (T,N,3))."""
    job = module("job")
    rng = np.random.default_rng(seed)
    B = len(rig.names)
    rot = np.concatenate([np.ones((T, B, 1)), rng.uniform(-0.3, 0.3, (T, B, 3))], -1)
    rot[0] = [1, 0, 0, 0]  # frame 0 is the rest pose
    u = rng.uniform(-0.3, 0.3, (T, 3))
    u[0] = 0
    pos = np.stack([contract_lbs(rest, rot[t], u[t], rig.parents, rig.heads.astype(np.float64), rig.joints, rig.weights)
                    for t in range(T)])
    pos += residual * rng.standard_normal(pos.shape) * (np.arange(T) > 0)[:, None, None]
    disp = (pos - rest).astype(np.float32)
    res = job.TracksResult(disp, np.arange(T, dtype=np.int32), 24.0, None, {"engine": "construction"},
                           None, rot.astype(np.float32), u.astype(np.float32))
    return res, pos


@pytest.fixture()
def rigged(addon):
    reset_scene()
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.afv.start_frame = 1
    obj, arm = make_rigged()
    rig = module("rig_io").extract_rig(obj)
    rest = module("mesh_io").base_vertices(obj.data).astype(np.float64)
    return obj, arm, rig, rest


def test_rig_is_read_parent_first_in_mesh_coordinates(rigged):
    obj, arm, rig, rest = rigged
    assert rig.names == ["root", "mid", "tip", "fin"] and rig.parents.tolist() == [-1, 0, 1, -1]
    to_mesh = np.linalg.inv(np.array(obj.matrix_world)) @ np.array(arm.matrix_world)
    want = np.array([BONES[[b[0] for b in BONES].index(n)][1] for n in rig.names]) @ to_mesh[:3, :3].T + to_mesh[:3, 3]
    assert np.abs(rig.heads - want).max() < 1e-5
    assert rig.joints.shape == (len(rest), 3) and np.allclose(rig.weights.sum(1), 1)
    # the vertex groups, read back one vertex at a time
    i = 20
    got = {rig.names[j]: w for j, w in zip(rig.joints[i], rig.weights[i]) if w > 0}
    raw = {obj.vertex_groups[g.group].name: g.weight for g in obj.data.vertices[i].groups}
    assert got == pytest.approx({k: w / sum(raw.values()) for k, w in raw.items()})
    # what is sent to the backend is accepted by its own rig contract
    from afv.rig import rig_from_npz

    back = rig_from_npz(rig.npz_arrays(), len(rest))
    assert back.names == tuple(rig.names) and np.array_equal(back.joints, rig.joints)


@pytest.mark.parametrize("mode", ["BONE_KEYS", "BOTH", "SHAPE_KEYS"])
def test_bone_keys_reproduce_contract_skinning(rigged, mode):
    obj, arm, rig, rest = rigged
    scene = bpy.context.scene
    scene.afv.rig_keys = mode
    residual = 0.0 if mode == "BONE_KEYS" else 0.02  # a non-rigid part only shape keys can hold
    result, target = _tracks(rig, rest, residual=residual)
    summary = module("animate").apply_result(scene, obj, result, scene.afv)
    assert summary["mode"] == mode
    assert (scene.frame_start, scene.frame_end) == (1, 5)
    assert any("UserWave" in n and "no longer plays" in n for n in summary["notes"]), summary["notes"]
    assert bpy.data.actions["UserWave"].use_fake_user  # kept, not deleted
    ad = arm.animation_data
    if mode == "SHAPE_KEYS":
        assert ad.action is None and summary["keys"] == 5
    else:
        assert ad.action.name == "AFV_Rig" and summary["keys"] == (0 if mode == "BONE_KEYS" else 5)
    for t in range(5):
        got = positions_at(obj, 1 + t)
        err = np.abs(got - target[t]).max()
        assert err < 2e-4, (mode, t, err)
    if mode != "SHAPE_KEYS":  # the bones really move (the result is not all in shape keys)
        assert np.abs(positions_at(obj, 4) - rest).max() > 0.1
    # a second run in another mode replaces the first: no leftover bone keys or shape keys
    scene.afv.rig_keys = "SHAPE_KEYS"
    result2, target2 = _tracks(rig, rest, seed=1, residual=0.01)
    module("animate").apply_result(scene, obj, result2, scene.afv)
    assert ad.action is None and "AFV_Rig" not in bpy.data.actions
    assert np.abs(positions_at(obj, 3) - target2[2]).max() < 2e-4


def test_no_bone_rotations_falls_back_to_shape_keys_and_says_so(rigged):
    obj, arm, rig, rest = rigged
    scene = bpy.context.scene
    result, target = _tracks(rig, rest)
    result.bone_rotations = result.root_translation = None
    summary = module("animate").apply_result(scene, obj, result, scene.afv)
    assert summary["mode"] == "SHAPE_KEYS" and any("no bone rotations" in n for n in summary["notes"])
    assert arm.animation_data.action is None
    assert np.abs(positions_at(obj, 4) - target[3]).max() < 2e-4


def _world(obj, local):
    M = np.array(obj.matrix_world)
    return local @ M[:3, :3].T + M[:3, 3]


@pytest.mark.parametrize("mode", ["BOTH", "SHAPE_KEYS"])
def test_exports_agree_across_gltf_fbx_alembic_pc2(rigged, tmp_path, mode):
    """The issue's case: a rig whose own action kept playing made glTF/FBX (no rig motion) disagree
    with Alembic/PC2 (rig motion baked in). Now all four carry the same motion, in both modes."""
    from scipy.spatial import cKDTree

    obj, arm, rig, rest = rigged
    scene = bpy.context.scene
    scene.afv.rig_keys = mode
    result, target = _tracks(rig, rest, T=6, residual=0.01)
    module("animate").apply_result(scene, obj, result, scene.afv)
    bake = module("bake")
    frames = [1, 3, 6]
    want = {f: _world(obj, positions_at(obj, f)) for f in frames}
    assert np.abs(want[6] - _world(obj, target[5])).max() < 2e-4
    paths = {fmt: tmp_path / f"tube.{fmt}" for fmt in ("glb", "fbx", "abc", "pc2")}
    bake.export_glb(obj, paths["glb"])
    bake.export_fbx(obj, paths["fbx"])
    bake.export_alembic(obj, paths["abc"])
    bake.export_pc2(obj, paths["pc2"])

    samples, start = bake.read_pc2(paths["pc2"])
    assert start == 1 and len(samples) == 6
    errors = {"pc2": max(np.abs(_world(obj, samples[f - 1]) - want[f]).max() for f in frames)}
    importers = {
        "glb": lambda p: bpy.ops.import_scene.gltf(filepath=str(p)),
        "fbx": lambda p: bpy.ops.import_scene.fbx(filepath=str(p), anim_offset=0.0),
        "abc": lambda p: bpy.ops.wm.alembic_import(filepath=str(p)),
    }
    for fmt, imp in importers.items():
        before = {o.name for o in bpy.data.objects}
        imp(paths[fmt])
        new = [o for o in bpy.data.objects if o.name not in before and o.type == "MESH" and o.name.startswith("Tube")]
        assert len(new) == 1, (fmt, [o.name for o in new])
        err = 0.0
        for f in frames:
            got = _world(new[0], positions_at(new[0], f))
            if fmt == "glb":  # glTF may split vertices: compare as point sets
                err = max(err, cKDTree(want[f]).query(got)[0].max(), cKDTree(got).query(want[f])[0].max())
            else:
                err = max(err, np.abs(got - want[f]).max())
        errors[fmt] = err
        for o in [o for o in bpy.data.objects if o.name not in before]:
            bpy.data.objects.remove(o)
    diag = float(np.linalg.norm(rest.max(0) - rest.min(0)))
    print(mode, "export max error / diagonal:", {k: f"{e / diag:.2e}" for k, e in errors.items()})
    assert all(e / diag < 1e-3 for e in errors.values()), errors


def test_bones_that_do_not_explain_the_result_are_not_keyed(rigged):
    """Bone rotations in another bone order (e.g. a tracks file made for another rig) must not animate the rig."""
    obj, arm, rig, rest = rigged
    scene = bpy.context.scene
    scene.afv.rig_keys = "BONE_KEYS"
    result, target = _tracks(rig, rest)
    result.bone_rotations = result.bone_rotations[:, ::-1].copy()  # bones in reverse order
    summary = module("animate").apply_result(scene, obj, result, scene.afv)
    assert summary["mode"] == "SHAPE_KEYS" and any("do not reproduce" in n for n in summary["notes"]), summary["notes"]
    assert arm.animation_data.action is None
    assert np.abs(positions_at(obj, 4) - target[3]).max() < 2e-4


def test_fox_asset_round_trip(addon, shared_data, tmp_path):
    """The bundled rigged Fox (glTF import: bones with their own rest orientations, the mesh parented
    to the armature, three actions, 'Survey' playing): bone keys + shape keys reproduce known
    skinning, the Survey action stops playing, and a glTF export re-imports with the same motion."""
    from scipy.spatial import cKDTree

    reset_scene()
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.afv.start_frame = 1
    bpy.ops.import_scene.gltf(filepath=str(shared_data / "assets" / "Fox.glb"))
    rig_io = module("rig_io")
    obj = next(o for o in scene.objects if o.type == "MESH" and rig_io.armature_modifier(o) is not None)
    arm = rig_io.armature_modifier(obj).object
    assert arm.animation_data.action.name == "Survey"
    rig = rig_io.extract_rig(obj)
    assert len(rig.names) == 24 and all(rig.parents[b] < b for b in range(24))
    rest = module("mesh_io").base_vertices(obj.data).astype(np.float64)
    scene.afv.rig_keys = "BOTH"
    result, target = _tracks(rig, rest, T=4, residual=0.5)  # the Fox is ~150 units long
    summary = module("animate").apply_result(scene, obj, result, scene.afv)
    assert summary["mode"] == "BOTH" and any("'Survey'" in n for n in summary["notes"])
    diag = float(np.linalg.norm(rest.max(0) - rest.min(0)))
    for t in range(4):
        assert np.abs(positions_at(obj, 1 + t) - target[t]).max() / diag < 1e-5, t
    want = _world(obj, positions_at(obj, 3))
    bake = module("bake")
    bake.export_glb(obj, tmp_path / "fox.glb")
    before = {o.name for o in bpy.data.objects}
    bpy.ops.import_scene.gltf(filepath=str(tmp_path / "fox.glb"))
    new = [o for o in bpy.data.objects if o.name not in before and o.type == "MESH" and len(o.data.vertices) > 100]
    assert len(new) == 1
    got = _world(new[0], positions_at(new[0], 3))
    assert cKDTree(want).query(got)[0].max() / diag < 1e-4 and cKDTree(got).query(want)[0].max() / diag < 1e-4


def test_named_bones_in_another_order_are_mapped_by_name(rigged, tmp_path):
    """A tracks file that names its bones (any order) is applied through File > Import by name."""
    obj, arm, rig, rest = rigged
    scene = bpy.context.scene
    scene.afv.rig_keys = "BONE_KEYS"
    result, target = _tracks(rig, rest)
    order = [2, 0, 3, 1]
    path = tmp_path / "named.npz"
    np.savez(path, displacements=result.displacements, frame_indices=result.frame_indices, fps=np.float64(24.0),
             bone_rotations=result.bone_rotations[:, order], root_translation=result.root_translation,
             bone_names=np.array([rig.names[i] for i in order]), meta=np.array('{"engine": "construction"}'))
    assert bpy.ops.afv.import_tracks(filepath=str(path)) == {"FINISHED"}
    assert arm.animation_data.action.name == "AFV_Rig"
    for t in (1, 4):
        assert np.abs(positions_at(obj, 1 + t) - target[t]).max() < 2e-4
