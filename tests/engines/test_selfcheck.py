"""Self-check and fallback (afv.engines.selfcheck), wired into `articulated`; upright placement.

Ground truth by construction: clips rendered from known motion with afv_dev.synthetic; the
candidate and rigid motions handed to the self-check are built from that truth (plus known
corruption).
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from afv_dev import synthetic
from afv.camera import Camera, intrinsics, look_at
from afv.engines import get_engine_spec
from afv.engines.base import EngineInput
from afv.engines.rigid import blend_towards_rest
from afv.engines.selfcheck import blend_weights, decide, depth_shift, held_out_tracks, self_check
from afv.mesh import Mesh
from afv.progress import Progress
from afv.geometry.raster import rasterize
from afv.video import VideoClip

FAST = dict(iters=80, root_iters=30, n_surface=800, n_tracks=400)


def _articulated(inp: EngineInput, **opts):
    """The default engine, through the registry, with fewer steps than its defaults."""
    eng = get_engine_spec("articulated").create({**FAST, **opts})
    return eng.run(inp, Progress(eng.stages))


def _rigid(inp: EngineInput):
    """The rigid baseline engine, through the registry."""
    eng = get_engine_spec("rigid").create({})
    return eng.run(inp, Progress(eng.stages))


def _clip(rgba: np.ndarray) -> VideoClip:
    T, H, W = rgba.shape[:3]
    return VideoClip(np.ascontiguousarray(rgba[..., :3]), None, np.arange(T, dtype=np.int32), 24.0, (W, H), 1.0)


def _err(seq, disp) -> float:
    return float(np.linalg.norm(disp - seq.displacements, axis=-1).mean() / seq.mesh.bbox_diagonal() * 100)


def _blended(rest: np.ndarray, rigid: np.ndarray, cand: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(T, N, 3) displacements an engine returns when it applies the check's weights (3, T) to
    vertex positions: still (rest), rigid (T, N, 3), candidate displacements (T, N, 3)."""
    pos = w[0][:, None, None] * rest[None] + w[1][:, None, None] * rigid + w[2][:, None, None] * (rest[None] + cand)
    return pos - rest[None]


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


def test_decide_is_simplest_within_margin_and_cross_fades():
    cost = np.array([[0, 5, 5, 5, 5, 5.0], [0, 0.5, 0.4, 0.6, 0.5, 0.5], [0, 0.1, 0.0, 0.2, 0.1, 0.1]])
    # rigid is within the margin of the fit: the simpler wins; still is far worse everywhere
    assert decide(cost, margin=1.0, smooth=0.0, min_run=1)[1:].tolist() == [1] * 5
    # beyond the margin the fit wins
    assert decide(cost * np.array([[1], [4], [1.0]]), margin=1.0, smooth=0.0, min_run=1)[1:].tolist() == [2] * 5
    flick = np.array([[9, 9, 9, 0, 9, 9.0], [9] * 6, [0, 0, 0, 9, 0, 0.0]])
    # a one-frame blip is absorbed by its neighbours (no flicker)
    assert decide(flick, margin=1.0, smooth=0.0, min_run=3).tolist() == [2] * 6
    # ... unless it wins clearly: hysteresis smooths close calls, it does not overrule evidence
    # (a loop's last frame back at rest: still wins there by many units)
    assert decide(flick, margin=1.0, smooth=0.0, min_run=3, keep=3.0).tolist() == [2, 2, 2, 0, 2, 2]
    close = np.array([[9, 9, 9, 0, 9, 9.0], [9] * 6, [0, 0, 0, 2, 0, 0.0]])
    assert decide(close, margin=1.0, smooth=0.0, min_run=3, keep=3.0).tolist() == [2] * 6
    end = np.array([[9, 9, 9, 9, 9, 0.0], [9] * 6, [0, 0, 0, 0, 0, 8.0]])
    assert decide(end, margin=1.0, smooth=0.0, min_run=3, keep=3.0).tolist() == [2, 2, 2, 2, 2, 0]
    # a switch from fitted to still at frame 4 cross-fades over 2 frames each side
    w = blend_weights(np.array([2, 2, 2, 2, 0, 0, 0, 0]), 2)
    np.testing.assert_allclose(w.sum(0), 1.0)
    np.testing.assert_allclose(w[2], [1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0])
    np.testing.assert_allclose(w[1], 0.0)


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
    # its rigid hypothesis is as lost: the rest pose run off in depth
    lost = (rest[None] + np.linspace(0, 1.5, 6)[:, None, None] * np.array([0, 0, 1.0])).astype(np.float32)
    chk = self_check(seq.mesh, seq.camera, rgba[..., :3], masks, garbage, rigid_positions=lost, label="the test fit", seed=0)
    assert (chk.choice[1:] == 0).all(), chk.info()
    assert any("fell back to still" in w and "the test fit" in w for w in chk.warnings), chk.warnings
    np.testing.assert_allclose(chk.weights.sum(0), 1.0)
    assert _err(seq, _blended(rest, lost, garbage, chk.weights)) <= static + 1e-4 < _err(seq, garbage)
    assert chk.confidence.shape == garbage.shape[:2] and chk.confidence[1:].max() <= 0.2 + 1e-6  # still keeps no detail
    # a right rigid hypothesis (the motion is rigid): kept instead of the garbage, and better than still
    chk = self_check(seq.mesh, seq.camera, rgba[..., :3], masks, garbage, rigid_positions=seq.positions, label="the test fit", seed=0)
    assert (chk.choice[1:] == 1).all() and (chk.iou[1, 1:] > 0.95).all(), chk.info()
    assert _err(seq, _blended(rest, seq.positions, garbage, chk.weights)) < 0.01 * static
    # end to end: the default engine on this clip returns no worse than the still mesh, and says so if it fell back
    out = _articulated(EngineInput(seq.mesh, _clip(rgba), masks, seq.camera, torch.device("cpu")))
    err = _err(seq, out.displacements)
    fell_back = [c for c in out.info["selfcheck"]["choice"][1:] if c != "fitted"]
    assert err < 1.1 * static, f"articulated {err:.2f}% vs still {static:.2f}%"
    assert not fell_back or any("fell back" in w for w in out.info["warnings"])
    # and the rigid engine, whose tracker loses this clip, is checked the same way
    out = _rigid(EngineInput(seq.mesh, _clip(rgba), masks, seq.camera, torch.device("cpu")))
    err = _err(seq, out.displacements)
    fell_back = [c for c in out.info["selfcheck"]["choice"][1:] if c == "still"]
    assert err < 1.1 * static, f"rigid {err:.2f}% vs still {static:.2f}%"
    assert not fell_back or any("fell back" in w for w in out.info["warnings"])


