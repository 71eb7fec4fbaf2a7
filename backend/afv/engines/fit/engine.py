"""FitEngine: the default engine, as named stages over immutable results:
align -> graph (+ pose check) -> rigid prior -> windowed fit -> dense output."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ...camera import Camera
from ...errors import EngineError, InputError
from ...geometry.projection import transform_points
from ...geometry.silhouette import camera_mask_iou
from ...geometry.surface import sample_surface
from ...progress import Progress
from ...tracking.rigid import RigidTrackOptions, track_rigid
from ..base import EngineInput, EngineOutput
from ..selfcheck import self_check
from ...fitting.placement import estimate_pose
from ...fitting.threads import cpu_threads
from .model import DeformationGraph, build_graph
from ...fitting.silhouette import SilhouetteTargets, silhouette_targets
from .solver import Context, Params, PointSet, Schedule, Weights, deformed_vertices, solve, visibility

# a given camera whose first-frame silhouette IoU with the mask is below this cannot be right
CAMERA_MISMATCH_IOU = 0.1


@dataclass
class FitOptions:
    nodes: int = 96  # control nodes of the deformation graph
    k_nn: int = 6  # nodes per vertex
    window: int = 8  # frames per window (tracks are re-seeded per window)
    n_tracks: int = 1500  # flow tracks seeded per window
    frame_iters: int = 40  # optimiser steps per frame (warm-started)
    window_iters: int = 40  # joint refinement steps per window
    extrapolate: bool = False  # warm-start each frame with constant velocity
    arap: float = 1.0  # rigidity weight between neighbouring nodes
    depth: float = 0.02  # prior against non-rigid motion along camera rays
    depth_rigid: float = 0.002  # the same prior on the whole (rigid + non-rigid) motion
    smooth: float = 0.02  # temporal acceleration weight
    silhouette: float = 1.0  # weight of the two silhouette terms (mask inside + mask covered)
    track: float = 1.0  # weight of the flow-track reprojection term
    photo: float = 0.0  # weight of the direct colour term against frame 0 (0 = off; see docs)
    photo_window: bool = True  # use it in the joint window refinement too
    track_anchor: int = 4  # flow from an anchor frame moved every this many frames (1 = chained pairs)
    photo_nonrigid: bool = True  # use it in the non-rigid solve (else only for each part's rigid motion)
    fov_deg: float = 50.0  # assumed vertical field of view when no camera is given
    up_axis: str = "y"  # mesh axis assumed to point up in the image (pose ties): x|y|z|none
    front_axis: str = "z"  # mesh axis assumed to face the camera (second tie-break, weaker): x|y|z|none
    pose_check_frames: int = 0  # estimated camera: rank near-tied poses by a rigid fit of this many frames (0 = off; see docs)
    pose_check_margin: float = 0.8  # ... and switch away from the prior's choice only below this residual ratio
    camera_check: float = 0.5  # warn when the given camera's first-frame silhouette IoU is below
    tol_change: float = 1e-3  # with rigid_init: L-BFGS stops when energy (px^2) / step change less; larger = fewer iterations
    threads: int = 1  # torch CPU threads during the fit (0 = torch's default); its many small ops only lose to thread hand-offs
    rigid_init: str = "auto"  # each part's rigid motion from the rigid tracker (flow + PnP + direct; see docs): on | off | auto (on with a given camera)
    rigid_outline: bool = True  # the rigid tracker's outline term (single-part meshes; several parts share one mask: off)
    rigid_pull: float = 0.0  # with rigid_init: pull of each part's motion towards the tracked one (0 = fixed to it)
    rigid_pull_depth: float = 1.0  # relative weight of that pull along the camera rays
    remainder: float = 0.01  # with rigid_init: pull of the non-rigid remainder towards zero (weak evidence -> rigid)
    selfcheck: bool = True  # check the result against held-out evidence; fall back to rigid / still per frame (engines/selfcheck.py)


def check_options(o: FitOptions) -> None:
    """Raise InputError for option values the fit cannot use (at engine creation, before any work)."""
    if o.rigid_init not in ("auto", "on", "off"):
        raise InputError(f"fit option rigid_init must be auto, on or off, got {o.rigid_init!r}")
    for key in ("up_axis", "front_axis"):
        if getattr(o, key) not in ("x", "y", "z", "none"):
            raise InputError(f"fit option {key} must be x, y, z or none, got {getattr(o, key)!r}")


# ---- stage results (immutable; each stage reads the ones before it) -------------------------


@dataclass(frozen=True)
class Aligned:
    """Stage `align`: the camera the fit uses (T poses, working resolution)."""

    camera: Camera
    estimated: bool
    alternatives: list[np.ndarray] | None  # near-tied (4, 4) poses of an estimated camera, prior order
    info: dict  # camera_iou, camera_estimated, pose_candidates
    warnings: list[str]


@dataclass(frozen=True)
class Problem:
    """Stage `graph`: everything the solver's context is built from, except the camera poses."""

    graph: DeformationGraph
    verts: torch.Tensor  # (N, 3) float32 rest vertices
    faces: torch.Tensor  # (F, 3) int64
    intrinsics: torch.Tensor  # (3, 3) float32 camera K
    surface: PointSet  # area-uniform samples for the silhouette terms
    sil: SilhouetteTargets | None
    schedule: Schedule
    weights: Weights
    node_spacing: float  # mean rest length of the node graph's edges (mesh units)
    size: tuple[int, int]  # (W, H)
    diag: float  # mesh bbox diagonal


