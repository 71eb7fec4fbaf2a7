"""ArticulatedEngine: per-frame bone rotations + root translation fitted to the video.

1. Rig: the mesh's own (inp.mesh.rig), else the automatic skeleton (afv.deform.skeleton)
   when available, else one root bone (rigid motion). Bone lengths are kept by construction
   (forward kinematics), which removes most of the depth ambiguity: limbs cannot leave.
2. Camera: given, or estimated from the first mask (upright with the request's up_axis).
3. Evidence per window of `window` frames: flow tracks seeded at frame 0 and re-seeded at each
   window's first frame on the surface visible in the current estimate (z-buffer lift),
   silhouettes both ways (projected surface samples inside the mask; mask samples covered).
4. Solver: all frames of a window in one batched Adam solve over (W, B, 3) axis-angles and
   (W, 3) root translations (root first, then every bone), fixed iteration counts, no host
   syncs inside the loop (on a GPU each step is one replayed CUDA graph: fitting/optim.py);
   warm start from the previous window's last frame. Priors: rest pose, the root's depth, and
   for automatic skeletons the surface's motion along the view rays.
5. Flips: for bones whose fit is poor, the rotation mirrored about the view ray is tried and
   kept where it explains the evidence better (front/back ambiguity of a limb).
6. Self-check (engines/selfcheck.py) against held-out tracks and silhouettes; fallback to the
   root-only (rigid) or still hypothesis is done on the bone parameters, so the returned
   bone rotations always reproduce the returned vertex tracks through LBS.
7. Retargeting (the request's first_pose): frame 0 posed on the first silhouette, and each
   window's anchor frame posed afresh where the continued pose has lost the silhouette.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ...camera import Camera
from ...deform.skeleton import auto_rig
from ...deform.kinematics import RigTensors, axis_angle_to_matrix, axis_angle_to_quaternion, fk, matrix_to_axis_angle
from ...errors import EngineError, InputError
from ...flow import track_points
from ...progress import Progress
from ...mesh import Mesh
from ...rig import Rig
from ...geometry.projection import project_points, transform_points
from ...geometry.raster import rasterize
from ...geometry.surface import sample_surface
from ..base import EngineInput, EngineOutput
from ...fitting import energies as E
from ...fitting.optim import Adam, run_steps
from ...fitting.placement import estimate_pose
from ...fitting.threads import cpu_threads
from ...fitting.silhouette import SilhouetteTargets, silhouette_targets
from ..selfcheck import HeldOutTracks, SelfCheckOptions, blend_weights, decide, depth_shift, held_out_tracks, self_check
from .model import PointMap, node_weights, points, pose_rig, single_bone_rig


@dataclass
class ArticulatedOptions:
    window: int = 8  # frames solved jointly (tracks re-seeded at each window's start)
    iters: int = 120  # Adam steps per window on every bone (joint refinement)
    frame_iters: int = 60  # with sequential: Adam steps per frame alone on every bone
    root_iters: int = 40  # Adam steps on the root (rigid) motion first
    lr_rot: float = 0.03  # radians per step (Adam)
    lr_root: float = 1.0  # pixels per step (root translation, scaled by depth / focal)
    n_surface: int = 1500  # surface samples for the silhouette terms
    n_tracks: int = 600  # flow tracks seeded per window
    track: float = 1.0  # weight of the flow-track reprojection term (px^2)
    silhouette: float = 1.0  # weight of the two silhouette terms (px^2)
    smooth: float = 0.01  # weight of the pixel velocity of surface samples between frames
    rest: float = 0.5  # pull of bone rotations towards the rest pose (x object size in px, squared)
    residual: float = 0.3  # weight of the non-rigid residual's size (per px-equivalent^2 of node offset; 0 = off); not used with a given rig (its bones must reproduce the tracks)
    residual_nodes: int = 32  # nodes of the residual (farthest-point landmarks, geodesic weights)
    residual_iters: int = 60  # Adam steps per window on the residual, bones held
    lr_residual: float = 0.5  # pixels per step (residual node offsets at the object's depth)
    ray: float = 0.1  # pull of the surface's motion along the view rays, the object's mean depth change apart (px-equivalent^2): parts and the body turning towards or away from the camera show only as foreshortening. Automatic skeletons of 2+ bones only: a given rig's joints bound it, a rigid object turns freely (docs/engine_articulated.md)
    depth: float = 0.2  # pull of the root's motion along the camera ray back to its first-frame depth (per px-equivalent^2): depth shows only as scale, ~5x weaker than sideways motion, so it moves only where the evidence insists
    sequential: bool = False  # solve each frame alone first (warm start from the previous), then the window (better with oracle tracks, worse with flow: docs)
    flips: bool = True  # try each poorly fitted bone's rotation mirrored about the view ray
    skeleton: str = "auto"  # auto: the mesh's rig, else an automatic skeleton; rigid: one bone
    fov_deg: float = 50.0  # assumed vertical field of view when no camera is given
    selfcheck: bool = True  # check against held-out evidence; fall back to rigid / still per frame
    part_check: bool = True  # with selfcheck: also per part (each bone's rotation against its part held at rest, on held-out tracks); not with first_pose
    threads: int = 1  # torch CPU threads (0 = torch's default)
    cuda_graphs: bool = True  # on a GPU, each fit step replays one captured CUDA graph (the steps are launch-bound)
    first_iters: int = 300  # with the request's first_pose: Adam steps on frame 0's limbs (silhouette only)
    reanchor: float = 0.65  # with the request's first_pose (retargeting) only: re-pose each window's anchor frame afresh on its silhouette (root turned about the up axis, limbs from rest) where that explains the silhouette this much better than the continued pose (energy ratio; 0 = off). Not without first_pose: a better silhouette is not a better 3D pose (docs/engine_articulated.md)
    reanchor_iters: int = 120  # Adam steps of that fresh pose (root phase: root_iters)
    reanchor_back: int = 7  # after a taken re-anchoring, up to this many frames before it solved again backwards from the fresh pose (0: off; the motion jumps there)
    reanchor_back_ratio: float = 0.8  # ... each replacing the continued pose only where its silhouette energy is below this x the continued one's (1.0 kept frames the tracks had fitted: turning figure 3D error 1.88 -> 2.13 % on frames 1-7)


@dataclass
class _Problem:
    """What every window's solve shares, fixed for one run (set up in the rig stage)."""

    rig: Rig
    source: str  # where the rig came from: "given", "automatic" or "rigid"
    rt: RigTensors
    verts: torch.Tensor  # (N, 3) rest vertices, on the engine's device
    faces: torch.Tensor  # (F, 3) int64, on the engine's device
    nw: np.ndarray | None  # (N, K) the residual's node weights; None: no residual
    surf: PointMap  # surface samples (silhouette, smoothness and ray terms)
    sil: SilhouetteTargets | None  # per-frame silhouette targets; None without masks
    K: torch.Tensor  # (3, 3) intrinsics
    poses: torch.Tensor  # (T, 4, 4) mesh-to-camera per frame
    roots: torch.Tensor  # (B,) bool: root bones
    unit_px: float  # pixels per mesh unit at the object's first-frame depth
    obj_px: float  # the object's bounding-box diagonal in pixels
    ray: float  # weight of the pull along the view rays (0: off)
    retarget: bool  # the request's first_pose, with masks: frame 0 posed, windows re-anchored, no per-part check

    @cached_property
    def nw_t(self) -> torch.Tensor | None:
        """The residual's node weights (N, K) on the engine's device (uploaded once)."""
        return None if self.nw is None else torch.as_tensor(self.nw, device=self.verts.device)

    @cached_property
    def centroid(self) -> PointMap:
        """The rest mesh's vertex centroid as one skinned point: LBS is linear, so the posed
        centroid is sum_b A_b u_b + s_b t_b with u, s the vertex means (no pass over the vertices)."""
        W = torch.as_tensor(self.rig.dense_weights(), dtype=torch.float32, device=self.verts.device)  # (N, B)
        return PointMap((W[:, :, None] * self.verts[:, None, :]).mean(0)[None], W.mean(0)[None])