def _sphere_clip(T: int, motion) -> tuple[Mesh, Camera, synthetic.Sequence, np.ndarray]:
    """A textured sphere (radius 0.5) 3 units in front of a 112 px camera; motion(t, v) -> (N, 3)."""
    sph = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = np.asarray(sph.vertices, np.float32)
    mesh = Mesh(v, np.asarray(sph.faces, np.int32))
    cam = Camera((112, 112), intrinsics(112, 112, 40.0), look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3))[None])
    seq = synthetic.Sequence("sphere", mesh, np.stack([motion(t, v) for t in range(T)]).astype(np.float32), cam)
    return mesh, cam, seq, synthetic.render_sequence(seq)


def test_scale_measures_motion_along_the_rays():
    # the sphere approaches the camera from 3.0 to 2.4 units: its image grows by 3 / 2.4 = 1.25 x
    T = 5
    mesh, cam, seq, rgba = _sphere_clip(T, lambda t, v: v + np.array([0, 0, 0.15 * t]))
    chk = self_check(mesh, cam, rgba[..., :3], rgba[..., 3] > 0, seq.displacements, rigid_positions=seq.positions, label="the fit", seed=0)
    # a sphere's outline is a circle of radius ~ f r / sqrt(d^2 - r^2): its area ratio, not just d0 / d
    d = 3.0 - 0.15 * np.arange(T)
    truth = np.sqrt(3.0**2 - 0.25) / np.sqrt(d**2 - 0.25)
    np.testing.assert_allclose(chk.scale, truth, rtol=0.03)
    assert (chk.choice[1:] == 1).all()  # the true rigid motion explains it: simplest within the margin


def test_depth_never_runs_away_where_the_silhouette_does_not_change():
    # a textured sphere spinning about its vertical axis: the silhouette never changes, so no
    # output may move it along the camera rays
    T = 6

    def spin(t, v):
        a = np.radians(8.0 * t)
        return v @ np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]).T

    mesh, cam, seq, rgba = _sphere_clip(T, spin)
    masks = rgba[..., 3] > 0
    diag = mesh.bbox_diagonal()
    chk = self_check(mesh, cam, rgba[..., :3], masks, seq.displacements, rigid_positions=seq.positions, label="the fit", seed=0)
    np.testing.assert_allclose(chk.scale, 1.0, atol=0.01)  # what the engine clamps its depth with
    # end to end through the default engine: its root depth stays where the silhouette says
    for engine in (_articulated, _rigid):
        out = engine(EngineInput(mesh, _clip(rgba), masks, cam, torch.device("cpu")))
        for t in range(1, T):
            dz = _depth_change(seq, out.displacements, t)
            assert abs(dz.mean()) < 0.06 * diag, f"{engine.__name__} frame {t}: centroid depth moved {dz.mean() / diag:.2f} diag"


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


