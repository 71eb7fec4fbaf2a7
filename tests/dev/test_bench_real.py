"""The `real` benchmark subset: clip enumeration, the reserved clip, sampling, the asset's rig
exported from Blender (validated by re-skinning the ground truth), runner modes and jobs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from afv.errors import InputError
from afv.gltf import list_animations
from afv_dev.bench import metrics as M
from afv_dev.bench.blender_render import VIEWS, asset_path, sample_times
from afv_dev.bench.clips import RESERVED_CLIPS, is_reserved
from afv_dev.bench.report import write_report
from afv_dev.bench.rig_pose import contract_pose, deforming_bones, subset_rig
from afv_dev.bench.runner import RunConfig, oracle_tracks, run
from afv_dev.bench.sequences import SUBSETS, Recipe, build, load_sequence, real_recipes, subset_recipes


def _need(rel: str):
    if asset_path(rel) is None:
        pytest.skip(f"development data (shared/data/assets/{rel}) not found; set AFV_DATA")
    return asset_path(rel)


# ----------------------------------------------------------------------------- recipes


def test_no_recipe_references_the_reserved_clip():
    _need("RobotExpressive.glb")
    for subset in SUBSETS:
        for r in subset_recipes(subset):
            rel, _, clip = r.source.partition(":")[2].partition("#")
            assert not is_reserved(rel, clip or None), r
            assert "jump" not in r.name.lower() or "walkjump" in r.name.lower(), r
    assert ("RobotExpressive.glb", "Jump") in RESERVED_CLIPS
    with pytest.raises(InputError, match="reserved"):  # refused before Blender starts
        build(Recipe("x", "asset:RobotExpressive.glb#Jump", 2, 32, "side"), "/nonexistent-cache", log=lambda s: None)


def test_real_subset_covers_every_clip_two_views_two_samplings():
    for rel in ("Fox.glb", "CesiumMan.glb", "RiggedSimple.glb", "AnimatedMorphSphere/AnimatedMorphSphere.gltf", "RobotExpressive.glb"):
        _need(rel)
    robot = [c.name for c in list_animations(asset_path("RobotExpressive.glb"))]
    assert len(robot) == 14 and "Jump" in robot  # the file has it; the subset must not
    rs = real_recipes(log=lambda s: None)
    names = [r.name for r in rs]
    assert len(set(names)) == len(names)
    clips = {r.source for r in rs}
    assert len(clips) == 3 + 1 + 1 + 1 + 13  # Fox 3, CesiumMan, RiggedSimple, MorphSphere, Robot 14 - Jump
    assert "asset:RobotExpressive.glb#WalkJump" in clips and "asset:RobotExpressive.glb#Jump" not in clips
    for src in clips:  # each clip: 2 views x (16 over the whole clip, 48 consecutive at its own rate)
        got = sorted((r.view, r.n_frames, r.sampling) for r in rs if r.source == src)
        assert got == [("side", 16, "whole"), ("side", 48, "rate"), ("three_quarter", 16, "whole"), ("three_quarter", 48, "rate")]
    sphere = next(r for r in rs if "AnimatedMorphSphere" in r.source)
    assert sphere.fps == pytest.approx(30.0)  # its keyframes are at 30 fps, the others at 24
    quick = real_recipes(quick=True, log=lambda s: None)
    assert len(quick) == 8 and all(r.view == "three_quarter" and r.n_frames == 16 for r in quick)
    assert {r.name for r in quick} <= set(names)  # the quick set shares the real set's cache entries


def test_views_are_three_quarter_and_side_at_15_degrees():
    for name, az in (("three_quarter", 35), ("side", 90)):
        d = np.asarray(VIEWS[name])
        assert np.linalg.norm(d) == pytest.approx(1)
        assert np.degrees(np.arcsin(d[2])) == pytest.approx(15)
        assert np.degrees(np.arctan2(d[0], -d[1])) == pytest.approx(az)


def test_sample_times():
    t, fps = sample_times("whole", 5, 2.0, 10.0, 24.0, 24.0, cyclic=True)
    assert np.allclose(t, [2, 4, 6, 8, 10]) and fps == pytest.approx(4 / (8 / 24))
    # 30 fps clip in a 24 fps scene: 0.8 scene frames per video frame; a 4-frame cyclic clip loops
    t, fps = sample_times("rate", 7, 0.0, 4.0, 24.0, 30.0, cyclic=True)
    assert np.allclose(t, [0, 0.8, 1.6, 2.4, 3.2, 0.0, 0.8]) and fps == 30.0
    t, _ = sample_times("rate", 7, 1.0, 5.0, 24.0, 30.0, cyclic=False)  # a non-cyclic one holds its end
    assert np.allclose(t, [1, 1.8, 2.6, 3.4, 4.2, 5.0, 5.0])


# ----------------------------------------------------------------------------- rig pose (numpy)


def _fk_lbs(v0, parents, heads, joints, weights, rot_wxyz, u):
    """The contract's forward kinematics + LBS, written out independently (docs/contracts.md)."""
    T, B = rot_wxyz.shape[:2]
    R = Rotation.from_quat(np.concatenate([rot_wxyz[..., 1:], rot_wxyz[..., :1]], -1).reshape(-1, 4)).as_matrix().reshape(T, B, 3, 3)
    Q, P = np.zeros_like(R), np.zeros((T, B, 3))
    for b in range(B):
        p = parents[b]
        Q[:, b] = R[:, b] if p < 0 else Q[:, p] @ R[:, b]
        P[:, b] = heads[b] + u if p < 0 else P[:, p] + np.einsum("tij,j->ti", Q[:, p], heads[b] - heads[p])
    out = np.zeros((T, len(v0), 3))
    for k in range(joints.shape[1]):
        j = joints[:, k]
        out += weights[None, :, k, None] * (np.einsum("tnij,nj->tni", Q[:, j], v0 - heads[j]) + P[:, j])
    return out


