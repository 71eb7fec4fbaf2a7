"""Optimisation schedule: windows of frames, warm-started per frame, refined per window.

The clip is split into windows of `window` frames that share their first frame with the
previous window's last. In each window, point tracks are seeded on the surface visible
at its first frame (as estimated so far) and chained through the window by optical flow;
every frame is then fitted alone (warm start from the previous frame), and finally all
frames of the window are refined jointly so the temporal terms can act both ways. Memory
is bounded by one window's flow and tracks, whatever the clip length.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from ...direct import normalized_image
from ...flow import track_points
from ...geometry.projection import project_points, transform_points
from ...geometry.raster import rasterize, visible_vertices
from ...geometry.rotation import axis_angle_to_matrix
from ...fitting import energies as E
from .model import DeformationGraph, deform
from ...fitting.silhouette import SilhouetteTargets


@dataclass(frozen=True)
class Weights:
    track: float = 1.0
    inside: float = 1.0
    cover: float = 1.0
    arap: float = 4.0
    vel: float = 0.0
    acc: float = 0.5
    depth: float = 0.5
    rot_acc: float = 1.0
    depth_rigid: float = 0.0  # the depth prior on the whole motion (rigid part included)
    photo: float = 0.0  # direct colour term against frame 0 (anchored: no drift)
    rigid_pull: float = 0.0  # with a rigid prior: pull of each part's global motion towards it (0 = fixed to it)
    rigid_pull_depth: float = 1.0  # relative weight of the pull's along-ray component
    remainder: float = 0.0  # pulls the node (non-rigid) transforms to zero where evidence is weak


@dataclass(frozen=True)
class Schedule:
    window: int = 8
    n_tracks: int = 1500
    n_surface: int = 1500
    frame_iters: int = 40
    window_iters: int = 40
    rigid_iters: int = 15
    extrapolate: bool = False  # constant-velocity warm start (less lag, but drifts in depth)
    lr_rot: float = 0.02
    lr_trans: float = 0.01  # in units of the bbox diagonal
    fb_thresh: float = 1.0
    vis_size: int = 256  # long side of the visibility raster
    n_photo: int = 3000  # surface samples of the direct colour term
    photo_sigma: float = 5.0  # px of the local contrast normalisation
    photo_window: bool = True  # the direct term also in the joint window refinement
    rigid_only: bool = False  # fit each part's rigid motion only (used to rank candidate camera poses)
    tol_change: float = 1e-12  # L-BFGS stops when the energy (px^2) or a step changes less (fewer GPU launches/syncs)
    track_anchor: int = 1  # flow measured from an anchor frame moved every this many frames (less chaining drift)
    photo_nonrigid: bool = True  # the direct term also in the non-rigid solve (else: rigid stage only)


@dataclass
class PointSet:
    """Surface points (face + barycentrics) as a dense linear map of the node transforms.

    A point p = sum_c b_c sum_k w_ck (R_k (v_c - g_k) + g_k + t_k) is linear in the node
    rotations and offsets: p = sum_k R_k u_pk + s_pk o_k with u_pk = sum_c b_c w_ck v_c,
    s_pk = sum_c b_c w_ck and o_k = g_k + t_k - R_k g_k. Storing u and s densely turns the
    inner loop into two small matmuls (fast forward and backward, no gathers).
    """

    U: torch.Tensor  # (P, K*3) u_pk flattened over (k, xyz)
    S: torch.Tensor  # (P, K)
    island: torch.Tensor  # (P,) int64 connected part the point lies on

    @staticmethod
    def make(graph: DeformationGraph, verts: torch.Tensor, faces: torch.Tensor, face: torch.Tensor, bary: torch.Tensor) -> "PointSet":
        P, K = len(face), graph.n_nodes
        c = faces[face]  # (P, 3)
        a = graph.w[c] * bary[:, :, None]  # (P, 3, k)
        rows = torch.arange(P, device=verts.device)[:, None, None].expand_as(a)
        S = torch.zeros(P, K, device=verts.device)
        S.index_put_((rows.reshape(-1), graph.idx[c].reshape(-1)), a.reshape(-1), accumulate=True)
        U = torch.zeros(P, K, 3, device=verts.device)
        contrib = (a[..., None] * verts[c][:, :, None, :]).reshape(-1, 3)
        U.index_put_((rows.reshape(-1), graph.idx[c].reshape(-1)), contrib, accumulate=True)
        return PointSet(U.reshape(P, K * 3), S, graph.island[c[:, 0]])

    def __len__(self) -> int:
        return int(self.S.shape[0])

    def positions(self, graph: DeformationGraph, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """rot (T,K,3,3), trans (T,K,3) -> (T, P, 3) mesh coordinates."""
        T, K = rot.shape[:2]
        o = graph.nodes + trans - torch.einsum("tkab,kb->tka", rot, graph.nodes)  # (T, K, 3)
        Rf = rot.permute(0, 2, 1, 3).reshape(T, 3, K * 3)  # [t, a, (k, b)]
        return torch.matmul(self.U, Rf.transpose(1, 2)) + torch.matmul(self.S, o)


@dataclass(frozen=True)
class Context:
    graph: DeformationGraph
    verts: torch.Tensor  # (N, 3) rest vertices
    faces: torch.Tensor  # (F, 3) int64
    intrinsics: torch.Tensor  # (3, 3) camera K (K alone in this module is the node count)
    poses: torch.Tensor  # (T, 4, 4) mesh-to-camera
    size: tuple[int, int]  # (W, H)
    sil: SilhouetteTargets | None
    surface: PointSet  # fixed area-uniform samples for the silhouette terms
    px: float  # pixels per mesh unit at the object's depth (converts 3D terms to pixels)
    diag: float
    weights: Weights
    schedule: Schedule
    # the run's diagnostics (energies per window, evaluation count): the one thing the solver
    # writes into; every other field is fixed once the context is built
    stats: dict = field(default_factory=dict)
    photo: "PhotoRef | None" = None  # the direct colour term's reference (set by solve when photo > 0)
    # per-part rigid motion tracked beforehand (afv rigid tracker): (grot, gtr) each (T, I, 3);
    # when given, the global motion is fixed to it and the graph fits only the remainder
    rigid_prior: tuple[torch.Tensor, torch.Tensor] | None = None
    node_spacing: float = 0.0  # mean rest length of the node graph's edges (mesh units)


@dataclass
class PhotoRef:
    """Surface samples seen in frame 0 with their frame-0 colours (local-contrast-normalised)."""

    points: PointSet
    ref: torch.Tensor  # (P, C)


@dataclass
class WindowTracks:
    points: PointSet
    xy: torch.Tensor  # (L, P, 2) observed pixels for frames s..e
    valid: torch.Tensor  # (L, P) float
    images: torch.Tensor | None = None  # (L, C, H, W) normalised frames s..e (direct term)
    photo_vis: torch.Tensor | None = None  # (L, P_photo) float visibility of the photo samples


@dataclass
class Params:
    """Per-frame unknowns. Node rotations/translations (embedded deformation in the object
    frame) followed by one rigid motion per connected part i about its rest centroid c_i:
    x' = Rg_i (ED(x) - c_i) + c_i + tg_i. The rigid parts are what a coarse-to-fine fit solves
    first; rigidity terms are blind to them, so they converge in a few steps, and separate
    parts (multi-object meshes) get their own rigid motion."""

    rot: torch.Tensor  # (T, K, 3) axis-angle
    trans: torch.Tensor  # (T, K, 3) mesh units
    grot: torch.Tensor  # (T, I, 3) axis-angle
    gtr: torch.Tensor  # (T, I, 3) mesh units

    def take(self, idx) -> "Params":
        return Params(self.rot[idx], self.trans[idx], self.grot[idx], self.gtr[idx])

    def put(self, idx, p: "Params") -> None:
        with torch.no_grad():
            self.rot[idx], self.trans[idx], self.grot[idx], self.gtr[idx] = p.rot, p.trans, p.grot, p.gtr


def apply_global(ctx: Context, x: torch.Tensor, island: torch.Tensor, grot: torch.Tensor, gtr: torch.Tensor) -> torch.Tensor:
    """x: (T, P, 3) object-frame points on parts island (P,) -> (T, P, 3) after each part's
    rigid motion grot/gtr (T, I, 3)."""
    Rg = axis_angle_to_matrix(grot)  # (T, I, 3, 3)
    c = ctx.graph.centres[island]  # (P, 3)
    if ctx.graph.n_islands == 1:  # the common case, without the per-point gather
        return torch.einsum("tab,tpb->tpa", Rg[:, 0], x - c) + c + gtr[:, :1]
    return torch.einsum("tpab,tpb->tpa", Rg[:, island], x - c) + c + gtr[:, island]


def points_at(ctx: Context, ps: PointSet, p: Params) -> torch.Tensor:
    """(T, P, 3) mesh-coordinate positions of the point set under params p (T frames)."""
    return apply_global(ctx, ps.positions(ctx.graph, axis_angle_to_matrix(p.rot), p.trans), ps.island, p.grot, p.gtr)


def frame_energy(
    ctx: Context, frames: list[int], p: Params, tracks: WindowTracks | None, s: int, prev: Params, track_w: torch.Tensor | None,
    use_photo: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Total energy of `frames` (len T') given their params p and the fixed params of the
    2 frames before (prev, 2 frames). track_w: (T', P) visibility of the tracks. use_photo: include
    the direct colour term (when the context has one and its weight is > 0)."""
    weights = ctx.weights
    g = ctx.graph
    R = axis_angle_to_matrix(p.rot)
    fi = torch.as_tensor(frames, device=p.rot.device)
    poses = ctx.poses[fi]
    terms = {}
    total = p.rot.new_zeros(())
    if ctx.sil is not None:
        xs = apply_global(ctx, ctx.surface.positions(g, R, p.trans), ctx.surface.island, p.grot, p.gtr)
        uv_s = project_points(transform_points(xs, poses), ctx.intrinsics, min_depth=E.MIN_DEPTH)
        fw = ctx.sil.frame_w[fi]
        terms["inside"] = E.inside_energy(uv_s, ctx.sil.dist_out[fi], fw)
        terms["cover"] = E.coverage_energy(ctx.sil.samples[fi], ctx.sil.sample_w[fi], uv_s, fw)
        total = total + weights.inside * terms["inside"] + weights.cover * terms["cover"]
    if tracks is not None and len(tracks.points):
        li = fi - s
        xt = apply_global(ctx, tracks.points.positions(g, R, p.trans), tracks.points.island, p.grot, p.gtr)
        uv_t = project_points(transform_points(xt, poses), ctx.intrinsics, min_depth=E.MIN_DEPTH)
        wt = tracks.valid[li] * (track_w if track_w is not None else 1.0)
        terms["track"] = E.track_energy(uv_t, tracks.xy[li], wt)
        total = total + weights.track * terms["track"]
    if use_photo and ctx.photo is not None and tracks is not None and tracks.images is not None and weights.photo > 0:
        li = fi - s
        xp = apply_global(ctx, ctx.photo.points.positions(g, R, p.trans), ctx.photo.points.island, p.grot, p.gtr)
        uv_p = project_points(transform_points(xp, poses), ctx.intrinsics, min_depth=E.MIN_DEPTH)
        terms["photo"] = E.photometric_energy(tracks.images[li], uv_p, ctx.photo.ref, tracks.photo_vis[li])
        total = total + weights.photo * terms["photo"]
    px2 = ctx.px * ctx.px
    if weights.remainder > 0:
        sp2 = ctx.node_spacing * ctx.node_spacing
        terms["remainder"] = weights.remainder * px2 * ((p.trans * p.trans).sum(-1).mean(-1) + sp2 * (p.rot * p.rot).sum(-1).mean(-1)).sum()
        total = total + terms["remainder"]
    if ctx.rigid_prior is not None and weights.rigid_pull > 0:
        nodes = g.nodes.expand(len(frames), -1, -1)
        a = apply_global(ctx, nodes, g.node_island, p.grot, p.gtr)
        b = apply_global(ctx, nodes, g.node_island, ctx.rigid_prior[0][fi], ctx.rigid_prior[1][fi])
        # in camera coordinates, the along-ray part weighted apart: the tracker's depth is
        # reliable for rigid parts but a bending part drags its rigid compromise in depth
        bc = transform_points(b, poses)
        dc = torch.einsum("tab,tkb->tka", poses[:, :3, :3], a - b)
        ray = bc / bc.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        along = (dc * ray).sum(-1, keepdim=True)
        across = dc - along * ray
        r2 = (across * across).sum(-1) + weights.rigid_pull_depth * (along * along).sum(-1)
        terms["rigid_pull"] = weights.rigid_pull * px2 * r2.mean(-1).sum()
        total = total + terms["rigid_pull"]
    terms["arap"] = E.arap_energy(g.nodes, R, p.trans, g.edges, g.edge_w) * px2 / len(frames)
    total = total + weights.arap * terms["arap"]
    allp = Params(*(torch.cat([a, b], 0) for a, b in zip((prev.rot, prev.trans, prev.grot, prev.gtr), (p.rot, p.trans, p.grot, p.gtr))))
    node_pos = apply_global(ctx, g.nodes + allp.trans, g.node_island, allp.grot, allp.gtr)  # (2+T', K, 3)
    # before frame 2 the "previous" frames repeat frame 0; leave those out of the smoothness
    skip = 2 - min(frames[0], 2)
    terms["temporal"] = (E.temporal_energy(node_pos[skip:], weights.vel, weights.acc) + weights.rot_acc * 0.01 * E.temporal_energy(allp.rot[skip:], 0.0, 1.0)) * px2
    total = total + terms["temporal"]
    # the depth prior acts on the non-rigid part only (Rg t_k): a rigid object may move in
    # depth freely (its tracks and silhouette constrain that), a bending part may not
    all_poses = torch.cat([ctx.poses[(fi[:1] - 1).clamp_min(0)], poses], 0)
    nr = torch.einsum("tkab,tkb->tka", axis_angle_to_matrix(allp.grot[1:])[:, g.node_island], allp.trans[1:])
    nr_cam = torch.einsum("tab,tkb->tka", all_poses[:, :3, :3], nr)
    ray_ref = transform_points(node_pos[1:], all_poses)
    terms["depth"] = (weights.depth * E.depth_motion_energy(ray_ref[:-1] + nr_cam[1:] - nr_cam[:-1], ray_ref[:-1])
                      + weights.depth_rigid * E.depth_motion_energy(ray_ref[1:], ray_ref[:-1])) * px2
    total = total + terms["depth"]
    return total, terms