def test_depth_shift_slides_along_the_ray_within_the_silhouette_scale():
    cam = look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3))  # the origin 3 units in front
    M = np.repeat(cam[None], 3, 0)
    ray = cam[:3, :3].T @ np.array([0.0, 0.0, 1.0])  # the camera's forward axis in mesh coordinates
    far = 1.5 * 3.0 - 3.0  # frame 1: the centroid at 1.5 z0; frame 2: 0.6 z0 (nearer)
    cen = np.stack([np.zeros(3), far * ray, -1.2 * ray])
    back = cen + depth_shift(cen, M, np.ones(3))
    depth = back @ cam[2, :3] + cam[2, 3]
    np.testing.assert_allclose(depth, [3.0, 3.0 * 1.03, 3.0 * 0.97], rtol=1e-9)  # an unchanged silhouette: z0 +- 3 %
    grown = cen + depth_shift(cen, M, np.array([1.0, 1.25, 1.25]))  # grown 1.25x: nearer allowed, to z0 / 1.25
    np.testing.assert_allclose(grown @ cam[2, :3] + cam[2, 3], [3.0, 3.0 * 1.03, 3.0 / 1.25 - 0.09], rtol=1e-9)
    off = np.array([[0.0, 0, 0], [0.3, 0.2, 0.0] + far * ray, [0.0, 0, 0]])  # off the optical axis: moved along its own ray
    s = depth_shift(off, M, np.ones(3))[1]
    c_cam = cam[:3, :3] @ off[1] + cam[:3, 3]
    np.testing.assert_allclose(np.cross(cam[:3, :3] @ s, c_cam), 0, atol=1e-12)
    assert not depth_shift(cen, M, None).any()  # no masks: nothing is known, nothing moves
    behind = np.stack([np.zeros(3), -5.0 * ray, np.zeros(3)])  # behind the camera: no ray to slide along
    assert np.isfinite(depth_shift(behind, M, np.ones(3))).all() and not depth_shift(behind, M, np.ones(3))[1].any()


def test_a_rigid_candidate_competes_with_the_still_mesh_only_and_uses_given_tracks():
    T = 5
    mesh, cam, seq, rgba = _sphere_clip(T, lambda t, v: v + np.array([0.06 * t, 0, 0]))
    masks = rgba[..., 3] > 0
    asked = []

    def held_out():
        asked.append(1)
        return held_out_tracks(mesh, cam, rgba[..., :3], masks, 400, 0)

    chk = self_check(mesh, cam, rgba[..., :3], masks, seq.displacements, rigid_positions=None, label="the track", seed=0, held_out=held_out)
    assert asked == [1]  # the tracks computed ahead are used, not computed again
    assert (chk.weights[1] == 0).all() and (chk.choice[1:] == 2).all(), chk.info()  # the true motion is kept
    assert all(x is None for x in chk.info()["iou"]["rigid"])  # never judged, so not reported
    wrong = seq.displacements + np.array([0, 0, 0.5], np.float32) * np.arange(T)[:, None, None] / T  # run off along the ray
    chk = self_check(mesh, cam, rgba[..., :3], masks, wrong * 0 + np.array([0.3, 0.3, 0], np.float32) * (np.arange(T) > 0)[:, None, None],
                     rigid_positions=None, label="the track", seed=0)
    assert (chk.choice[1:] == 0).all() and any("fell back to still" in w for w in chk.warnings), chk.info()


def test_rigid_blend_towards_rest_moves_the_centre_between_the_hypotheses():
    c = np.array([1.0, 0.0, 0.0])
    A = np.eye(4)
    A[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # 90 degrees about z through the origin
    A[:3, 3] = c - A[:3, :3] @ c  # ... made a turn about c: c stays put
    out = blend_towards_rest(A[None].repeat(3, 0), np.array([0.0, 0.5, 1.0]), c)
    np.testing.assert_allclose(out[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(out[2], A, atol=1e-12)
    np.testing.assert_allclose(out[1, :3, :3] @ c + out[1, :3, 3], c, atol=1e-12)  # half way: still about c
    assert abs(np.degrees(np.arccos((np.trace(out[1, :3, :3]) - 1) / 2)) - 45.0) < 1e-9


def test_rigid_without_masks_keeps_motion_along_the_ray():
    # no masks: no silhouette scale, so the depth bound must not pin the object (it used to: 13 % error)
    T = 5
    mesh, cam, seq, rgba = _sphere_clip(T, lambda t, v: v + np.array([0, 0, 0.15 * t]))
    out = _rigid(EngineInput(mesh, _clip(rgba), None, cam, torch.device("cpu")))
    still = _err(seq, 0 * seq.displacements)
    assert _err(seq, out.displacements) < 0.1 * still, (_err(seq, out.displacements), still)