def test_contract_pose_round_trip_on_a_known_chain():
    """World matrices made from known parent-relative rotations give those rotations back."""
    rng = np.random.default_rng(0)
    parents = np.array([-1, 0, 1, 1])
    heads = rng.normal(size=(4, 3))
    rest_orient = Rotation.random(4, random_state=1).as_matrix()  # bones' own axes at frame 0
    T = 3
    R = Rotation.random(T * 4, random_state=2).as_matrix().reshape(T, 4, 3, 3)
    R[0] = np.eye(3)
    u = rng.normal(size=(T, 3))
    u[0] = 0
    mats = np.zeros((T, 4, 4, 4))
    for t in range(T):
        Q, P = [None] * 4, [None] * 4
        for b in range(4):
            p = parents[b]
            Q[b] = R[t, b] if p < 0 else Q[p] @ R[t, b]
            P[b] = heads[b] + u[t] if p < 0 else P[p] + Q[p] @ (heads[b] - heads[p])
            mats[t, b] = np.eye(4)
            mats[t, b, :3, :3] = Q[b] @ rest_orient[b]
            mats[t, b, :3, 3] = P[b]
    pose = contract_pose(mats, parents, heads)
    got = Rotation.from_quat(np.concatenate([pose["bone_rotations"][..., 1:], pose["bone_rotations"][..., :1]], -1).reshape(-1, 4))
    assert np.allclose(got.as_matrix().reshape(T, 4, 3, 3), R, atol=1e-5)
    assert np.allclose(pose["root_translation"], u, atol=1e-5)
    assert pose["child_offset_error"] < 1e-9 and pose["scale_deviation"] < 1e-9


def test_deforming_bones_drop_unweighted_roots_and_helpers():
    # 0 scene root (no weight) -> 1 armature root (no weight) -> 2 hips -> 3 leg; 4 IK target under 1
    parents = np.array([-1, 0, 1, 2, 1])
    joints = np.array([[2, 3], [3, 0]])
    weights = np.array([[0.5, 0.5], [1.0, 0.0]])
    keep = deforming_bones(parents, joints, weights)
    assert keep.tolist() == [2, 3]  # the hips become the root: their translation is the root's
    par, j = subset_rig(keep, parents, joints, weights)
    assert par.tolist() == [-1, 0] and j.tolist() == [[0, 1], [1, 1]]
    # two weighted children under an unweighted root: the root stays (it ties them together)
    keep = deforming_bones(np.array([-1, 0, 0]), np.array([[1], [2]]), np.array([[1.0], [1.0]]))
    assert keep.tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- through Blender


