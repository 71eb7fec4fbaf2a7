"""Self-check and fallback (afv.engines.selfcheck), wired into `articulated`; upright placement.

Ground truth by construction: clips rendered from known motion with afv_dev.synthetic; the
candidate motions handed to the self-check are built from that truth (plus known corruption).
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from afv_dev import synthetic
from afv.camera import Camera, intrinsics, look_at
from afv.engines import get_engine_spec
from afv.engines.base import EngineInput
from afv.engines.selfcheck import cap_depth, decide, rigid_hypothesis, self_check
from afv.mesh import Mesh
from afv.progress import Progress
from afv.geometry.raster import rasterize
from afv.video import VideoClip

FAST = dict(iters=80, root_iters=30, n_surface=800, n_tracks=400)


def _articulated(inp: EngineInput, **opts):
    """The default engine, through the registry, with fewer steps than its defaults."""
    eng = get_engine_spec("articulated").create({**FAST, **opts})
    return eng.run(inp, Progress(eng.stages))


def _clip(rgba: np.ndarray) -> VideoClip:
    T, H, W = rgba.shape[:3]
    return VideoClip(np.ascontiguousarray(rgba[..., :3]), None, np.arange(T, dtype=np.int32), 24.0, (W, H), 1.0)


def _err(seq, disp) -> float:
    return float(np.linalg.norm(disp - seq.displacements, axis=-1).mean() / seq.mesh.bbox_diagonal() * 100)


def _flat_render(seq) -> np.ndarray:
    """(T, H, W, 4) uint8: one flat grey, no texture and no shading: nothing for flow to track."""
    W, H = seq.camera.image_size
    out = np.zeros((len(seq.positions), H, W, 4), np.uint8)
    faces = torch.as_tensor(seq.mesh.faces).long()
    for t, p in enumerate(seq.positions):
        M = seq.camera.pose(t)
        m = rasterize(torch.as_tensor(p @ M[:3, :3].T + M[:3, 3], dtype=torch.float32), faces, torch.as_tensor(seq.camera.K), (W, H)).mask.numpy()
        out[t, m] = (150, 150, 150, 255)
        out[t, ~m] = (40, 60, 80, 0)
    return out


def _depth_change(seq, disp, t) -> np.ndarray:
    """(N,) change of every vertex's camera depth between rest and frame t."""
    M = seq.camera.pose(0)
    z0 = seq.mesh.vertices @ M[2, :3] + M[2, 3]
    zt = (seq.mesh.vertices + disp[t]) @ M[2, :3] + M[2, 3]
    return zt - z0