def _optimise(ctx: Context, frames: list[int], state: Params, tracks, s: int, iters: int, progress, track_w, rigid_only: bool = False,
              use_photo: bool = True) -> dict:
    """Minimise the energy over the params of `frames` (written back into state);
    the 2 frames before stay fixed. rigid_only: solve the global motion alone; use_photo: with
    the direct colour term."""
    f0 = frames[0]
    prev = state.take([max(f0 - 2, 0), max(f0 - 1, 0)])
    prev = Params(*(x.detach() for x in (prev.rot, prev.trans, prev.grot, prev.gtr)))
    cur = state.take(frames)
    # translations optimised in bbox-diagonal units so both kinds of unknowns are O(1)
    v = [cur.rot.detach().clone(), (cur.trans / ctx.diag).detach().clone(), cur.grot.detach().clone(), (cur.gtr / ctx.diag).detach().clone()]
    free = v[2:] if rigid_only else (v[:2] if ctx.rigid_prior is not None and ctx.weights.rigid_pull <= 0 else v)
    for x in free:
        x.requires_grad_(True)
    terms: dict = {}
    # L-BFGS with a Wolfe line search: the energy is smooth (Huber, squared terms) and the
    # node parameters are strongly coupled by the rigidity term, where first-order Adam
    # needs hundreds of steps to propagate motion through the graph.
    opt = torch.optim.LBFGS(free, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=ctx.schedule.tol_change)
    calls = [0]

    def closure():
        nonlocal terms
        calls[0] += 1
        if calls[0] % 8 == 0 and progress is not None:
            progress.check()
        opt.zero_grad()
        total, terms = frame_energy(ctx, frames, Params(v[0], v[1] * ctx.diag, v[2], v[3] * ctx.diag), tracks, s, prev, track_w, use_photo)
        total.backward()
        return total

    opt.step(closure)
    ctx.stats["evaluations"] = ctx.stats.get("evaluations", 0) + calls[0]
    state.put(frames, Params(v[0].detach(), v[1].detach() * ctx.diag, v[2].detach(), v[3].detach() * ctx.diag))
    return {k: float(x.detach()) for k, x in terms.items()}