@pytest.fixture(scope="module")
def fox_seq(tmp_path_factory):
    import bpy  # noqa: F401  (the test extra installs it)

    _need("Fox.glb")
    rec = Recipe("fox_run_6w_64", "asset:Fox.glb#Run", 6, 64, "three_quarter", 24.0, ("frames",), sampling="whole")
    return load_sequence(build(rec, tmp_path_factory.mktemp("cache"), log=lambda s: None))


def test_fox_rig_export_reproduces_ground_truth_through_lbs(fox_seq):
    """The exported rig + GT bone rotations, skinned by the contract's FK/LBS, give Blender's GT."""
    s = fox_seq
    rig, gt = s.mesh.rig, s.read_rig_gt()
    assert rig is not None and gt is not None
    assert rig.parents[0] == -1 and (rig.parents[1:] < np.arange(1, rig.n_bones)).all()
    assert rig.names[0] == "b_Hip_01"  # glTF's unweighted _rootJoint / b_Root_00 are dropped
    assert rig.joints.shape == (s.mesh.n_vertices, 4) and np.allclose(rig.weights.sum(1), 1)
    v0 = s.mesh.vertices.astype(np.float64)
    pred = _fk_lbs(v0, rig.parents, rig.heads.astype(np.float64), rig.joints, rig.weights.astype(np.float64),
                   gt["bone_rotations"].astype(np.float64), gt["root_translation"].astype(np.float64))
    diag = s.mesh.bbox_diagonal()
    err = np.linalg.norm(pred - s.positions, axis=-1) / diag
    still = np.linalg.norm(s.positions - v0, axis=-1) / diag
    assert still[1:].mean() > 0.04  # the fox really runs
    # vertices on one bone move rigidly: exact up to float32 storage
    single = rig.weights[:, 0] > 0.999
    assert single.sum() > 100 and err[:, single].max() < 1e-4
    # blended vertices: LBS re-posed from frame 0 instead of Blender's rest pose differs a little
    # (measured: mean 0.14 %, worst vertex 4.3 % of the diagonal, against 4 %+ mean motion)
    assert err.mean() < 0.005 and err.max() < 0.06
    assert np.allclose(gt["bone_rotations"][0], [1, 0, 0, 0], atol=1e-5) and np.allclose(gt["root_translation"][0], 0, atol=1e-3)
    meta = json.loads((s.path / "meta.json").read_text())
    assert meta["rig"]["child_offset_error"] < 1e-3 * diag
    # heads: where Blender's bone matrices put them at frame 0
    assert np.allclose(rig.heads, np.asarray(gt["bone_matrices"])[0, :, :3, 3], atol=1e-3 * diag)


def test_runner_rig_modes_and_oracle(fox_seq, tmp_path):
    """rig given vs none reach the engine; oracle tracks are GT projections inside the masks."""
    s = fox_seq
    vis = M.visibility(s.positions, s.mesh.faces, s.camera)
    pts, v = oracle_tracks(s, vis)
    assert pts.shape == (s.n_frames, s.mesh.n_vertices, 2) and v.shape == pts.shape[:2] and v.any()
    t, i = np.nonzero(v)
    px = np.clip(np.floor(pts[t, i]).astype(int), 0, 63)  # pixel j covers [j, j+1)
    near = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for m in s.masks])
    # visible vertices project onto Blender's alpha, up to one pixel (silhouette vertices sit on its edge)
    assert near[t, px[:, 1], px[:, 0]].mean() > 0.98
    doc = run([s.path], RunConfig(engines=["static"], rigs=["none", "given"], oracle=True, actionbench="off"), tmp_path / "out",
              log=lambda x: None)
    a, b = doc["runs"]
    assert (a["rig"], b["rig"]) == ("none", "given") and a["status"] == b["status"] == "ok" and a["oracle"]
    assert a["metrics"]["position"]["mean"] == pytest.approx(b["metrics"]["position"]["mean"])  # static ignores both
    text = write_report(doc, tmp_path / "out").read_text()
    assert "| known | frames | given | yes | static |" in text