def test_rigid_hypothesis_recovers_rigid_motion_and_decide_is_simplest_within_margin():
    seq = synthetic.multi_part(n_frames=5, size=(64, 64))
    parts = np.repeat(np.arange(3), len(seq.mesh.vertices) // 3)
    noisy = seq.positions + np.random.default_rng(0).normal(0, 0.01, seq.positions.shape).astype(np.float32)
    rig = rigid_hypothesis(seq.mesh.vertices, noisy, parts)
    assert np.abs(rig - seq.positions).max() < 0.01  # per-part Procrustes averages the noise away
    cost = np.array([[0, 5, 5, 5, 5, 5.0], [0, 0.5, 0.4, 0.6, 0.5, 0.5], [0, 0.1, 0.0, 0.2, 0.1, 0.1]])
    # rigid is within the margin of the fit: the simpler wins; still is far worse everywhere
    assert decide(cost, margin=1.0, smooth=0.0, min_run=1)[1:].tolist() == [1] * 5
    flick = np.array([[9, 9, 9, 0, 9, 9.0], [9] * 6, [0, 0, 0, 9, 0, 0.0]])
    # a one-frame blip is absorbed by its neighbours (no flicker)
    assert decide(flick, margin=1.0, smooth=0.0, min_run=3).tolist() == [2] * 6


def test_failing_tracker_falls_back_with_a_warning():
    # textureless, fast: 40 degrees a frame about the vertical plus a slide; flow cannot track it
    seq = synthetic.rigid_sequence(n_frames=6, size=(112, 112))
    rest = seq.mesh.vertices
    pos = []
    for t in range(6):
        a = np.radians(40.0 * t)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        pos.append(rest @ R.T + np.array([0.06 * t, 0.0, 0.0]))
    seq.positions = np.stack(pos).astype(np.float32)
    rgba = _flat_render(seq)
    masks = rgba[..., 3] > 0
    static = _err(seq, 0 * seq.displacements)
    # a garbage candidate (what a lost tracker produces): vertices scattered, the part run off in depth
    rng = np.random.default_rng(1)
    garbage = seq.displacements + rng.normal(0, 0.15, seq.displacements.shape).astype(np.float32)
    garbage[:, :, 2] += np.linspace(0, 1.5, 6)[:, None]
    garbage[0] = 0
    chk = self_check(seq.mesh, seq.camera, rgba[..., :3], masks, garbage, seed=0)
    assert (chk.choice[1:] < 2).all(), chk.info()
    assert any("fell back" in w for w in chk.warnings)
    assert _err(seq, chk.displacements) <= static + 1e-6 < _err(seq, garbage)
    # end to end: the default engine on this clip returns no worse than the still mesh, and says so if it fell back
    out = _articulated(EngineInput(seq.mesh, _clip(rgba), masks, seq.camera, torch.device("cpu")))
    err = _err(seq, out.displacements)
    fell_back = [c for c in out.info["selfcheck"]["choice"][1:] if c != "fitted"]
    assert err < 1.1 * static, f"articulated {err:.2f}% vs still {static:.2f}%"
    assert not fell_back or any("fell back" in w for w in out.info["warnings"])


def test_depth_never_runs_away_where_the_silhouette_does_not_change():
    # a textured sphere spinning about its vertical axis: the silhouette never changes, so no
    # output may move it along the camera rays
    sph = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = np.asarray(sph.vertices, np.float32)
    mesh = Mesh(v, np.asarray(sph.faces, np.int32))
    T = 6
    pos = []
    for t in range(T):
        a = np.radians(8.0 * t)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        pos.append(v @ R.T)
    cam = Camera((112, 112), intrinsics(112, 112, 40.0), look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3))[None])
    seq = synthetic.Sequence("spin", mesh, np.stack(pos).astype(np.float32), cam)
    rgba = synthetic.render_sequence(seq)
    masks = rgba[..., 3] > 0
    diag = mesh.bbox_diagonal()
    # candidate: the true spin, but the whole sphere drifting away along the rays and one cap pushed in
    cand = seq.displacements.copy()
    cand += np.linspace(0, 0.8 * diag, T)[:, None, None] * np.array([0, 0, -1.0])  # away from the camera at +z
    cap = v[:, 0] > 0.3
    cand[:, cap, 2] += np.linspace(0, 0.6 * diag, T)[:, None]
    chk = self_check(mesh, cam, rgba[..., :3], masks, cand.astype(np.float32), seed=0)
    for t in range(1, T):
        dz = _depth_change(seq, chk.displacements, t)
        assert abs(dz.mean()) < 0.06 * diag, f"frame {t}: centroid depth moved {dz.mean() / diag:.2f} diag"
    assert any("camera rays" in w or "fell back" in w for w in chk.warnings)
    # the cap alone (whatever hypothesis was chosen): unchanged silhouette scale -> centroid depth
    # within the slack, every vertex's relative depth within rel x the part size
    capped, frac = cap_depth(v, v[None] + cand, np.zeros(len(v), np.int64), cam, np.ones(T), slack=0.03, rel=0.1)
    for t in range(1, T):
        dz = _depth_change(seq, capped - v[None], t)
        assert abs(dz.mean()) < 0.03 * 3.0 + 1e-3 and np.abs(dz - dz.mean()).max() < 0.1 * diag + 0.05 * diag
    assert frac[1:].min() > 0.5
    # end to end through the default engine
    out = _articulated(EngineInput(mesh, _clip(rgba), masks, cam, torch.device("cpu")))
    for t in range(1, T):
        assert abs(_depth_change(seq, out.displacements, t).mean()) < 0.06 * diag


def _figure() -> Mesh:
    """An asymmetric standing figure along +z (its up): body, head, a bent arm, a foot pointing +x."""
    parts = [
        trimesh.creation.box(extents=(0.5, 0.3, 1.0), transform=trimesh.transformations.translation_matrix((0, 0, 0.5))),
        trimesh.creation.icosphere(subdivisions=2, radius=0.22).apply_translation((0, 0, 1.25)),
        trimesh.creation.box(extents=(0.6, 0.15, 0.15), transform=trimesh.transformations.translation_matrix((0.55, 0, 0.85))),
        trimesh.creation.box(extents=(0.15, 0.15, 0.4), transform=trimesh.transformations.translation_matrix((0.8, 0, 1.05))),
        trimesh.creation.box(extents=(0.5, 0.2, 0.12), transform=trimesh.transformations.translation_matrix((0.3, 0, 0.06))),
    ]
    m = trimesh.util.concatenate(parts)
    return Mesh(np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int32))


def test_placement_without_camera_is_upright_with_up_axis():
    mesh = _figure()
    c = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    # world z is up; the camera is raised 15 degrees, three-quarter view, no roll
    az, el = np.radians(35.0), np.radians(15.0)
    eye = c + 3.5 * np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
    cam = Camera((128, 128), intrinsics(128, 128, 40.0), look_at(eye, c, up=np.array([0.0, 0.0, 1.0]))[None])
    seq = synthetic.Sequence("figure", mesh, np.repeat(mesh.vertices[None], 3, 0), cam)
    rgba = synthetic.render_sequence(seq)
    inp = EngineInput(mesh, _clip(rgba), rgba[..., 3] > 0, None, torch.device("cpu"), 0, up_axis=np.array([0.0, 0.0, 1.0]))
    out = _articulated(inp, iters=5, root_iters=5, n_tracks=200)
    true_up = cam.mesh_to_camera[0][:3, :3].T @ np.array([0.0, -1.0, 0.0])  # image-up in mesh coordinates
    est_up = out.camera.mesh_to_camera[0][:3, :3].T @ np.array([0.0, -1.0, 0.0])
    ang = np.degrees(np.arccos(np.clip(true_up @ est_up, -1, 1)))
    assert ang < 20, f"recovered up is {ang:.1f} degrees from the true up"
    assert np.linalg.det(out.camera.mesh_to_camera[0][:3, :3]) > 0  # never mirrored
    assert out.info["camera_iou"] > 0.7