@dataclass(frozen=True)
class PoseChoice:
    """Stage `pose check`: which near-tied candidate pose explains the first frames best."""

    camera: Camera
    info: dict  # pose_check scores, pose_choice index


# ---- stages -----------------------------------------------------------------------------------


def mask_warnings(masks: np.ndarray | None, shape: tuple[int, int, int]) -> list[str]:
    """Check masks (T, H, W) for the fit: raise on a wrong shape or an empty first frame; warn
    about empty frames and frames where the object touches the border."""
    if masks is None:
        return []
    if masks.shape != shape:
        raise InputError(f"masks have shape {masks.shape}, expected {shape}")
    T = shape[0]
    warnings = []
    area = masks.reshape(T, -1).sum(1)
    empty = np.nonzero(area < 16)[0]
    if len(empty):
        warnings.append(f"object mask is empty in {len(empty)} frame(s) (first: {int(empty[0])}); motion there is interpolated from neighbours")
    edge = masks[:, 0, :].any(1) | masks[:, -1, :].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    if edge.any():
        warnings.append(f"the object touches the image border in {int(edge.sum())} frame(s) (first: {int(np.argmax(edge))}); parts outside the frame follow their neighbours")
    if area[0] < 16:
        raise InputError("the object mask is empty in the first frame", "start the frame range where the object is visible")
    return warnings


def align(inp: EngineInput, o: FitOptions, progress: Progress) -> Aligned:
    """Check a given camera against the first mask, or estimate one from it.

    Policy (agrees with the pipeline's, docs/contracts.md): a given camera whose first-frame
    silhouette IoU is below `camera_check` is kept with a warning; below 0.1 it cannot be right
    and a camera is estimated instead."""
    T, (W, H) = inp.clip.n_frames, inp.clip.size
    dev = torch.device(inp.device)
    mesh, masks, camera = inp.mesh, inp.masks, inp.camera
    info: dict = {}
    warnings: list[str] = []
    if camera is not None:
        camera = camera.with_frames(T)
        if masks is not None:
            iou = camera_mask_iou(mesh.vertices, mesh.faces, camera.K, camera.pose(0), masks[0], dev)
            info["camera_iou"] = iou
            if iou < o.camera_check:
                if iou < CAMERA_MISMATCH_IOU:
                    warnings.append(f"the given camera does not match the video (first-frame silhouette IoU {iou:.2f}); estimating a camera instead")
                    camera = None
                else:
                    warnings.append(f"the given camera matches the video poorly (first-frame silhouette IoU {iou:.2f}); results may be off")
    if camera is not None:
        progress.update(1.0)
        return Aligned(camera, False, None, info, warnings)
    if masks is None:
        raise EngineError("fit needs object masks to estimate a camera", "pass masks (or a video with alpha), or a camera JSON")
    al = estimate_pose(mesh, masks[0], o.fov_deg, dev, up_axis=o.up_axis, front_axis=o.front_axis, progress=progress, up_vector=inp.up_axis)
    info.update(camera_estimated=True, camera_iou=al.iou, pose_candidates=al.candidates)
    if al.iou < 0.5:
        warnings.append(f"the estimated camera fits the first mask poorly (IoU {al.iou:.2f})")
    progress.update(1.0)
    return Aligned(Camera((W, H), al.K, np.repeat(al.pose[None], T, 0)), True, al.alternatives, info, warnings)


