"""Optimisation schedule: windows of frames, warm-started per frame, refined per window.

The clip is split into windows of `window` frames that share their first frame with the
previous window's last. In each window, point tracks are seeded on the surface visible
at its first frame (as estimated so far) and chained through the window by optical flow;
every frame is then fitted alone (warm start from the previous frame), and finally all
frames of the window are refined jointly so the temporal terms can act both ways. Memory
is bounded by one window's flow and tracks, whatever the clip length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...render import rasterize, visible_vertices
from . import energies as E
from .model import DeformationGraph, axis_angle_to_matrix, deform, project, to_camera
from .silhouette import SilhouetteTargets


@dataclass
class Weights:
    track: float = 1.0
    inside: float = 1.0
    cover: float = 1.0
    arap: float = 4.0
    vel: float = 0.0
    acc: float = 0.5
    depth: float = 0.5
    rot_acc: float = 1.0


@dataclass
class Schedule:
    window: int = 8
    n_tracks: int = 1500
    n_surface: int = 1500
    frame_iters: int = 40
    window_iters: int = 40
    lr_rot: float = 0.02
    lr_trans: float = 0.01  # in units of the bbox diagonal
    fb_thresh: float = 1.0
    vis_size: int = 256  # long side of the visibility raster


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
        return PointSet(U.reshape(P, K * 3), S)

    def __len__(self) -> int:
        return int(self.S.shape[0])

    def positions(self, graph: DeformationGraph, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """rot (T,K,3,3), trans (T,K,3) -> (T, P, 3) mesh coordinates."""
        T, K = rot.shape[:2]
        o = graph.nodes + trans - torch.einsum("tkab,kb->tka", rot, graph.nodes)  # (T, K, 3)
        Rf = rot.permute(0, 2, 1, 3).reshape(T, 3, K * 3)  # [t, a, (k, b)]
        return torch.matmul(self.U, Rf.transpose(1, 2)) + torch.matmul(self.S, o)


@dataclass
class Context:
    graph: DeformationGraph
    verts: torch.Tensor  # (N, 3) rest vertices
    faces: torch.Tensor  # (F, 3) int64
    K: torch.Tensor  # (3, 3)
    poses: torch.Tensor  # (T, 4, 4) mesh-to-camera
    size: tuple[int, int]  # (W, H)
    sil: SilhouetteTargets | None
    surface: PointSet  # fixed area-uniform samples for the silhouette terms
    px: float  # pixels per mesh unit at the object's depth (converts 3D terms to pixels)
    diag: float
    weights: Weights
    schedule: Schedule
    stats: dict = field(default_factory=dict)


@dataclass
class WindowTracks:
    points: PointSet
    xy: torch.Tensor  # (L, P, 2) observed pixels for frames s..e
    valid: torch.Tensor  # (L, P) float


def frame_energy(
    ctx: Context, frames: list[int], rot_aa: torch.Tensor, trans: torch.Tensor, tracks: WindowTracks | None, s: int,
    prev_aa: torch.Tensor, prev_trans: torch.Tensor, track_w: torch.Tensor | None,
) -> tuple[torch.Tensor, dict]:
    """Total energy of `frames` (len T') given their params rot_aa/trans (T', K, 3) and the
    fixed params of the 2 frames before (prev_*: (2, K, 3)). track_w: (T', P) visibility."""
    W = ctx.weights
    g = ctx.graph
    R = axis_angle_to_matrix(rot_aa)
    fi = torch.as_tensor(frames, device=rot_aa.device)
    poses = ctx.poses[fi]
    terms = {}
    total = rot_aa.new_zeros(())
    if ctx.sil is not None:
        uv_s = project(to_camera(ctx.surface.positions(g, R, trans), poses), ctx.K)
        fw = ctx.sil.frame_w[fi]
        terms["inside"] = E.inside_energy(uv_s, ctx.sil.dist_out[fi], fw)
        terms["cover"] = E.coverage_energy(ctx.sil.samples[fi], ctx.sil.sample_w[fi], uv_s, fw)
        total = total + W.inside * terms["inside"] + W.cover * terms["cover"]
    if tracks is not None and len(tracks.points):
        li = fi - s
        uv_t = project(to_camera(tracks.points.positions(g, R, trans), poses), ctx.K)
        wt = tracks.valid[li] * (track_w if track_w is not None else 1.0)
        terms["track"] = E.track_energy(uv_t, tracks.xy[li], wt)
        total = total + W.track * terms["track"]
    px2 = ctx.px * ctx.px
    terms["arap"] = E.arap_energy(g.nodes, R, trans, g.edges, g.edge_w) * px2 / len(frames)
    total = total + W.arap * terms["arap"]
    all_t = torch.cat([prev_trans, trans], 0)
    all_r = torch.cat([prev_aa, rot_aa], 0)
    node_pos = g.nodes + all_t  # (2+T', K, 3)
    terms["temporal"] = E.temporal_energy(node_pos, W.vel, W.acc) * px2 + W.rot_acc * E.temporal_energy(all_r, 0.0, 1.0) * px2 * 0.01
    total = total + terms["temporal"]
    all_poses = torch.cat([ctx.poses[(fi[:1] - 1).clamp_min(0)], poses], 0)
    pc = to_camera(node_pos[1:], all_poses)
    terms["depth"] = E.depth_motion_energy(pc[1:], pc[:-1]) * px2
    total = total + W.depth * terms["depth"]
    return total, terms


def _optimise(ctx: Context, frames: list[int], rot: torch.Tensor, trans: torch.Tensor, tracks, s: int, iters: int, lr_scale: float, progress, track_w) -> dict:
    """Adam on the params of `frames` (in place in rot/trans, (T,K,3)); frames before are fixed."""
    f0 = frames[0]
    prev_idx = [max(f0 - 2, 0), max(f0 - 1, 0)]
    prev_aa, prev_t = rot[prev_idx].detach(), trans[prev_idx].detach()
    p_rot = rot[frames].detach().clone().requires_grad_(True)
    p_tr = (trans[frames].detach() / ctx.diag).clone().requires_grad_(True)
    sch = ctx.schedule
    opt = torch.optim.Adam([{"params": [p_rot], "lr": sch.lr_rot * lr_scale}, {"params": [p_tr], "lr": sch.lr_trans * lr_scale}])
    lam = lambda i: 0.5 * (1 + np.cos(np.pi * i / max(iters, 1))) * 0.9 + 0.1  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    terms = {}
    for it in range(iters):
        total, terms = frame_energy(ctx, frames, p_rot, p_tr * ctx.diag, tracks, s, prev_aa, prev_t, track_w)
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        if it % 8 == 0 and progress is not None:
            progress.check()
    with torch.no_grad():
        rot[frames] = p_rot.detach()
        trans[frames] = p_tr.detach() * ctx.diag
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def deformed_vertices(ctx: Context, rot_aa: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """(T', K, 3) params -> (T', N, 3) deformed mesh vertices."""
    g = ctx.graph
    return deform(ctx.verts, g.idx, g.w, g.nodes, axis_angle_to_matrix(rot_aa), trans)


def _vis_camera(ctx: Context) -> tuple[torch.Tensor, tuple[int, int]]:
    W, H = ctx.size
    s = min(1.0, ctx.schedule.vis_size / max(W, H))
    Ks = ctx.K.clone()
    Ks[:2] *= s
    return Ks, (max(1, round(W * s)), max(1, round(H * s)))


@torch.no_grad()
def visibility(ctx: Context, verts_t: torch.Tensor, t: int, pts_cam: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Z-buffer visibility at frame t: ((N,) bool for vertices, (P,) bool for extra points)."""
    Ks, size = _vis_camera(ctx)
    vc = to_camera(verts_t[None], ctx.poses[t : t + 1])[0]
    r = rasterize(vc, ctx.faces, Ks, size)
    vis_v = visible_vertices(r, vc, Ks, tol=2e-2)
    vis_p = visible_vertices(r, pts_cam, Ks, tol=2e-2) if pts_cam is not None else None
    return vis_v, vis_p


@torch.no_grad()
def seed_tracks(ctx: Context, verts_s: torch.Tensor, s: int, mask: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Pixels on the estimated visible surface at frame s (inside the mask), on a grid
    sized for ~n_tracks points. Returns (points (P,2) float32, face (P,), bary (P,3))."""
    W, H = ctx.size
    vc = to_camera(verts_s[None], ctx.poses[s : s + 1])[0]
    r = rasterize(vc, ctx.faces, ctx.K, (W, H))
    cover = r.mask.cpu().numpy()
    if mask is not None:
        cover &= mask
    n = int(cover.sum())
    if n == 0:
        return np.zeros((0, 2), np.float32), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3)
    stride = max(1, int(np.sqrt(n / ctx.schedule.n_tracks)))
    grid = np.zeros_like(cover)
    grid[stride // 2 :: stride, stride // 2 :: stride] = True
    ys, xs = np.nonzero(cover & grid)
    yi, xi = torch.as_tensor(ys, device=ctx.K.device), torch.as_tensor(xs, device=ctx.K.device)
    face = r.face_id[yi, xi]
    bary = r.bary[yi, xi]
    pts = np.stack([xs, ys], 1).astype(np.float32) + 0.5
    return pts, face, bary


def solve(ctx: Context, frames: np.ndarray, masks: np.ndarray | None, progress, warn: list[str]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Fit every frame. frames: (T, H, W, 3) uint8. Returns (rot (T,K,3), trans (T,K,3),
    track support (T, K) in [0, 1] per node)."""
    from ...flow import track_points

    T = len(frames)
    dev = ctx.K.device
    K = ctx.graph.n_nodes
    rot = torch.zeros(T, K, 3, device=dev)
    trans = torch.zeros(T, K, 3, device=dev)
    support = np.zeros((T, K), np.float32)
    support[0] = 1.0
    sch = ctx.schedule
    L = max(2, sch.window)
    starts = list(range(0, max(T - 1, 1), L - 1))
    n_steps = max(T - 1, 1)
    done = 0
    for wi, s in enumerate(starts):
        e = min(s + L - 1, T - 1)
        if e <= s:
            break
        verts_s = deformed_vertices(ctx, rot[s : s + 1], trans[s : s + 1])[0]
        pts, face, bary = seed_tracks(ctx, verts_s, s, None if masks is None else masks[s])
        xy, valid = track_points(frames[s : e + 1], pts, None if masks is None else masks[s : e + 1], fb_thresh=sch.fb_thresh)
        tracks = WindowTracks(
            PointSet.make(ctx.graph, ctx.verts, ctx.faces, face.to(dev), bary.to(dev)),
            torch.as_tensor(xy, device=dev),
            torch.as_tensor(valid, dtype=torch.float32, device=dev),
        )
        # node support: how much of each node's skin is covered by live tracks
        node_mass = torch.zeros(e - s + 1, K, device=dev)
        for li in range(e - s + 1):
            node_mass[li] = tracks.valid[li] @ tracks.points.S
        ref = node_mass[0].clamp_min(1e-6)
        track_vis = torch.ones(e - s + 1, len(tracks.points), device=dev)
        for t in range(s + 1, e + 1):
            # warm start: previous frame's pose, then per-frame fit
            rot[t] = rot[t - 1]
            trans[t] = trans[t - 1]
            vt = deformed_vertices(ctx, rot[t : t + 1], trans[t : t + 1])[0]
            with torch.no_grad():
                R1 = axis_angle_to_matrix(rot[t : t + 1])
                pc = to_camera(tracks.points.positions(ctx.graph, R1, trans[t : t + 1]), ctx.poses[t : t + 1])[0]
            _, vis_p = visibility(ctx, vt, t, pc)
            track_vis[t - s] = vis_p.float()
            _optimise(ctx, [t], rot, trans, tracks, s, sch.frame_iters, 1.0, progress, track_vis[t - s : t - s + 1])
            support[t] = (node_mass[t - s] / ref).clamp(0, 1).cpu().numpy()
            done += 1
            if progress is not None:
                progress.update(0.85 * done / n_steps)
        if sch.window_iters > 0 and e - s >= 2:
            fr = list(range(s + 1, e + 1))
            ctx.stats[f"window{wi}"] = _optimise(ctx, fr, rot, trans, tracks, s, sch.window_iters, 0.5, progress, track_vis[1:])
        if progress is not None:
            progress.update(0.85 * done / n_steps + 0.15 * (wi + 1) / len(starts))
    return rot, trans, support
