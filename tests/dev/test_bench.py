"""Benchmark: metrics against hand-computable cases, sequences and runner against ground truth
from construction, one real asset through bpy (camera convention end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from afv.geometry.silhouette import mask_iou
from afv_dev.bench import metrics as M
from afv_dev.bench.runner import RunConfig, run
from afv_dev.bench.sequences import Recipe, build, is_fresh, load_sequence, write_sequence
from afv_dev.synthetic import Sequence, render_sequence, rigid_sequence


# ----------------------------------------------------------------------------- metrics


def test_chamfer_identical_is_zero_and_shift_is_twice_the_shift():
    g = np.stack(np.meshgrid(*[np.arange(6.0)] * 3), -1).reshape(-1, 3)  # spacing 1
    assert M.chamfer_score(g, g.copy()) == 0.0
    d = np.array([0.1, 0.0, 0.0])  # well under half the spacing: NN is the shifted twin
    assert M.chamfer_score(g + d, g) == pytest.approx(0.2, abs=1e-9)  # 0.1 each direction, summed


def test_motion_chamfer_of_constant_offset():
    rng = np.random.default_rng(0)
    g0 = np.stack(np.meshgrid(*[np.arange(5.0)] * 3), -1).reshape(-1, 3)
    T = 4
    gts = np.stack([g0 + rng.normal(size=3) for _ in range(T)])  # rigid translations, tracked
    off = np.array([0.0, 0.2, 0.0])
    preds = gts.copy()
    preds[1:] += off  # frame 0 identical -> correspondences are the identity
    assert M.motion_chamfer_score(preds, gts) == pytest.approx(2 * 0.2 * (T - 1) / T, abs=1e-9)


def test_normalize_first_frame_to_unit_box():
    gt = np.array([[[0, 0, 0], [4, 2, 1.0]], [[1, 1, 1], [9, 9, 9.0]]])
    (g,) = M.normalize_to_first_frame(gt)
    assert g[0].min() == pytest.approx(-1) and g[0, :, 0].max() == pytest.approx(1)
    assert g[0, 1, 1] == pytest.approx(0.5)  # y: (2 - 1) / 2


def test_gradient_icp_recovers_axis_aligned_rotation_with_canonical_inits():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(300, 3)) * [1.0, 0.5, 0.25]  # anisotropic: orientation is identifiable
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    pred = gt @ Rz + [0.05, -0.03, 0.02]
    cfg = M.ActionBenchConfig(n_pts_icp=300, icp_iters=120)
    s, R, t = M.gradient_icp(pred, gt, cfg)
    aligned = M.apply_similarity(pred, s, R, t)
    assert M.chamfer_score(aligned, gt) < 0.1 * M.chamfer_score(pred, gt)
    assert np.abs(aligned - gt).mean() < 0.05  # same points back (not merely a close cloud)


def test_vertex_metrics_hand_case():
    gt = np.zeros((3, 2, 3))
    gt[:, 1] = [3.0, 4.0, 0.0]  # bbox diagonal 5
    pred = gt.copy()
    pred[1, 0] += [0.05, 0, 0]  # 1 % error on one vertex at frame 1
    pred[2, 1] += [0, 0.25, 0]  # 5 % on another at frame 2
    m = M.vertex_metrics(pred, gt)
    assert m.position["mean"] == pytest.approx((0.01 + 0.05) / 4)
    assert m.position["within_2pct"] == pytest.approx(0.75)
    assert m.position["within_5pct"] == pytest.approx(0.75)  # strict: 5 % is not within
    assert m.worst_frame == 2
    # jitter: acceleration differs at t=1 only: vertex 0 by -2*0.05, vertex 1 by 0.25
    assert m.jitter == pytest.approx((0.1 + 0.25) / 2 / 5)


def test_actionbench_of_ground_truth_is_far_below_static():
    seq = rigid_sequence(n_frames=5, size=(64, 64), subdivisions=1)
    cfg = M.ActionBenchConfig(n_pts_icp=300, n_pts_chamfer=3000, n_pts_query=2000, icp_iters=40, icp_inits="identity")
    perfect = M.actionbench_metrics(seq.positions, seq.positions, seq.mesh.faces, cfg=cfg)
    static = M.actionbench_metrics(np.repeat(seq.positions[:1], 5, 0), seq.positions, seq.mesh.faces, cfg=cfg)
    # CD-3D aligns every frame, so a rigidly moving static mesh is nearly perfect there;
    # CD-4D and CD-M see the motion
    # (the floor of `perfect` is the sampling density: 3000 points on a [-1, 1] box)
    assert perfect["cd_m"] < 0.15 and static["cd_m"] > 5 * perfect["cd_m"]
    assert static["cd_4d"] > 3 * perfect["cd_4d"]
    assert static["cd_3d"] < 1.5 * perfect["cd_3d"]


# ----------------------------------------------------------------------------- sequences + runner


def _translating_sequence(T=6):
    """A box moving by a known translation d_t = (0.1 t, 0, 0)."""
    seq = rigid_sequence(n_frames=2, size=(64, 64), subdivisions=1)
    v = seq.mesh.vertices
    pos = np.stack([v + [0.1 * t, 0, 0] for t in range(T)]).astype(np.float32)
    return Sequence("translate", seq.mesh, pos, seq.camera)


def test_static_baseline_error_equals_known_translation(tmp_path):
    seq = _translating_sequence()
    rec = Recipe("translate", "test:translate", 6, 64)
    folder = write_sequence(tmp_path / "seqs" / "translate", rec, seq.mesh, seq.positions, seq.camera, render_sequence(seq))
    doc = run([folder], RunConfig(engines=["static"], actionbench="off"), tmp_path / "out", log=lambda s: None)
    (r,) = doc["runs"]
    assert r["status"] == "ok"
    diag = float(np.linalg.norm(np.ptp(seq.mesh.vertices, 0)))
    expect = np.mean([0.1 * t for t in range(1, 6)]) / diag  # every vertex moves by 0.1 t
    assert r["metrics"]["position"]["mean"] == pytest.approx(expect, rel=1e-5)
    assert r["metrics"]["position"]["p95"] == pytest.approx(np.percentile(np.repeat([0.1 * t for t in range(1, 6)], 8), 95) / diag, rel=1e-5)
    # the silhouette of the static mesh overlaps less as the box leaves: IoU per frame falls
    ious = r["metrics"]["per_frame_iou"]
    assert ious[0] > 0.97 and ious[-1] < ious[1] < ious[0]


def test_build_cache_and_synthetic_ground_truth(tmp_path):
    rec = Recipe("box", "synthetic:rigid_box", 4, 64, variants=("frames", "clutter"))
    folder = build(rec, tmp_path, log=lambda s: None)
    s = load_sequence(folder)
    ref = rigid_sequence(n_frames=4, size=(64, 64))
    assert np.allclose(s.positions, ref.positions) and np.allclose(s.mesh.vertices, ref.positions[0])
    assert s.variants() == ["frames", "clutter"]
    assert is_fresh(folder, rec) and not is_fresh(folder, Recipe("box", "synthetic:rigid_box", 5, 64))
    mtime = (folder / "gt.npz").stat().st_mtime_ns
    build(rec, tmp_path, log=lambda s: None)
    assert (folder / "gt.npz").stat().st_mtime_ns == mtime  # cached, not rebuilt
    # masks are the renderer's coverage: projecting GT through camera.json reproduces them
    sil = M.silhouettes(s.positions, s.mesh.faces, s.camera)
    assert mask_iou(sil, s.masks).min() > 0.97


def test_rigid_engine_on_rigid_sequence(tmp_path):
    folder = build(Recipe("rigid_box_16f_192", "synthetic:rigid_box", 16, 192), tmp_path, log=lambda s: None)
    doc = run([folder], RunConfig(engines=["rigid"], actionbench="off"), tmp_path / "out", log=lambda s: None)
    (r,) = doc["runs"]
    assert r["status"] == "ok", r["message"]
    # measured 3.4 % at 192 px (rigid's own tests: 2.2 % at 256 px); the 1 % goal of the
    # benchmark brief is not met by the flow + PnP rigid engine yet
    gt = load_sequence(folder).positions
    static_err = (np.linalg.norm(gt[1:] - gt[0], axis=-1) / np.linalg.norm(np.ptp(gt[0], 0))).mean()
    assert r["metrics"]["position"]["mean"] < 0.05
    assert r["metrics"]["position"]["mean"] < 0.25 * static_err


def test_cli_smoke_writes_results_and_report(tmp_path, repo_root):
    env = dict(os.environ, PYTHONPATH=str(repo_root / "backend") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "afv", "bench", "--subset", "smoke", "--lengths", "4", "--size", "64", "--actionbench", "off",
         "--cache", str(tmp_path / "cache"), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert {x["sequence"] for x in doc["runs"]} == {"rigid_box_4f_64", "bending_cylinder_4f_64"}
    ref = rigid_sequence(n_frames=4, size=(64, 64))
    diag = np.linalg.norm(np.ptp(ref.positions[0], 0))
    expect = (np.linalg.norm(ref.positions[1:] - ref.positions[0], axis=-1) / diag).mean()
    got = next(x for x in doc["runs"] if x["sequence"] == "rigid_box_4f_64")["metrics"]["position"]["mean"]
    assert got == pytest.approx(expect, rel=1e-4)
    text = (out / "report.md").read_text()
    assert "rigid_box_4f_64" in text and f"{100 * got:.2f}" in text
    assert (out / "plots" / "rigid_box_4f_64__error.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- real asset via bpy


def test_riggedsimple_through_blender(tmp_path):
    import bpy  # noqa: F401  (the test extra installs it)
    from afv_dev.bench.blender_render import asset_path

    if asset_path("RiggedSimple.glb") is None:
        pytest.skip("development data (shared/data/assets/RiggedSimple.glb) not found; set AFV_DATA")
    rec = Recipe("riggedsimple_4f_96", "asset:RiggedSimple.glb", 4, 96, "three_quarter", variants=("frames",))
    folder = build(rec, tmp_path, log=lambda s: None)
    s = load_sequence(folder)
    assert s.positions.shape == (4, 960, 3)  # every vertex as Blender gives it (seams split)
    assert np.array_equal(s.positions[0], s.mesh.vertices)  # input mesh = GT frame 0
    diag = s.mesh.bbox_diagonal()
    assert np.linalg.norm(s.positions[-1] - s.positions[0], axis=-1).max() > 0.05 * diag  # it does bend
    # camera convention end to end: GT projected through camera.json matches Blender's alpha
    sil = M.silhouettes(s.positions, s.mesh.faces, s.camera)
    assert mask_iou(sil, s.masks).min() > 0.9
    assert s.masks.mean() > 0.02  # the object fills a real part of the frame