@torch.no_grad()
def deformed_vertices(ctx: Context, p: Params) -> torch.Tensor:
    """Params of T' frames -> (T', N, 3) deformed mesh vertices."""
    g = ctx.graph
    x = deform(ctx.verts, g.idx, g.w, g.nodes, axis_angle_to_matrix(p.rot), p.trans)
    return apply_global(ctx, x, g.island, p.grot, p.gtr)


def _vis_camera(ctx: Context) -> tuple[torch.Tensor, tuple[int, int]]:
    W, H = ctx.size
    s = min(1.0, ctx.schedule.vis_size / max(W, H))
    Ks = ctx.intrinsics.clone()
    Ks[:2] *= s
    return Ks, (max(1, round(W * s)), max(1, round(H * s)))


@torch.no_grad()
def visibility(ctx: Context, verts_t: torch.Tensor, t: int, pts_cam: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Z-buffer visibility at frame t: ((N,) bool for vertices, (P,) bool for extra points)."""
    Ks, size = _vis_camera(ctx)
    vc = transform_points(verts_t[None], ctx.poses[t : t + 1])[0]
    r = rasterize(vc, ctx.faces, Ks, size)
    vis_v = visible_vertices(r, vc, Ks, tol=2e-2)
    vis_p = visible_vertices(r, pts_cam, Ks, tol=2e-2) if pts_cam is not None else None
    return vis_v, vis_p


@torch.no_grad()
def seed_tracks(ctx: Context, verts_s: torch.Tensor, s: int, mask: np.ndarray | None, n: int | None = None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Pixels on the estimated visible surface at frame s (inside the mask), on a grid
    sized for ~n_tracks points. Returns (points (P,2) float32, face (P,), bary (P,3))."""
    W, H = ctx.size
    vc = transform_points(verts_s[None], ctx.poses[s : s + 1])[0]
    r = rasterize(vc, ctx.faces, ctx.intrinsics, (W, H))
    cover = r.mask.cpu().numpy()
    if mask is not None:
        cover &= mask
    area = int(cover.sum())
    if area == 0:
        return np.zeros((0, 2), np.float32), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3)
    stride = max(1, int(np.sqrt(area / (n or ctx.schedule.n_tracks))))
    grid = np.zeros_like(cover)
    grid[stride // 2 :: stride, stride // 2 :: stride] = True
    ys, xs = np.nonzero(cover & grid)
    yi, xi = torch.as_tensor(ys, device=ctx.intrinsics.device), torch.as_tensor(xs, device=ctx.intrinsics.device)
    face = r.face_id[yi, xi]
    bary = r.bary[yi, xi]
    pts = np.stack([xs, ys], 1).astype(np.float32) + 0.5
    return pts, face, bary


def normalized_frames(frames: np.ndarray, sigma: float, dev: torch.device) -> torch.Tensor:
    """(L, H, W, 3) uint8 -> (L, 3, H, W) float32 local-contrast-normalised (afv.direct)."""
    out = np.stack([normalized_image(f, sigma) for f in frames])
    return torch.as_tensor(out, device=dev).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def photo_reference(ctx: Context, img0: torch.Tensor, mask0: np.ndarray | None) -> PhotoRef:
    """Surface samples visible in frame 0 (inside the eroded mask, where the pose is exact)
    and their frame-0 colours. img0: (C, H, W) normalised frame 0."""
    if mask0 is not None:  # keep away from the outline: background colours bleed in there
        mask0 = cv2.erode(mask0.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    _, face, bary = seed_tracks(ctx, ctx.verts, 0, mask0, ctx.schedule.n_photo)
    dev = ctx.intrinsics.device
    pts = PointSet.make(ctx.graph, ctx.verts, ctx.faces, face.to(dev), bary.to(dev))
    x = pts.positions(ctx.graph, torch.eye(3, device=dev).expand(1, ctx.graph.n_nodes, 3, 3), torch.zeros(1, ctx.graph.n_nodes, 3, device=dev))
    uv = project_points(transform_points(x, ctx.poses[:1]), ctx.intrinsics, min_depth=E.MIN_DEPTH)
    ref = E.sample_channels(img0[None], uv)[0]
    return PhotoRef(pts, ref)


def solve(ctx: Context, frames: np.ndarray, masks: np.ndarray | None, progress, warn: list[str]) -> tuple[Params, np.ndarray]:
    """Fit every frame. frames: (T, H, W, 3) uint8. Returns (params of all T frames,
    track support (T, K) in [0, 1] per node)."""
    T = len(frames)
    dev = ctx.intrinsics.device
    n_nodes = ctx.graph.n_nodes
    n_isl = ctx.graph.n_islands
    state = Params(torch.zeros(T, n_nodes, 3, device=dev), torch.zeros(T, n_nodes, 3, device=dev), torch.zeros(T, n_isl, 3, device=dev), torch.zeros(T, n_isl, 3, device=dev))
    support = np.zeros((T, n_nodes), np.float32)
    support[0] = 1.0
    sch = ctx.schedule
    norm = None
    if ctx.weights.photo > 0:
        norm = lambda a, b: normalized_frames(frames[a:b], sch.photo_sigma, dev)  # noqa: E731
        ctx = replace(ctx, photo=photo_reference(ctx, norm(0, 1)[0], None if masks is None else masks[0]))
    L = max(2, sch.window)
    starts = list(range(0, max(T - 1, 1), L - 1))
    n_steps = max(T - 1, 1)
    done = 0
    for wi, s in enumerate(starts):
        e = min(s + L - 1, T - 1)
        if e <= s:
            break
        verts_s = deformed_vertices(ctx, state.take(slice(s, s + 1)))[0]
        pts, face, bary = seed_tracks(ctx, verts_s, s, None if masks is None else masks[s])
        xy, valid = track_points(frames[s : e + 1], pts, None if masks is None else masks[s : e + 1], fb_thresh=sch.fb_thresh, anchor_every=sch.track_anchor)
        tracks = WindowTracks(
            PointSet.make(ctx.graph, ctx.verts, ctx.faces, face.to(dev), bary.to(dev)),
            torch.as_tensor(xy, device=dev),
            torch.as_tensor(valid, dtype=torch.float32, device=dev),
        )
        if ctx.photo is not None:
            tracks.images = norm(s, e + 1)
            tracks.photo_vis = torch.zeros(e - s + 1, len(ctx.photo.points), device=dev)
        # node support: how much of each node's skin is covered by live tracks
        node_mass = tracks.valid @ tracks.points.S  # (L, K)
        ref = node_mass[0].clamp_min(1e-6)
        track_vis = torch.ones(e - s + 1, len(tracks.points), device=dev)
        for t in range(s + 1, e + 1):
            # warm start from the previous frames, visibility from the warm start
            a = state.take(slice(t - 1, t))
            if t >= 2 and ctx.schedule.extrapolate:  # constant-velocity prediction: a per-frame fit then starts on the motion
                b = state.take(slice(t - 2, t - 1))
                a = Params(*(2 * x - y for x, y in zip((a.rot, a.trans, a.grot, a.gtr), (b.rot, b.trans, b.grot, b.gtr))))
            if ctx.rigid_prior is not None:  # the tracked rigid motion replaces the warm start's
                a = Params(a.rot, a.trans, ctx.rigid_prior[0][t : t + 1], ctx.rigid_prior[1][t : t + 1])
            state.put(slice(t, t + 1), a)
            pt = state.take(slice(t, t + 1))
            vt = deformed_vertices(ctx, pt)[0]
            with torch.no_grad():
                pc = transform_points(points_at(ctx, tracks.points, pt), ctx.poses[t : t + 1])[0]
            if ctx.photo is not None:
                with torch.no_grad():
                    pcp = transform_points(points_at(ctx, ctx.photo.points, pt), ctx.poses[t : t + 1])[0]
                    pc = torch.cat([pc, pcp], 0)
            _, vis_p = visibility(ctx, vt, t, pc)
            if ctx.photo is not None:
                n_tr = len(tracks.points)
                tracks.photo_vis[t - s] = vis_p[n_tr:].float()
                vis_p = vis_p[:n_tr]
            track_vis[t - s] = vis_p.float()
            tw = track_vis[t - s : t - s + 1]
            terms = {} if ctx.rigid_prior is not None else _optimise(ctx, [t], state, tracks, s, sch.rigid_iters, progress, tw, rigid_only=True)
            if sch.rigid_only:
                ctx.stats.setdefault("rigid_terms", []).append(terms)
            else:
                _optimise(ctx, [t], state, tracks, s, sch.frame_iters, progress, tw, use_photo=sch.photo_nonrigid)
            support[t] = (node_mass[t - s] / ref).clamp(0, 1).cpu().numpy()
            done += 1
            if progress is not None:
                progress.update(0.85 * done / n_steps)
        if sch.window_iters > 0 and e - s >= 2 and not sch.rigid_only:
            fr = list(range(s + 1, e + 1))
            ctx.stats[f"window{wi}"] = _optimise(ctx, fr, state, tracks, s, sch.window_iters, progress, track_vis[1:],
                                                 use_photo=sch.photo_window and sch.photo_nonrigid)
        if progress is not None:
            progress.update(0.85 * done / n_steps + 0.15 * (wi + 1) / len(starts))
    return state, support