def test_parallel_jobs_give_the_same_numbers(tmp_path):
    seqs = [build(r, tmp_path / "cache", log=lambda s: None) for r in subset_recipes("smoke", (4,), 64)]
    cfg = dict(engines=["static", "rigid"], actionbench="off")
    one = run(seqs, RunConfig(**cfg), tmp_path / "a", log=lambda s: None)
    two = run(seqs, RunConfig(**cfg, jobs=2), tmp_path / "b", log=lambda s: None)
    key = lambda d: [(r["sequence"], r["engine"], r["status"], round(r["metrics"]["position"]["mean"], 6)) for r in d["runs"]]  # noqa: E731
    assert key(one) == key(two) and len(one["runs"]) == 4


# ----------------------------------------------------------------------------- device packs


def test_device_pack_round_trip_is_exact_and_log_lines_parse(tmp_path):
    """A pack re-creates every sequence bit for bit (frames, masks from alpha, GT); a run's log
    lines give back its numbers when results.json is lost."""
    import argparse
    import importlib.util

    from afv_dev.bench.runner import _log_result
    from afv_dev.bench.sequences import find_sequences

    spec = importlib.util.spec_from_file_location("rrod", Path(__file__).resolve().parents[2] / "benchmarks" / "run_real_on_device.py")
    rrod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rrod)
    cache = tmp_path / "cache"
    rrod.pack(argparse.Namespace(subset="smoke", cache=str(cache), dest=str(tmp_path / "pack"), wheels=None, only=None, max_mb=0.05))
    parts = sorted((tmp_path / "pack").glob("part*"))
    assert len(parts) == 2  # a tiny part size splits the two sequences
    for part in parts:
        for seq in rrod.unpack(part, tmp_path / "there"):
            a, b = load_sequence(seq), load_sequence(cache / seq.name)
            assert np.array_equal(a.positions, b.positions) and np.array_equal(a.masks, b.masks)
            assert np.array_equal(a.read_frames(), b.read_frames()) and np.array_equal(a.mesh.vertices, b.mesh.vertices)
    doc = run(find_sequences(tmp_path / "there"), RunConfig(engines=["static"]), tmp_path / "out", log=lambda s: None)
    lines: list[str] = []
    for r in doc["runs"]:
        _log_result(r, lines.append)
    (tmp_path / "run.log").write_text("\n".join(lines))
    back = rrod.runs_from_log(tmp_path / "run.log", tmp_path / "there")
    assert len(back["runs"]) == 2
    for r, b in zip(doc["runs"], back["runs"]):
        assert b["metrics"]["position"]["mean"] == pytest.approx(r["metrics"]["position"]["mean"], abs=5e-5)
        assert b["actionbench"]["cd_m"] == pytest.approx(r["actionbench"]["cd_m"], abs=5e-5)


def test_merge_joins_parts_into_one_report_with_every_mode_plotted(tmp_path):
    """Parts run separately (e.g. no rig on the device, rig given in another call) merge into one
    report: every run kept, the header names every mode, and each sequence's error-over-time plot
    is drawn again from the merged numbers (each part drew only its own runs)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("rrod", Path(__file__).resolve().parents[2] / "benchmarks" / "run_real_on_device.py")
    rrod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rrod)
    seqs = [build(subset_recipes("smoke")[0], tmp_path / "cache", log=lambda s: None)]
    name = seqs[0].name
    parts = []
    for tag, cfg in (("a", RunConfig(engines=["static"], actionbench="off")), ("b", RunConfig(engines=["static"], cameras=["estimated"], actionbench="off"))):
        doc = run(seqs, cfg, tmp_path / tag, log=lambda s: None)
        write_report(doc, tmp_path / tag)
        shutil.rmtree(tmp_path / tag / "preds")  # as from the device: numbers and pictures, no predictions
        parts.append(tmp_path / tag)
    before = (parts[1] / "plots" / f"{name}__error.png").read_bytes()
    out = tmp_path / "merged"
    rrod.merge(argparse.Namespace(parts=[str(p) for p in parts], logs=None, cache=str(tmp_path / "cache"), out=str(out), command="", note="", jobs=1))
    merged = json.loads((out / "results.json").read_text())
    assert sorted(r["camera"] for r in merged["runs"]) == ["estimated", "known"]
    assert merged["config"]["cameras"] == ["known", "estimated"]
    assert (out / "plots" / f"{name}__error.png").read_bytes() != before  # two curves now, not part b's one
    assert "cameras: known, estimated" in (out / "report.md").read_text()