def build_problem(inp: EngineInput, o: FitOptions, K: np.ndarray) -> Problem:
    """The deformation graph, surface samples, silhouette targets, weights and schedule;
    K: (3, 3) intrinsics of the aligned camera."""
    dev = torch.device(inp.device)
    mesh = inp.mesh
    graph = build_graph(mesh, o.nodes, o.k_nn, dev, seed=inp.seed)
    verts = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=dev)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=dev)
    sf, sb = sample_surface(mesh.vertices, mesh.faces, 1500, seed=inp.seed)
    surface = PointSet.make(graph, verts, faces, torch.as_tensor(sf, device=dev), torch.as_tensor(sb, device=dev))
    sil = silhouette_targets(inp.masks, dev, seed=inp.seed) if inp.masks is not None else None
    schedule = Schedule(window=o.window, n_tracks=o.n_tracks, frame_iters=o.frame_iters, window_iters=o.window_iters, extrapolate=o.extrapolate,
                        photo_window=o.photo_window, photo_nonrigid=o.photo_nonrigid, track_anchor=o.track_anchor)
    weights = Weights(track=o.track, inside=o.silhouette, cover=o.silhouette, arap=o.arap, depth=o.depth, depth_rigid=o.depth_rigid, acc=o.smooth, photo=o.photo)
    e = graph.edges
    spacing = float((graph.nodes[e[:, 0]] - graph.nodes[e[:, 1]]).norm(dim=-1).mean()) if len(e) else mesh.bbox_diagonal() / 4
    return Problem(graph, verts, faces, torch.as_tensor(K, dtype=torch.float32, device=dev), surface, sil, schedule, weights,
                   spacing, inp.clip.size, mesh.bbox_diagonal())