@dataclass
class _Motion:
    """The unknowns per frame (frame 0 is the rest pose unless the request asked for first_pose)."""

    rot: torch.Tensor  # (T, B, 3) local bone rotations, axis-angle
    root: torch.Tensor  # (T, 3) root translation, mesh units
    delta: torch.Tensor  # (T, K, 3) residual node offsets, px-equivalent at the object's depth (K >= 1; unused without a residual)


class ArticulatedEngine:
    name = "articulated"
    stages = {"align": 0.1, "rig": 0.1, "fit": 0.65, "check": 0.1, "output": 0.05}

    def __init__(self, options: ArticulatedOptions | None = None) -> None:
        self.options = options or ArticulatedOptions()

    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        with cpu_threads(torch.device(inp.device), self.options.threads):
            return self._run(inp, progress)

    # ------------------------------------------------------------------ setup

    def _camera(self, inp: EngineInput, masks, info, warnings, progress, dev) -> Camera:
        o = self.options
        mesh, clip = inp.mesh, inp.clip
        T, (W, H) = clip.n_frames, clip.size
        camera = inp.camera  # checked against the first mask by the pipeline (docs/contracts.md)
        if camera is not None:
            camera = camera.with_frames(T)
        else:
            if masks is None:
                raise EngineError("articulated needs object masks to estimate a camera", "pass masks (or a video with alpha), or a camera JSON")
            al = estimate_pose(mesh, masks[0], o.fov_deg, dev, progress=progress, up_vector=inp.up_axis)
            poses = np.repeat(al.pose[None], T, 0)
            if inp.camera_motion is not None and len(inp.camera_motion.world_to_cam) == T:
                # the camera's own motion (pan, dolly) from the background: M_t = world_to_cam[t] @ M_0,
                # so it is not baked into the object's motion (docs/contracts.md)
                poses = inp.camera_motion.world_to_cam @ al.pose
                info["camera_motion"] = inp.camera_motion.model
            camera = Camera((W, H), al.K, poses)
            info.update(camera_estimated=True, camera_iou=al.iou)
            if al.iou < 0.5:
                warnings.append(f"the estimated camera fits the first mask poorly (IoU {al.iou:.2f})")
        return camera

    def _rig_source(self, mesh: Mesh) -> str:
        if self.options.skeleton == "rigid":
            return "rigid"
        return "given" if mesh.rig is not None else "automatic"

    def _rig(self, mesh: Mesh, source: str, progress: Progress) -> Rig:
        if source == "rigid":
            return single_bone_rig(mesh)
        return mesh.rig if source == "given" else auto_rig(mesh, progress=progress.update)

    # ------------------------------------------------------------------ main

    def _run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        o = self.options
        if o.skeleton not in ("auto", "rigid"):
            raise InputError(f"articulated option skeleton must be auto or rigid, got {o.skeleton!r}")
        torch.manual_seed(inp.seed)
        dev = torch.device(inp.device)
        T = inp.clip.n_frames
        warnings: list[str] = []
        info: dict = {"warnings": warnings}
        masks = self._checked_masks(inp, warnings)

        progress.start("align")
        camera = self._camera(inp, masks, info, warnings, progress, dev)
        progress.update(1.0)

        progress.start("rig")
        # host work that needs no fit result runs beside the rig and the fit (threads: OpenCV's
        # flow and most of the geodesic and sparse work release the GIL): the self-check's
        # held-out flow tracks, and the residual's geodesic node weights. Both stay on the host
        # (the fit may be capturing a CUDA graph meanwhile); the flow stops early when the job ends.
        check = SelfCheckOptions()
        pool, done = ThreadPoolExecutor(2, thread_name_prefix="afv-articulated"), threading.Event()
        try:
            def hold_out(vertices0=None):
                return pool.submit(held_out_tracks, inp.mesh, camera, inp.clip.frames, masks, check.n_tracks, inp.seed, done.is_set,
                                   vertices0) if o.selfcheck and T >= 2 else None

            held_out = None if inp.first_pose and masks is not None else hold_out()  # retargeting: bound to frame 0's pose, below
            pb = self._setup(inp, camera, masks, pool, progress, dev)
            info.update(rig=pb.source, bones=pb.rig.n_bones, residual_nodes=0 if pb.nw is None else pb.nw.shape[1])
            progress.update(1.0)

            progress.start("fit")
            motion = self._motion(pb, T)
            if pb.retarget:
                # frame 0 posed to the first silhouette; the held-out tracks are then bound to that pose
                info["first_pose"] = self._fit_first(pb, motion, progress)
                with torch.no_grad():
                    v0 = pb.rt.pose(pb.verts, axis_angle_to_matrix(motion.rot[:1]), motion.root[:1])[0]
                held_out = hold_out(v0.cpu().numpy())
            elif inp.first_pose:
                warnings.append("first_pose needs object masks: frame 0 stays the rest pose")
            info["windows"] = self._fit(inp, pb, camera, masks, motion, progress)
            taken = [w["reanchor"] for w in info["windows"] if w.get("reanchor", {}).get("taken")]
            if taken:  # the frames solved backwards move the seam to the first of them
                seams = [min(r.get("solved_back") or [r["frame"]]) for r in taken]
                warnings.append(f"retargeting: the pose was found again from the silhouette at frame(s) {[r['frame'] for r in taken]} "
                                f"after the track drifted; the motion may jump at frame(s) {seams}")

            progress.start("check")
            motion, conf = self._check(inp, pb, camera, masks, motion, held_out, check, info, warnings)
            progress.update(1.0)
        finally:  # on an error or a cancel too: a running flow stops at its next frame pair
            done.set()
            pool.shutdown(wait=False, cancel_futures=True)

        progress.start("output")
        out = self._output(inp, pb, camera, motion, conf, info)
        progress.update(1.0)
        return out

    # ------------------------------------------------------------------ stages

    @staticmethod
    def _checked_masks(inp: EngineInput, warnings: list[str]) -> np.ndarray | None:
        masks = inp.masks
        if masks is None:
            return None
        T, (W, H) = inp.clip.n_frames, inp.clip.size
        if masks.shape != (T, H, W):
            raise InputError(f"masks have shape {masks.shape}, expected {(T, H, W)}")
        area = masks.reshape(T, -1).sum(1)
        if area[0] < 16:
            raise InputError("the object mask is empty in the first frame", "start the frame range where the object is visible")
        empty = np.nonzero(area < 16)[0]
        if len(empty):
            warnings.append(f"object mask is empty in {len(empty)} frame(s) (first: {int(empty[0])}); motion there follows the tracks and neighbours")
        return masks

    def _setup(self, inp: EngineInput, camera: Camera, masks: np.ndarray | None, pool: ThreadPoolExecutor, progress: Progress,
               dev: torch.device) -> "_Problem":
        """The rig stage: the rig, the residual's node weights (in `pool`), surface samples and
        silhouette targets, and the scale of the object in the image."""
        o = self.options
        mesh, T = inp.mesh, inp.clip.n_frames
        source = self._rig_source(mesh)
        # the non-rigid residual (soft parts, morphs): not with a given rig, whose bone keys must
        # reproduce the returned tracks exactly (docs/contracts.md)
        nw_job = pool.submit(node_weights, mesh, o.residual_nodes, inp.seed) if o.residual > 0 and o.residual_iters > 0 and source != "given" else None
        rig = self._rig(mesh, source, progress)
        verts_np = mesh.vertices.astype(np.float32)
        verts = torch.as_tensor(verts_np, device=dev)
        K = torch.as_tensor(camera.K, dtype=torch.float32, device=dev)
        poses = torch.as_tensor(camera.with_frames(T).mesh_to_camera, dtype=torch.float32, device=dev)
        z0 = float((verts @ poses[0, :3, :3].T + poses[0, :3, 3])[:, 2].median())
        if z0 <= 0:
            raise EngineError("the mesh is behind the camera in the first frame", "check the camera's mesh_to_camera")
        unit_px = float(K[0, 0]) / z0  # pixels per mesh unit at the object's depth
        nw = nw_job.result() if nw_job is not None else None
        sf, sb = sample_surface(verts_np, mesh.faces, o.n_surface, seed=inp.seed)
        # the pull along the rays, for automatic skeletons of several bones: their approximate joints
        # let parts and the body turn in depth with compensating turns the 2D evidence cannot see;
        # a given rig's joints and bone lengths bound that, and a one-bone (rigid) object turns freely
        return _Problem(
            rig=rig, source=source, rt=RigTensors.from_rig(rig, dev), verts=verts, nw=nw,
            faces=torch.as_tensor(mesh.faces, dtype=torch.long, device=dev),
            surf=PointMap.make(rig, verts_np, mesh.faces, sf, sb, dev, node_weights=nw),
            sil=silhouette_targets(masks, dev, seed=inp.seed) if masks is not None else None,
            K=K, poses=poses, roots=torch.as_tensor(np.asarray(rig.parents) < 0, device=dev),
            unit_px=unit_px, obj_px=unit_px * mesh.bbox_diagonal(),
            ray=o.ray if source != "given" and rig.n_bones > 1 else 0.0,
            retarget=inp.first_pose and masks is not None,
        )

    @staticmethod
    def _motion(pb: "_Problem", T: int) -> "_Motion":
        """The rest pose in every frame: the fit's starting point."""
        B, dev = pb.rig.n_bones, pb.verts.device
        n_nodes = 0 if pb.nw is None else pb.nw.shape[1]
        return _Motion(torch.zeros(T, B, 3, device=dev), torch.zeros(T, 3, device=dev), torch.zeros(T, max(n_nodes, 1), 3, device=dev))

    def _fit(self, inp: EngineInput, pb: "_Problem", camera: Camera, masks: np.ndarray | None, m: "_Motion", progress: Progress) -> list[dict]:
        """Frames 1.. of `m`, in place, window by window, each warm-started from the previous
        window's last frame; after a taken re-anchoring the previous window's frames are solved
        again backwards (_solve_back). Returns each window's statistics."""
        T = inp.clip.n_frames
        windows = [(s, min(T, s + self.options.window)) for s in range(1, T, self.options.window)]
        stats = []
        for wi, (s, e) in enumerate(windows):
            stats.append(self._fit_window(inp, pb, camera, masks, m, s, e, inp.seed + wi, progress))
            anchor = stats[-1].get("reanchor", {})
            if anchor.get("taken") and self.options.reanchor_back > 0:
                a = anchor["frame"]
                anchor["solved_back"] = self._solve_back(pb, m, a, max(a - self.options.reanchor_back, windows[wi - 1][0]), progress)
            progress.update((wi + 1) / len(windows))
        return stats

    def _fit_first(self, pb: "_Problem", m: "_Motion", progress: Progress) -> dict:
        """Frame 0 of `m`, in place, posed to the first silhouette (the request's first_pose): the
        limbs turn and the root moves, its rotation held (the placement or the given camera has
        set it: free, the whole body tilts to cover a swung leg). No tracks end at frame 0, so
        the silhouette is the only evidence; flips as for any frame. Returns statistics."""
        o = self.options
        r_w, u_w, st = self._solve(pb, None, m, 0, 1, progress, (0, o.first_iters), hold_root=True)
        if o.flips and pb.rig.n_bones > 1:
            r_w, st["flips"] = self._flips(pb, None, r_w, u_w, 0, 1)
            if st["flips"]:  # polish from the flipped state
                m.rot[:1], m.root[:1] = r_w, u_w
                r_w, u_w, _ = self._solve(pb, None, m, 0, 1, progress, (0, o.first_iters // 2), hold_root=True)
        m.rot[:1], m.root[:1] = r_w, u_w
        return st

    def _fit_window(self, inp: EngineInput, pb: "_Problem", camera: Camera, masks: np.ndarray | None, m: "_Motion", s: int, e: int,
                    seed: int, progress: Progress) -> dict:
        """Frames s..e-1 of `m`, in place: with first_pose, frame s - 1 re-anchored where its track
        was lost (_reanchor); tracks from frame s - 1, the bones (root first), flips, then the
        residual. Returns the window's statistics."""
        o = self.options
        a = s - 1
        st_anchor = self._reanchor(pb, m, a, self._up(inp, camera, a), progress) if pb.retarget and o.reanchor > 0 and a > 0 else None
        if inp.oracle_tracks is not None:  # dev-only diagnosis (afv bench --oracle): ground-truth tracks
            trk = self._oracle_tracks(pb, inp.mesh, inp.oracle_tracks, inp.oracle_visible, a, e, seed)
        else:
            trk = self._tracks(pb, inp.mesh, camera, inp.clip.frames, masks, m.rot[a], m.root[a], a, e, seed)
        m.rot[s:e], m.root[s:e], m.delta[s:e] = m.rot[a], m.root[a], m.delta[a]
        res = m.delta if pb.nw is not None else None
        if o.sequential and e - s > 1:
            # each frame first alone, started from the previous one (large motion between
            # sampled frames), then the window jointly so the temporal terms act both ways
            for t in range(s, e):
                m.rot[t], m.root[t] = m.rot[t - 1], m.root[t - 1]
                m.rot[t:t + 1], m.root[t:t + 1], _ = self._solve(pb, trk, m, t, t + 1, progress, (o.root_iters, o.frame_iters), k0=t - s, res=res)
            r_w, u_w, st = self._solve(pb, trk, m, s, e, progress, (0, o.iters), res=res)
        else:
            r_w, u_w, st = self._solve(pb, trk, m, s, e, progress, (o.root_iters, o.iters), res=res)
        if o.flips and pb.rig.n_bones > 1:
            r_w, nflip = self._flips(pb, trk, r_w, u_w, s, e, res=res)
            st["flips"] = nflip
            if nflip:  # polish from the flipped state
                m.rot[s:e], m.root[s:e] = r_w, u_w
                r_w, u_w, st2 = self._solve(pb, trk, m, s, e, progress, (0, o.iters // 2), res=res)
                st["after_flips"] = st2["all"]
        m.rot[s:e], m.root[s:e] = r_w, u_w
        if pb.nw is not None:
            m.delta[s:e], st["residual"] = self._solve_residual(pb, trk, m, s, e, progress)
        if st_anchor is not None:
            st["reanchor"] = st_anchor
        return st

    @staticmethod
    def _up(inp: EngineInput, camera: Camera, t: int) -> torch.Tensor:
        """(3,) the world's up in mesh coordinates: the request's up_axis, else image-up at frame t."""
        up = np.asarray(inp.up_axis if inp.up_axis is not None else -camera.pose(t)[1, :3], np.float64)
        return torch.as_tensor(up / np.linalg.norm(up), dtype=torch.float32)

    def _reanchor(self, pb: "_Problem", m: "_Motion", a: int, up: torch.Tensor, progress: Progress, n_turns: int = 8, n_tries: int = 3) -> dict:
        """Recovery from a lost track, before the window that starts after frame a: frame a posed
        afresh on its silhouette (the root turned about the up axis in n_turns steps with the
        limbs at rest; the n_tries turns of lowest silhouette energy each solved, root then limbs,
        with the usual weak velocity term to frame a - 1) replaces the continued pose in `m`
        where its silhouette energy is below `reanchor` x the continued pose's. The windows after
        it start, and bind their tracks, there. Rigs with one root bone only. Returns statistics."""
        o = self.options
        dev = pb.verts.device
        if int(pb.roots.sum()) != 1:  # several roots share one translation: turning each about its head would tear the mesh
            return {"frame": a, "skipped": "several root bones"}
        keep = m.rot[a].clone(), m.root[a].clone()
        roots = pb.roots[:, None]
        with torch.no_grad():
            e_cont = self._sil_energy(pb, *keep, a, m.delta[a:a + 1] if pb.nw is not None else None)
            limbs_rest = torch.where(roots, keep[0], torch.zeros_like(keep[0]))
            turns = axis_angle_to_matrix(up.to(dev)[None] * torch.arange(n_turns, device=dev)[:, None] * (2 * np.pi / n_turns))  # (n, 3, 3)
            cands = torch.where(roots[None], matrix_to_axis_angle(turns[:, None] @ axis_angle_to_matrix(limbs_rest)[None]), limbs_rest[None])
            order = np.argsort([self._sil_energy(pb, c, keep[1], a) for c in cands])[:n_tries]
        e_new, best = float("inf"), None
        for k in order:  # the most promising turns, each solved
            r, u, e = self._pose_frame(pb, m, a, (cands[int(k)], keep[1]), progress)
            if e < e_new:
                e_new, best = e, (r, u)
        taken = e_new < o.reanchor * e_cont
        m.rot[a], m.root[a] = best if taken else keep
        if taken:
            m.delta[a] = 0  # the residual belonged to the continued pose
        return {"frame": a, "continued": round(e_cont, 3), "fresh": round(e_new, 3), "taken": bool(taken)}

    def _pose_frame(self, pb: "_Problem", m: "_Motion", t: int, init: tuple[torch.Tensor, torch.Tensor], progress: Progress,
                    after: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Frame t of `m` set to init (rot (B, 3), root (3,)) and solved on its silhouette alone
        (root_iters, then reanchor_iters on the limbs with the root's rotation held), tied by the
        velocity term to frame t - 1, or to t + 1 (after). m's frame t is left at init.
        -> (rot (B, 3), root (3,), frame t's silhouette energy there)."""
        o = self.options
        m.rot[t], m.root[t] = init
        r_w, u_w, _ = self._solve(pb, None, m, t, t + 1, progress, (o.root_iters, o.reanchor_iters), hold_root=True, after=after)
        with torch.no_grad():
            return r_w[0], u_w[0], self._sil_energy(pb, r_w[0], u_w[0], t)

    def _sil_energy(self, pb: "_Problem", rot: torch.Tensor, root: torch.Tensor, t: int, d: torch.Tensor | None = None) -> float:
        """rot (B, 3), root (3,), residual (1, K, 3) or None -> frame t's silhouette energy (no tracks, no priors)."""
        return float(self._energy(pb, None, rot[None], root[None] * pb.unit_px, None, t, t + 1, parts=True, d_w=d)[0])

    def _solve_back(self, pb: "_Problem", m: "_Motion", a: int, lo: int, progress: Progress) -> list[int]:
        """After a taken re-anchoring at frame a: the frames before it, a - 1 down to lo (never
        frame 0), each solved again on its silhouette starting from the frame after it (the fresh
        pose first), tied to that frame by the velocity term; the new pose replaces the continued
        one where its silhouette energy is below `reanchor_back_ratio` x the continued one's (it is
        optimised on that energy, so it nearly always wins by a little), and the walk stops at the
        first frame where it is not (there the continued pose, fitted to tracks, still holds).
        Without it those frames keep the lost pose and the motion jumps at a. Returns the frames
        replaced."""
        o = self.options
        done = []
        for t in range(a - 1, max(lo, 1) - 1, -1):
            keep = m.rot[t].clone(), m.root[t].clone(), m.delta[t].clone()
            with torch.no_grad():
                e_cont = self._sil_energy(pb, keep[0], keep[1], t, keep[2][None] if pb.nw is not None else None)
            r, u, e_new = self._pose_frame(pb, m, t, (m.rot[t + 1], m.root[t + 1]), progress, after=True)
            if not e_new < o.reanchor_back_ratio * e_cont:
                m.rot[t], m.root[t] = keep[0], keep[1]
                break
            m.rot[t], m.root[t] = r, u
            m.delta[t] = 0  # the residual belonged to the continued pose
            done.append(t)
        return done

    def _check(self, inp: EngineInput, pb: "_Problem", camera: Camera, masks: np.ndarray | None, m: "_Motion", held_out: Future | None,
               options: SelfCheckOptions, info: dict, warnings: list[str]) -> tuple["_Motion", np.ndarray]:
        """The self-check's per-frame choice among still, rigid and fitted, applied to the bone
        parameters (blend weights), then its per-part choice (_check_parts), then the root's
        depth capped. -> (motion, confidence (T, N))."""
        T, N = inp.clip.n_frames, inp.mesh.n_vertices
        if not self.options.selfcheck or T < 2:
            return m, np.ones((T, N), np.float32)
        verts_np = pb.verts.cpu().numpy()
        # the simpler hypotheses start from frame 0's pose: the rest pose, or the first pose (first_pose)
        rot0, root0 = m.rot[:1].expand_as(m.rot), m.root[:1].expand_as(m.root)
        with torch.no_grad():
            pos_fit = pb.rt.pose(self._rest(pb, m.delta), axis_angle_to_matrix(m.rot), m.root).cpu().numpy()
            # the rigid hypothesis in bone parameters: the root's rotation and translation only
            rot_rigid = torch.where(pb.roots[None, :, None], m.rot, rot0)
            pos_rigid = pb.rt.pose(pb.verts, axis_angle_to_matrix(rot_rigid), m.root).cpu().numpy()
        chk = self_check(inp.mesh, camera, inp.clip.frames, masks, pos_fit - verts_np[None], seed=inp.seed, label="the articulated fit",
                         rigid_positions=pos_rigid, options=options, held_out=held_out.result if held_out is not None else None,
                         device=pb.verts.device, still_positions=pos_fit[0] if pb.retarget else None)
        w = torch.as_tensor(chk.weights, dtype=torch.float32, device=pb.verts.device)  # (3, T)
        rot = w[1][:, None, None] * rot_rigid + w[2][:, None, None] * m.rot
        root = (w[1] + w[2])[:, None] * m.root
        if pb.retarget:  # still = the first pose held
            rot, root = rot + w[0][:, None, None] * rot0, root + w[0][:, None] * root0
        delta = w[2][:, None, None] * m.delta  # the residual belongs to the fitted hypothesis only
        warnings.extend(chk.warnings)
        info["selfcheck"] = chk.info()
        motion = _Motion(rot, root, delta)
        # not when retargeting (first_pose): the tracks follow another body, whose parts are not this
        # mesh's (DAVIS dog -> Fox: 9 of 23 bones held, IoU 0.727 -> 0.670)
        held = held_out.result() if held_out is not None and self.options.part_check and not pb.retarget else None
        kept = self._check_parts(pb, motion, held, options, info, warnings)
        motion.root = self._cap_root(pb, motion.rot, motion.root, chk.scale)
        dominant = pb.rig.dense_weights().argmax(1)  # (N,) the bone carrying each vertex most
        return motion, (chk.confidence * kept[:, dominant]).astype(np.float32)

    def _check_parts(self, pb: "_Problem", m: "_Motion", held: HeldOutTracks | None, options: SelfCheckOptions, info: dict,
                     warnings: list[str]) -> np.ndarray:
        """The self-check per part: each non-root bone's fitted rotation against the simpler
        hypothesis of its part held at rest relative to its parent (at its frame-0 rotation when
        frame 0 was posed; children follow), judged per
        frame on the held-out tracks of the part and its children (median reprojection error in
        units of 1 % of the object's size, the frame check's margin, smoothing and hysteresis),
        parent-first, each on its parent's outcome. Only where holding explains them better by
        the margin is the bone's rotation blended towards rest in `m` (so bone keys still
        reproduce the vertices): with the tie going to the simpler part, real small motions were
        lost (real subset, 16-frame half: 5.89 -> 6.01). Returns (T, B) the kept fraction of each
        bone's fitted rotation."""
        T, B = m.rot.shape[:2]
        kept = np.ones((T, B))
        if held is None or B < 2 or T < 2:
            return kept
        dev = pb.verts.device
        pm = PointMap.make(pb.rig, pb.verts.cpu().numpy(), pb.faces.cpu().numpy(), held.face, held.bary, dev, node_weights=pb.nw)
        part = pm.S.argmax(1).cpu().numpy()  # (P,) the bone carrying each track most
        xy = torch.as_tensor(held.xy, dtype=torch.float32, device=dev)
        res = None if pb.nw is None else m.delta / pb.unit_px
        unit = options.track_unit * pb.obj_px

        def track_cost(rot: torch.Tensor) -> np.ndarray:  # (T, B, 3) -> (T, P) reprojection error, cost units
            p = points(pm, *pose_rig(pb.rt, rot, m.root), res)
            uv = project_points(transform_points(p, pb.poses), pb.K, E.MIN_DEPTH)
            return np.minimum((uv - xy).norm(dim=-1).cpu().numpy() / unit, options.track_cap)

        subtree = [[b] for b in range(B)]  # each bone and its descendants (parents come first)
        for b in range(B - 1, -1, -1):
            p = int(pb.rig.parents[b])
            if p >= 0:
                subtree[p] += subtree[b]
        held_frames = {}
        rot = m.rot.clone()
        rot0 = m.rot[0].clone()  # frame 0's pose: the rest pose, or the first pose (first_pose)
        with torch.no_grad():
            fit = track_cost(rot)
            for b in np.flatnonzero(np.asarray(pb.rig.parents) >= 0):  # parent-first: a child is judged on its parent's outcome
                on = np.isin(part, subtree[b])
                if on.sum() < options.min_tracks:
                    continue
                cand = rot.clone()
                cand[:, b] = rot0[b]
                hold = track_cost(cand)
                cost = np.zeros((2, T))  # rows: fitted, held; frames without enough tracks keep the fit
                for t in range(1, T):
                    v = held.valid[t] & on
                    if v.sum() >= options.min_tracks:
                        cost[:, t] = np.median(fit[t, v]), np.median(hold[t, v])
                choice = decide(cost, options.margin, options.smooth, options.min_run, options.keep)
                choice[0] = 0
                kept[:, b] = blend_weights(choice, options.blend)[0]
                kept[0, b] = 1.0  # frame 0 is not judged
                if (choice == 1).any():
                    held_frames[pb.rig.names[b]] = np.flatnonzero(choice == 1).tolist()
                    k = torch.as_tensor(kept[:, b, None], dtype=torch.float32, device=dev)
                    rot[:, b] = k * rot[:, b] + (1 - k) * rot0[b]
                    fit = track_cost(rot)
            m.rot = rot
        info["selfcheck"]["parts_held"] = held_frames
        if held_frames:
            names = ", ".join(list(held_frames)[:3]) + (", ..." if len(held_frames) > 3 else "")
            warnings.append(f"{len(held_frames)} of {B - int(pb.roots.sum())} parts held at rest in some frames ({names}): "
                            "their held-out tracks did not show the fitted motion")
        return kept

    def _output(self, inp: EngineInput, pb: "_Problem", camera: Camera, m: "_Motion", conf: np.ndarray, info: dict) -> EngineOutput:
        """Vertex displacements by LBS, and bone keys when the rig was given. Frame 0 is the rest
        pose by contract (zeroed in `m`, in place) unless retargeting: posed to the first frame."""
        if not pb.retarget:
            m.rot[0], m.root[0], m.delta[0] = 0, 0, 0
        with torch.no_grad():
            rest_t = self._rest(pb, m.delta)
            pos = pb.rt.pose(rest_t, axis_angle_to_matrix(m.rot), m.root)
            if pb.nw is not None:
                info["residual_mean"] = float((rest_t - pb.verts).norm(dim=-1).mean() / inp.mesh.bbox_diagonal())  # x diagonal
            quat = axis_angle_to_quaternion(m.rot)
        disp = (pos - pb.verts[None]).cpu().numpy().astype(np.float32)
        if not pb.retarget:
            disp[0] = 0
        if not np.isfinite(disp).all():
            raise EngineError("the articulated fit diverged (non-finite displacements)", "check the camera and the masks")
        out = EngineOutput(displacements=disp, confidence=conf, camera=camera, info=info)
        if pb.source == "given":
            out.bone_rotations = quat.cpu().numpy().astype(np.float32)
            out.root_translation = m.root.cpu().numpy().astype(np.float32)
        return out

    @staticmethod
    def _rest(pb: "_Problem", delta: torch.Tensor) -> torch.Tensor:
        """Rest vertices (N, 3), or per frame (T, N, 3) moved by the residual's node offsets delta
        (T, K, 3), px-equivalent at the object's depth."""
        if pb.nw_t is None:
            return pb.verts
        return pb.verts[None] + torch.einsum("nk,tkc->tnc", pb.nw_t, delta / pb.unit_px)

    # ------------------------------------------------------------------ evidence

    def _tracks(self, pb: "_Problem", mesh: Mesh, camera: Camera, frames: np.ndarray, masks: np.ndarray | None, rot_a: torch.Tensor,
                root_a: torch.Tensor, a: int, e: int, seed: int):
        """Flow tracks seeded on the surface visible at frame a (current estimate), through
        frames a..e-1: (PointMap, obs (e-a, P, 2), valid (e-a, P)) or None."""
        dev = pb.verts.device
        with torch.no_grad():
            v = pb.rt.pose(pb.verts, axis_angle_to_matrix(rot_a)[None], root_a[None])[0]
        M = camera.pose(a)
        vc = v @ torch.as_tensor(M[:3, :3], dtype=torch.float32, device=dev).T + torch.as_tensor(M[:3, 3], dtype=torch.float32, device=dev)
        W, H = camera.image_size
        r = rasterize(vc, pb.faces, torch.as_tensor(camera.K, dtype=torch.float32), (W, H))
        ok = r.mask.cpu().numpy().copy()
        if masks is not None:
            import cv2

            ok &= cv2.erode(masks[a].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ys, xs = np.nonzero(ok)
        if len(xs) < 8:
            return None
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(xs), min(self.options.n_tracks, len(xs)), replace=False)
        ys, xs = ys[pick], xs[pick]
        xy, valid = track_points(frames[a:e], np.stack([xs, ys], 1).astype(np.float32) + 0.5, None if masks is None else masks[a:e])
        face = r.face_id.cpu().numpy()[ys, xs].astype(np.int64)
        bary = r.bary.cpu().numpy()[ys, xs].astype(np.float32)
        pm = PointMap.make(pb.rig, mesh.vertices.astype(np.float32), mesh.faces, face, bary, dev, node_weights=pb.nw)
        return pm, torch.as_tensor(xy[1:], device=dev), torch.as_tensor(valid[1:].astype(np.float32), device=dev)

    def _oracle_tracks(self, pb: "_Problem", mesh: Mesh, tracks: np.ndarray, visible: np.ndarray, a: int, e: int, seed: int):
        """Like _tracks, from ground-truth tracks of every vertex ((T, N, 2) pixels, (T, N) visible;
        docs/contracts.md "Oracle evidence"): n_tracks vertices visible at frame a, each as a
        surface point (a face holding it, one-hot barycentrics), observed through frames a..e-1."""
        dev = pb.verts.device
        ids = np.flatnonzero(visible[a])
        if len(ids) < 8:
            return None
        ids = np.random.default_rng(seed).choice(ids, min(self.options.n_tracks, len(ids)), replace=False)
        f_of, corner = np.full(mesh.n_vertices, -1, np.int64), np.zeros(mesh.n_vertices, np.int64)
        for k in range(3):  # any face holding the vertex, and which corner it is
            f_of[mesh.faces[:, k]] = np.arange(len(mesh.faces))
            corner[mesh.faces[:, k]] = k
        keep = f_of[ids] >= 0
        ids = ids[keep]
        bary = np.eye(3, dtype=np.float32)[corner[ids]]
        pm = PointMap.make(pb.rig, mesh.vertices.astype(np.float32), mesh.faces, f_of[ids], bary, dev, node_weights=pb.nw)
        obs = torch.as_tensor(np.asarray(tracks[a + 1:e, ids], np.float32), device=dev)
        valid = torch.as_tensor(np.asarray(visible[a + 1:e, ids], np.float32), device=dev)
        return pm, obs, valid

    # ------------------------------------------------------------------ solver

    def _energy(self, pb: "_Problem", trk, r_w, u_w, prev_uv, s, e, parts=False, k0=0, d_w=None):
        """Total energy of frames s..e-1 (scalar), or per frame and bone-independent terms
        (parts=True: (W,) per-frame energies, used to compare flip hypotheses). r_w (W, B, 3)
        axis-angles; u_w (W, 3) root translation in px-equivalent; prev_uv (P, 2) the samples'
        pixels at frame s - 1; d_w: (W, K, 3) residual node offsets (px-equivalent) or None."""
        o = self.options
        poses, K, unit_px = pb.poses, pb.K, pb.unit_px
        A, t = pose_rig(pb.rt, r_w, u_w / unit_px)
        res = None if d_w is None else d_w / unit_px
        ps = points(pb.surf, A, t, res)
        cam = transform_points(ps, poses[s:e])
        uv = project_points(cam, K, E.MIN_DEPTH)
        terms = []
        if pb.sil is not None:
            sil = pb.sil
            fw = sil.frame_w[s:e]
            d = (E.sample_image(sil.dist_out[s:e], uv) - 1.0).clamp_min(0.0)
            ins = E.huber(d, 3.0).mean(1) * fw
            cov = coverage(sil.samples[s:e], sil.sample_w[s:e], uv) * fw
            terms.append(o.silhouette * (ins + cov) if parts else o.silhouette * (ins + cov).sum())
        if trk is not None:
            pm, obs, valid = trk
            pt = points(pm, A, t, res)
            uvt = project_points(transform_points(pt, poses[s:e]), K, E.MIN_DEPTH)
            n = e - s
            ob, va = obs[k0:k0 + n], valid[k0:k0 + n]  # k0: first solved frame's offset from the tracks' anchor + 1
            r = E.safe_norm(uvt - ob)
            per = o.track * (E.huber(r, 2.0) * va).sum(1) / va.sum(1).clamp_min(1.0)
            terms.append(per if parts else per.sum())
        if parts:
            return sum(terms)
        seq = uv if prev_uv is None else torch.cat([prev_uv[None], uv], 0)
        vel = ((seq[1:] - seq[:-1]) ** 2).sum(-1).mean(-1).sum()
        rest = (r_w ** 2).sum(-1).mean(-1).sum() * pb.obj_px ** 2 * 1e-3
        depth = ((poses[s:e, 2, :3] * u_w).sum(-1) ** 2).sum()  # root motion along each frame's view ray, px-equivalent
        total = sum(terms) + o.smooth * vel + o.rest * rest + o.depth * depth
        if pb.ray > 0:
            # the surface's motion along the view rays, the object's mean depth change apart (the
            # depth prior's): parts and the body turning towards or away from the camera, which
            # 2D evidence sees only as foreshortening. The rest pose at U.sum(1): skin weights sum to 1
            z_rest = torch.einsum("tb,pb->tp", poses[s:e, 2, :3], pb.surf.U.sum(1)) + poses[s:e, 2, 3:4]
            dz = cam[..., 2] - z_rest
            dz = (dz - dz.mean(1, keepdim=True)) * unit_px
            total = total + pb.ray * (dz ** 2).mean(1).sum()
        if d_w is not None and d_w.requires_grad:
            # small and strongly held: its size, and 10x its part along the view ray (2D evidence cannot see it)
            along = (poses[s:e, None, 2, :3] * d_w).sum(-1)  # (W, K)
            total = total + o.residual * ((d_w ** 2).sum(-1).mean(-1).sum() + 10.0 * (along ** 2).mean(-1).sum())
        return total

    def _prev_uv(self, pb: "_Problem", m: "_Motion", res, f):
        """(P, 2) the surface samples' pixels at frame f (the velocity term's anchor); None for f < 0."""
        if f < 0:
            return None
        with torch.no_grad():
            A, t = pose_rig(pb.rt, m.rot[f:f + 1], m.root[f:f + 1])
            r = None if res is None else res[f:f + 1] / pb.unit_px
            return project_points(transform_points(points(pb.surf, A, t, r)[0], pb.poses[f]), pb.K, E.MIN_DEPTH)

    def _solve(self, pb: "_Problem", trk, m: "_Motion", s, e, progress, iterations, k0=0, res=None, hold_root=False, after=False):
        """Adam on the bones of frames s..e-1 from m's values there: `iterations` (root phase,
        all-bones phase); the velocity term ties frame s to frame s - 1, or (after, one frame) to
        frame s + 1. -> (rotations (W, B, 3), root translation (W, 3), final energies)."""
        o = self.options
        assert not after or e == s + 1, "after: one frame, tied to the frame after it"
        prev_uv = self._prev_uv(pb, m, res, e if after else s - 1)
        d_w = None if res is None else res[s:e]  # held during the bone phases
        r_w = m.rot[s:e].clone().requires_grad_(True)
        u_w = (m.root[s:e] * pb.unit_px).clone().requires_grad_(True)  # root translation in pixels at the object's depth
        mask = pb.roots[None, :, None].float()
        limbs = 1.0 - mask if hold_root else torch.ones_like(mask)
        stats = {}
        for phase, iters in zip(("root", "all"), iterations):
            if iters <= 0:
                continue
            opt = Adam([r_w, u_w], [o.lr_rot, o.lr_root])

            def step(phase=phase, opt=opt):
                en = self._energy(pb, trk, r_w, u_w, prev_uv, s, e, k0=k0, d_w=d_w)
                g_r, g_u = torch.autograd.grad(en, [r_w, u_w])
                opt.update([g_r * mask if phase == "root" else g_r * limbs, g_u])  # only the root bones turn in the first phase
                return en.detach()

            en = run_steps(step, opt, iters, graph=o.cuda_graphs, on_step=lambda _: progress.check())
            stats[phase] = float(en)
        return r_w.detach(), u_w.detach() / pb.unit_px, stats

    def _flips(self, pb: "_Problem", trk, r_w: torch.Tensor, u_w: torch.Tensor, s: int, e: int, res: torch.Tensor | None = None):
        """Front/back flips: a bone swung towards the camera and the same bone swung away by the
        same angle look alike (the silhouette cannot tell). For each non-root bone, parent-first,
        the hypothesis with its posed direction mirrored through the plane through its head
        orthogonal to the view ray (children follow) is kept per frame where tracks and
        silhouette prefer it clearly (energy below 0.9x)."""
        rt, n_flip = pb.rt, 0
        with torch.no_grad():
            d_w = None if res is None else res[s:e]
            base = self._energy(pb, trk, r_w, u_w * pb.unit_px, None, s, e, parts=True, d_w=d_w)
            zc = pb.poses[s:e, 2, :3]  # (W, 3) view direction in mesh axes
            bone_vec = rt.tails - rt.heads  # (B, 3) rest directions
            for b in range(r_w.shape[1]):
                p = rt.parents[b]
                if p < 0 or float(bone_vec[b].norm()) < 1e-9:
                    continue
                Q, _ = fk(rt.parents, rt.heads, axis_angle_to_matrix(r_w), u_w)
                d = torch.nn.functional.normalize(Q[:, b] @ bone_vec[b], dim=-1)  # (W, 3) posed direction
                mir = d - 2 * (d * zc).sum(-1, keepdim=True) * zc  # mirrored through the image plane
                axis = torch.cross(d, mir, dim=-1)
                sin = axis.norm(dim=-1, keepdim=True)
                ang = torch.atan2(sin, (d * mir).sum(-1, keepdim=True))
                w_glob = torch.where(sin > 1e-6, axis / sin.clamp_min(1e-9) * ang, torch.zeros_like(axis))  # (W, 3)
                w_loc = (Q[:, p].transpose(-1, -2) @ w_glob[..., None])[..., 0]  # the same turn in the parent's frame
                cand = r_w.clone()
                cand[:, b] = matrix_to_axis_angle(axis_angle_to_matrix(w_loc) @ axis_angle_to_matrix(r_w[:, b]))
                en = self._energy(pb, trk, cand, u_w * pb.unit_px, None, s, e, parts=True, d_w=d_w)
                better = en < 0.9 * base
                if better.any():
                    r_w[better, b] = cand[better, b]
                    base = torch.where(better, en, base)
                    n_flip += int(better.sum())
        return r_w, n_flip

    def _solve_residual(self, pb: "_Problem", trk, m: "_Motion", s, e, progress):
        """The non-rigid residual of a window on top of its bones (held): node offsets (W, K, 3),
        px-equivalent, warm-started from the previous frame's. -> (offsets, final energy)."""
        o = self.options
        prev_uv = self._prev_uv(pb, m, m.delta, s - 1)
        r_w, u_w = m.rot[s:e], m.root[s:e] * pb.unit_px
        d_w = m.delta[s:e].clone().requires_grad_(True)
        opt = Adam([d_w], [o.lr_residual])

        def step():
            en = self._energy(pb, trk, r_w, u_w, prev_uv, s, e, d_w=d_w)
            opt.update(list(torch.autograd.grad(en, [d_w])))
            return en.detach()

        en = run_steps(step, opt, o.residual_iters, graph=o.cuda_graphs, on_step=lambda _: progress.check())
        return d_w.detach(), float(en) if en is not None else 0.0

    def _cap_root(self, pb: "_Problem", rot: torch.Tensor, root: torch.Tensor, scale: np.ndarray | None) -> torch.Tensor:
        """Root depth within what the silhouette scale explains (bone lengths bound the rest):
        the mesh centroid slides along its ray (selfcheck.depth_shift). rot (T, B, 3), root (T, 3)."""
        with torch.no_grad():
            cen = points(pb.centroid, *pose_rig(pb.rt, rot, root))[:, 0]  # (T, 3) posed vertex centroid
        shift = depth_shift(cen.cpu().numpy(), pb.poses.cpu().numpy(), scale)
        return root + torch.as_tensor(shift, dtype=torch.float32, device=root.device)


def coverage(targets: torch.Tensor, target_w: torch.Tensor, uv: torch.Tensor, delta: float = 3.0) -> torch.Tensor:
    """One-sided chamfer per frame: every mask sample (T, C, 2) must have a projected point of
    uv (T, P, 2) nearby; target_w (T, C). Returns (T,). The nearest point is found without
    autograd and only the chosen pairs are differentiated: the same gradient as a min over
    cdist, without its (T, C, P) backward."""
    with torch.no_grad():
        idx = torch.cdist(targets, uv).argmin(-1)  # (T, C)
    near = torch.gather(uv, 1, idx[..., None].expand(*idx.shape, 2))
    d = E.safe_norm(targets - near)
    return (E.huber(d, delta) * target_w).sum(1) / target_w.sum(1).clamp_min(1.0)