def make_context(pb: Problem, poses: np.ndarray, n: int, schedule: Schedule | None = None, weights: Weights | None = None,
                 rigid_prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> Context:
    """The solver's context for the first n frames under mesh-to-camera poses (>= n, 4, 4)."""
    poses_t = torch.as_tensor(poses[:n], dtype=torch.float32, device=pb.verts.device)
    depth = transform_points(pb.verts[None], poses_t[:1])[0, :, 2]
    if not bool((depth > 0).any()):
        raise EngineError("the mesh is behind the camera in the first frame", "check the camera's mesh_to_camera")
    px = float(pb.intrinsics[0, 0]) / float(depth[depth > 0].median())
    sil = pb.sil
    s_n = None if sil is None else SilhouetteTargets(*(x[:n] for x in (sil.dist_out, sil.samples, sil.sample_w, sil.frame_w, sil.area, sil.touches_border)))
    return Context(graph=pb.graph, verts=pb.verts, faces=pb.faces, intrinsics=pb.intrinsics, poses=poses_t, size=pb.size, sil=s_n, surface=pb.surface,
                   px=px, diag=pb.diag, weights=pb.weights if weights is None else weights,
                   schedule=pb.schedule if schedule is None else schedule, rigid_prior=rigid_prior,
                   node_spacing=pb.node_spacing)


def choose_pose(pb: Problem, al: Aligned, o: FitOptions, frames: np.ndarray, masks: np.ndarray, progress: Progress) -> PoseChoice:
    """Symmetric silhouettes: keep the candidate pose whose per-part rigid motion best explains
    the first frames' flow tracks and masks."""
    T = len(frames)
    n = min(T, o.pose_check_frames + 1)
    scores = []
    for M in al.alternatives:
        c = make_context(pb, np.repeat(M[None], n, 0), n, replace(pb.schedule, window=n, rigid_only=True, rigid_iters=20))
        solve(c, frames[:n], masks[:n], None, [])
        tt = c.stats["rigid_terms"]
        scores.append(float(np.mean([d.get("track", 0.0) + d.get("inside", 0.0) + d.get("cover", 0.0) for d in tt])))
        progress.check()
    # the fit residuals differ little between symmetric poses and a wrong switch is
    # costly: override the orientation prior (candidate 0) only on clear evidence
    best = int(np.argmin(scores))
    if scores[best] > o.pose_check_margin * scores[0]:
        best = 0
    camera = Camera(al.camera.image_size, al.camera.K, np.repeat(al.alternatives[best][None], T, 0))
    return PoseChoice(camera, {"pose_check": [round(x, 3) for x in scores], "pose_choice": best})


def dense_output(ctx: Context, state: Params, support: np.ndarray, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex displacements (T, N, 3) and confidence (T, N) from the fitted params:
    confidence mixes visibility and track support, halved where the mask is missing."""
    g, verts = ctx.graph, ctx.verts
    T, N = len(ctx.poses), len(verts)
    disp = np.zeros((T, N, 3), np.float32)
    conf = np.ones((T, N), np.float32)
    w_np = g.w.cpu().numpy()
    i_np = g.idx.cpu().numpy()
    for t in range(1, T):
        v = deformed_vertices(ctx, state.take(slice(t, t + 1)))[0]
        vis, _ = visibility(ctx, v, t)
        disp[t] = (v - verts).cpu().numpy()
        sup = (support[t][i_np] * w_np).sum(1)
        conf[t] = np.clip(0.3 + 0.4 * vis.cpu().numpy() + 0.3 * sup, 0, 1)
        if ctx.sil is not None and float(ctx.sil.frame_w[t]) == 0:
            conf[t] *= 0.5
        progress.update(t / max(T - 1, 1))
    if not np.isfinite(disp).all():
        raise EngineError("the fit diverged (non-finite displacements)", "try more nodes or a higher arap weight")
    return disp, conf


class FitEngine:
    name = "fit"
    stages = {"align": 0.1, "graph": 0.05, "rigid": 0.1, "fit": 0.6, "output": 0.05, "check": 0.1}

    def __init__(self, options: FitOptions | None = None) -> None:
        self.options = options or FitOptions()
        check_options(self.options)

    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        with cpu_threads(torch.device(inp.device), self.options.threads):
            return self._run(inp, progress)

    def _run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        """align -> graph (+ pose check) -> rigid prior -> fit -> output."""
        o = self.options
        torch.manual_seed(inp.seed)
        clip, masks = inp.clip, inp.masks
        T = clip.n_frames
        warnings = mask_warnings(masks, (T, clip.size[1], clip.size[0]))

        progress.start("align")
        al = align(inp, o, progress)
        warnings += al.warnings
        info: dict = {"warnings": warnings, **al.info}

        progress.start("graph")
        pb = build_problem(inp, o, al.camera.K)
        camera = al.camera
        if al.alternatives is not None and len(al.alternatives) > 1 and o.pose_check_frames >= 2 and T >= 3:
            choice = choose_pose(pb, al, o, clip.frames, masks, progress)
            camera = choice.camera
            info.update(choice.info)
        progress.update(1.0)

        # the tracker takes frame 0's pose as exact: with an estimated camera (assumed FOV, pose
        # a few degrees off) its fixed rigid track was worse than the fit's own (multi_part 2.0 -> 3.0 %)
        prior = None
        if T >= 2 and (o.rigid_init == "on" or (o.rigid_init == "auto" and not al.estimated)):
            progress.start("rigid")
            prior = rigid_prior(inp.mesh, pb.graph, camera.with_frames(T), clip.frames, masks, torch.device(inp.device), progress, o.rigid_outline)
        if prior is None:
            ctx = make_context(pb, camera.with_frames(T).mesh_to_camera, T)
        else:
            # started at the tracked rigid motion the fit is near its optimum: stop L-BFGS once it
            # stalls (5-10x fewer evaluations, same accuracy); without the prior the full budget is needed
            ctx = make_context(pb, camera.with_frames(T).mesh_to_camera, T, replace(pb.schedule, tol_change=o.tol_change),
                               replace(pb.weights, remainder=o.remainder, rigid_pull=o.rigid_pull, rigid_pull_depth=o.rigid_pull_depth), prior)

        progress.start("fit")
        state, support = solve(ctx, clip.frames, masks, progress, warnings)

        progress.start("output")
        disp, conf = dense_output(ctx, state, support, progress)
        # bound the output: nothing may move further than a few object sizes
        lim = 3.0 * inp.mesh.bbox_diagonal()
        if np.abs(disp).max() > lim:
            warnings.append("the fit produced implausibly large motion; it was clipped")
            np.clip(disp, -lim, lim, out=disp)
        info.update(nodes=pb.graph.n_nodes, parts=pb.graph.n_islands, px_per_unit=ctx.px, energies=ctx.stats)
        progress.start("check")
        if o.selfcheck and T >= 2:
            chk = self_check(inp.mesh, camera, clip.frames, masks, disp, conf, seed=inp.seed, label="the fit")
            disp, conf = chk.displacements, chk.confidence
            warnings.extend(chk.warnings)
            info["selfcheck"] = chk.info()
        progress.update(1.0)
        return EngineOutput(displacements=disp, confidence=conf, camera=camera, info=info)


class _PartProgress:
    """Maps part i of n's per-frame progress (and cancel checks) onto the current stage."""

    def __init__(self, progress: Progress, i: int, n: int) -> None:
        self.progress, self.i, self.n = progress, i, n

    def update(self, fraction: float) -> None:
        self.progress.update((self.i + fraction) / self.n)


def rigid_prior(mesh, graph, camera: Camera, frames: np.ndarray, masks: np.ndarray | None, dev: torch.device, progress: Progress, outline: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each connected part's rigid motion through the clip from the rigid engine's tracker
    (afv.tracking.rigid: flow + PnP + direct colour/outline refinement), as the fit's global parameters
    (grot, gtr) each (T, I, 3): x' = Rg (x - c_i) + c_i + tg. Several parts share one mask,
    so their outline term is off (it would pull a part onto the union's boundary)."""
    T, I = len(frames), graph.n_islands
    island = graph.island.cpu().numpy()
    centres = graph.centres.cpu().numpy().astype(np.float64)
    grot = np.zeros((T, I, 3), np.float32)
    gtr = np.zeros((T, I, 3), np.float32)
    rest = mesh.vertices.astype(np.float64)
    C_inv = np.linalg.inv(camera.mesh_to_camera)
    for i in range(I):
        if I == 1:
            v, f, opts = rest, mesh.faces, RigidTrackOptions(silhouette_weight=1.0 if outline else 0.0)
        else:
            keep = island[mesh.faces[:, 0]] == i
            used = np.unique(mesh.faces[keep])
            remap = np.full(len(rest), -1, np.int64)
            remap[used] = np.arange(len(used))
            v, f, opts = rest[used], remap[mesh.faces[keep]], RigidTrackOptions(silhouette_weight=0.0)
        try:
            P = track_rigid(v, f, camera, frames, masks, dev, opts, _PartProgress(progress, i, I)).poses
        except (InputError, EngineError):
            continue  # too small to track: the fit solves this part's motion alone (prior = rest)
        A = C_inv @ P
        A = A @ np.linalg.inv(A[0])
        grot[:, i] = Rotation.from_matrix(A[:, :3, :3]).as_rotvec()
        gtr[:, i] = np.einsum("tab,b->ta", A[:, :3, :3], centres[i]) + A[:, :3, 3] - centres[i]
        progress.update((i + 1) / I)
    return torch.as_tensor(grot, device=dev), torch.as_tensor(gtr, device=dev)
