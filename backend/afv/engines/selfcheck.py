"""Self-check of an engine's result against evidence held out of its fit, with fallback.

Any engine may call `self_check` on its candidate displacements before returning them. The
candidate competes, frame by frame, with two simpler hypotheses:
  still  zero motion (the rest pose),
  rigid  one rigid motion per connected part and frame (Procrustes fit of the candidate),
and is scored against evidence the engine did not fit:
  - silhouette IoU of each hypothesis rendered with the camera against the mask,
  - held-out 2D flow tracks: fresh tracks (own seed points, own chaining from frame 0) bound
    to the rest surface through the z-buffer, compared with each hypothesis's reprojection.
Per frame the cost is (1 - IoU) / 1 % + track error / (1 % of the object size in pixels),
each capped, so one unit is a just-visible improvement; the simplest
hypothesis within `margin` of the best is chosen. Costs are smoothed over time and short runs
are absorbed (hysteresis), and the output blends over a few frames where the choice changes.

Depth: monocular evidence does not see motion along camera rays, so the output is capped
there. Per part and frame, the centroid's depth may change only as far as the silhouette's
scale change (sqrt of the mask-area ratio) explains, plus `depth_slack`; every vertex's depth
relative to its part's centroid may change by at most `rel_depth` x the part's size. Excess
is removed by sliding along the ray (the projection stays where it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..camera import Camera
from ..deform import weld
from ..flow import track_points
from ..geometry.raster import rasterize
from ..mesh import Mesh

HYPOTHESES = ("still", "rigid", "fitted")


@dataclass
class SelfCheckOptions:
    margin: float = 1.0  # cost units: a more complex hypothesis must beat the simpler one by this much
    iou_unit: float = 0.01  # one cost unit of silhouette: 1 % IoU
    track_unit: float = 0.01  # one cost unit of held-out track error: 1 % of the object's size in pixels
    track_cap: float = 20.0  # track cost ceiling (units): lost tracks cannot outvote the silhouette
    track_weight: float = 1.0  # weight of the track cost against the silhouette cost
    n_tracks: int = 400  # held-out tracks seeded at frame 0
    min_tracks: int = 8  # fewer valid tracks in a frame: that frame is judged on the silhouette alone
    smooth: float = 1.0  # Gaussian sigma (frames) on the cost curves before deciding
    min_run: int = 3  # shorter runs of one choice are absorbed by their neighbours
    blend: int = 2  # frames over which the output cross-fades where the choice changes
    depth_slack: float = 0.03  # allowed unexplained centroid depth change, fraction of the camera distance
    rel_depth: float = 0.6  # allowed change of a vertex's depth relative to its part centroid, x part size
    raster_size: int = 192  # long side (px) at which silhouettes are compared


@dataclass
class SelfCheck:
    displacements: np.ndarray  # (T, N, 3) float32 chosen / blended output
    confidence: np.ndarray  # (T, N) float32
    choice: np.ndarray  # (T,) int: 0 still, 1 rigid, 2 fitted (after hysteresis)
    iou: np.ndarray  # (3, T) silhouette IoU of still, rigid, fitted
    track_px: np.ndarray  # (3, T) median held-out track error in pixels (nan: too few tracks)
    depth_capped: np.ndarray  # (T,) fraction of vertices whose depth was capped
    warnings: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None  # (3, T) blend weights of still, rigid, fitted (rows sum to 1 per frame)
    scale: np.ndarray | None = None  # (T,) silhouette scale against frame 0 (sqrt of the mask-area ratio)

    def info(self) -> dict:
        r = lambda a: [None if not np.isfinite(x) else round(float(x), 3) for x in a]  # noqa: E731
        return {
            "choice": [HYPOTHESES[c] for c in self.choice],
            "iou": {h: r(self.iou[i]) for i, h in enumerate(HYPOTHESES)},
            "track_px": {h: r(self.track_px[i]) for i, h in enumerate(HYPOTHESES)},
            "depth_capped": r(self.depth_capped),
        }


# ----------------------------------------------------------------------------- hypotheses


def vertex_parts(mesh: Mesh) -> np.ndarray:
    """(N,) int64 connected part of each vertex (seams welded)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    w = weld(mesh.vertices, mesh.faces)
    f, m = w.faces, len(w.vertices)
    a, b = np.concatenate([f[:, 0], f[:, 1], f[:, 2]]), np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    _, lab = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(m, m)), directed=False)
    return lab[w.index].astype(np.int64)


def rigid_hypothesis(rest: np.ndarray, positions: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Best rigid motion per part and frame (Kabsch) of `positions`.

    rest: (N, 3); positions: (T, N, 3); parts: (N,) int -> (T, N, 3) float32.
    """
    out = np.empty_like(positions, dtype=np.float32)
    for p in np.unique(parts):
        idx = np.nonzero(parts == p)[0]
        X = rest[idx].astype(np.float64)
        cx = X.mean(0)
        Y = positions[:, idx].astype(np.float64)  # (T, n, 3)
        cy = Y.mean(1, keepdims=True)
        H = np.einsum("na,tnb->tab", X - cx, Y - cy)
        U, _, Vt = np.linalg.svd(H)
        d = np.sign(np.linalg.det(np.einsum("tab,tbc->tac", U, Vt)))
        D = np.zeros_like(H)
        D[:, 0, 0], D[:, 1, 1], D[:, 2, 2] = 1, 1, d
        R = np.einsum("tba,tbc,tdc->tad", Vt, D, U)  # V D U^T: maps rest to current
        out[:, idx] = (np.einsum("tab,nb->tna", R, X - cx) + cy).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- evidence


@dataclass
class HeldOutTracks:
    face: np.ndarray  # (P,) int64 face each track starts on
    bary: np.ndarray  # (P, 3) float32 its barycentric coordinates (rest surface)
    xy: np.ndarray  # (T, P, 2) float32 tracked pixels
    valid: np.ndarray  # (T, P) bool


def held_out_tracks(mesh: Mesh, camera: Camera, frames: np.ndarray, masks: np.ndarray | None, n: int, seed: int) -> HeldOutTracks | None:
    """Fresh flow tracks from random visible surface pixels of frame 0, bound to the rest surface
    through the z-buffer. The seed differs from any engine's, so these points were not fitted."""
    T = len(frames)
    W, H = camera.image_size
    M = camera.pose(0)
    vc = torch.as_tensor(mesh.vertices @ M[:3, :3].T + M[:3, 3], dtype=torch.float32)
    r = rasterize(vc, torch.as_tensor(mesh.faces).long(), torch.as_tensor(camera.K, dtype=torch.float32), (W, H))
    ok = r.mask.numpy().copy()
    if masks is not None:
        import cv2

        ok &= cv2.erode(masks[0].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ys, xs = np.nonzero(ok)
    if len(xs) < 4:
        return None
    rng = np.random.default_rng(seed + 7919)
    pick = rng.choice(len(xs), min(n, len(xs)), replace=False)
    ys, xs = ys[pick], xs[pick]
    xy, valid = track_points(frames, np.stack([xs, ys], 1).astype(np.float32) + 0.5, masks)
    face = r.face_id.numpy()[ys, xs].astype(np.int64)
    bary = r.bary.numpy()[ys, xs].astype(np.float32)
    return HeldOutTracks(face, bary, xy, valid)


def _project(p: np.ndarray, M: np.ndarray, K: np.ndarray) -> np.ndarray:
    c = p @ M[:3, :3].T + M[:3, 3]
    z = np.maximum(c[..., 2:3], 1e-6)
    return (c[..., :2] / z) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def silhouette_iou(positions: np.ndarray, faces: np.ndarray, camera: Camera, masks: np.ndarray, size: int) -> np.ndarray:
    """positions: (T, N, 3) mesh coords -> (T,) IoU with masks (T, H, W), compared at `size` px."""
    import cv2

    W, H = camera.image_size
    s = min(1.0, size / max(W, H))
    w, h = max(1, round(W * s)), max(1, round(H * s))
    K = np.diag([w / W, h / H, 1.0]) @ camera.K
    Kt = torch.as_tensor(K, dtype=torch.float32)
    ft = torch.as_tensor(faces).long()
    out = np.zeros(len(positions))
    for t, p in enumerate(positions):
        M = camera.pose(t)
        vc = torch.as_tensor(p @ M[:3, :3].T + M[:3, 3], dtype=torch.float32)
        m = rasterize(vc, ft, Kt, (w, h)).mask.numpy()
        g = cv2.resize(masks[t].astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0 if s < 1 else masks[t]
        u = (m | g).sum()
        out[t] = (m & g).sum() / u if u else 1.0
    return out


def track_error(positions: np.ndarray, faces: np.ndarray, camera: Camera, tr: HeldOutTracks, min_tracks: int) -> np.ndarray:
    """(T,) median pixel distance between the tracks and the hypothesis's reprojection of their
    surface points (nan where fewer than min_tracks are alive)."""
    out = np.full(len(positions), np.nan)
    for t, p in enumerate(positions):
        v = tr.valid[t]
        if v.sum() < min_tracks:
            continue
        pts = (p[faces[tr.face[v]]] * tr.bary[v, :, None]).sum(1)
        out[t] = np.median(np.linalg.norm(_project(pts, camera.pose(t), camera.K) - tr.xy[t, v], axis=1))
    return out


# ----------------------------------------------------------------------------- decision


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, axis=-1, mode="nearest") if sigma > 0 and x.shape[-1] > 1 else x


def decide(cost: np.ndarray, margin: float, smooth: float, min_run: int) -> np.ndarray:
    """cost: (3, T) per hypothesis (simplest first) -> (T,) choice: the simplest hypothesis
    whose smoothed cost is within `margin` of the best; runs shorter than min_run frames take
    the choice of the longer neighbouring run (no flicker). Frame 0 (rest) is 'still'."""
    c = _smooth(cost, smooth)
    best = c.min(0)
    choice = np.argmax(c <= best + margin, axis=0)
    T = len(choice)
    for _ in range(T):
        runs = _runs(choice)
        short = [r for r in runs if r[2] - r[1] < min_run and len(runs) > 1]
        if not short:
            break
        v, a, b = min(short, key=lambda r: r[2] - r[1])
        i = runs.index((v, a, b))
        nb = [runs[j] for j in (i - 1, i + 1) if 0 <= j < len(runs)]
        choice[a:b] = max(nb, key=lambda r: r[2] - r[1])[0]
    return choice


def _runs(x: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values."""
    out, s = [], 0
    for i in range(1, len(x) + 1):
        if i == len(x) or x[i] != x[s]:
            out.append((int(x[s]), s, i))
            s = i
    return out


def blend_weights(choice: np.ndarray, width: int) -> np.ndarray:
    """(T,) choice -> (3, T) weights: one-hot, box-filtered over 2*width+1 frames (sum 1)."""
    T = len(choice)
    one = np.zeros((3, T))
    one[choice, np.arange(T)] = 1
    if width <= 0 or T < 2:
        return one
    k = np.ones(2 * width + 1) / (2 * width + 1)
    pad = np.pad(one, ((0, 0), (width, width)), mode="edge")
    return np.stack([np.convolve(pad[h], k, mode="valid") for h in range(3)])


# ----------------------------------------------------------------------------- depth cap


def track_scale(tr: HeldOutTracks | None, track_part: np.ndarray | None, part: int, T: int, min_tracks: int) -> np.ndarray:
    """(T,) image scale of one part's held-out track cloud against frame 0 (RMS spread of the
    same tracks), nan where too few of them survive: a per-part cue the union mask lacks."""
    out = np.full(T, np.nan)
    if tr is None or track_part is None:
        return out
    sel = track_part == part
    for t in range(1, T):
        v = sel & tr.valid[t]
        if v.sum() < min_tracks:
            continue
        a, b = tr.xy[0, v], tr.xy[t, v]
        s0 = np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean())
        out[t] = np.sqrt(((b - b.mean(0)) ** 2).sum(1).mean()) / max(s0, 1e-6)
    return out


def cap_depth(rest: np.ndarray, positions: np.ndarray, parts: np.ndarray, camera: Camera, scale: np.ndarray, slack: float, rel: float,
              part_scale: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Limit motion along camera rays to what the silhouette supports.

    rest: (N, 3); positions: (T, N, 3); parts: (N,); scale: (T,) silhouette scale of frame t
    against frame 0 (sqrt of the mask-area ratio; 1 = unchanged); part_scale: {part: (T,)}
    optional extra per-part scale cues (track spread; nan = none). Per part and frame the
    centroid's camera depth z_t may lie between z_0 and z_0 / scale_t (any cue) widened by
    slack * z_0; each
    vertex's depth relative to its part centroid may change by at most rel x the part's size.
    Points slide along their rays, so their projections do not move.
    Returns (capped positions (T, N, 3) float32, (T,) fraction of vertices moved).
    """
    out = positions.astype(np.float64).copy()
    moved = np.zeros(positions.shape[:2], bool)
    for t in range(1, len(positions)):
        M0, Mt = camera.pose(0), camera.pose(t)
        R, tt = Mt[:3, :3], Mt[:3, 3]
        for p in np.unique(parts):
            idx = np.nonzero(parts == p)[0]
            r0 = rest[idx] @ M0[:3, :3].T + M0[:3, 3]
            z0 = r0[:, 2].mean()
            c = out[t, idx] @ R.T + tt  # camera coordinates
            # relative depth first (shape), then the centroid (placement), so the second cannot undo the first
            size = np.linalg.norm(rest[idx].max(0) - rest[idx].min(0))
            d_rel = (c[:, 2] - c[:, 2].mean()) - (r0[:, 2] - z0)
            lim = rel * size
            bad = np.abs(d_rel) > lim
            if bad.any():
                zt = c[bad, 2] - np.sign(d_rel[bad]) * (np.abs(d_rel[bad]) - lim)
                c[bad] *= (zt / np.maximum(c[bad, 2], 1e-6))[:, None]
                moved[t, idx[bad]] = True
            cen = c.mean(0)
            cues = [scale[t]] + ([part_scale[p][t]] if part_scale and p in part_scale and np.isfinite(part_scale[p][t]) else [])
            targets = [z0] + [z0 / max(c_, 1e-3) for c_ in cues]
            lo, hi = min(targets) - slack * z0, max(targets) + slack * z0
            zc = float(np.clip(cen[2], lo, hi))
            if zc != cen[2] and cen[2] > 1e-6:
                c = c * (zc / cen[2])  # slide the part along the rays (about the camera centre): projections stay
                moved[t, idx] = True
            out[t, idx] = (c - tt) @ R  # back to mesh coordinates
    return out.astype(np.float32), moved.mean(1)


# ----------------------------------------------------------------------------- entry point


def self_check(
    mesh: Mesh,
    camera: Camera,
    frames: np.ndarray,
    masks: np.ndarray | None,
    displacements: np.ndarray,
    confidence: np.ndarray | None = None,
    options: SelfCheckOptions | None = None,
    seed: int = 0,
    tracks: HeldOutTracks | None = None,
    label: str = "the fit",
    rigid_positions: np.ndarray | None = None,
    cap: bool = True,
) -> SelfCheck:
    """Check candidate displacements (T, N, 3) against held-out evidence; fall back per frame.

    frames: (T, H, W, 3) uint8 at the camera's resolution; masks: (T, H, W) bool or None
    (without masks only the tracks judge; without either the candidate is kept, with a warning).
    rigid_positions: (T, N, 3) the engine's own rigid hypothesis (default: per-part Procrustes
    of the candidate); cap: apply the depth cap (engines that bound depth themselves, e.g.
    through fixed bone lengths, may pass False and use `weights` to blend their parameters).
    """
    o = options or SelfCheckOptions()
    camera = camera.with_frames(len(displacements))
    T, N = displacements.shape[:2]
    rest = mesh.vertices.astype(np.float32)
    parts = vertex_parts(mesh)
    cand = rest[None] + displacements.astype(np.float32)
    rigid = rigid_hypothesis(rest, cand, parts) if rigid_positions is None else np.asarray(rigid_positions, np.float32)
    hyps = [np.repeat(rest[None], T, 0), rigid, cand]
    warnings: list[str] = []
    if tracks is None and T >= 2:
        tracks = held_out_tracks(mesh, camera, frames, masks, o.n_tracks, seed)
    iou = np.full((3, T), np.nan)
    px = np.full((3, T), np.nan)
    if masks is not None:
        for h, P in enumerate(hyps):
            iou[h] = silhouette_iou(P, mesh.faces, camera, masks, o.raster_size)
    if tracks is not None:
        for h, P in enumerate(hyps):
            px[h] = track_error(P, mesh.faces, camera, tracks, o.min_tracks)
    if masks is not None:
        area = masks.reshape(T, -1).sum(1).astype(np.float64)
        obj_px = np.sqrt(np.maximum(area, 1.0))
        scale = np.sqrt(np.maximum(area, 1.0) / max(area[0], 1.0))
    else:
        obj_px = np.full(T, np.sqrt(camera.image_size[0] * camera.image_size[1]) / 4)
        scale = np.ones(T)
    cost = np.zeros((3, T))
    if masks is not None:
        cost += (1 - np.nan_to_num(iou, nan=0.0)) / o.iou_unit
    trk = np.where(np.isfinite(px), np.minimum(px / (o.track_unit * obj_px[None]), o.track_cap), 0.0)
    trk[:, ~np.isfinite(px).all(0)] = 0.0  # a frame is judged on tracks only where all hypotheses have them
    cost += o.track_weight * trk
    if masks is None and tracks is None:
        choice = np.full(T, 2)
        warnings.append(f"{label} could not be checked (no masks and no trackable texture); returned unchecked")
    else:
        choice = decide(cost, o.margin, o.smooth, o.min_run)
        choice[0] = choice[1] if T > 1 else 2  # frame 0 is the rest pose under every hypothesis
    w = blend_weights(choice, o.blend)
    out = sum(w[h][:, None, None] * hyps[h] for h in range(3)).astype(np.float32)
    part_scale = None
    if tracks is not None:
        tp = parts[mesh.faces[tracks.face, 0]]
        part_scale = {int(p): track_scale(tracks, tp, int(p), T, o.min_tracks) for p in np.unique(parts)}
    capped = np.zeros(T)
    if cap:
        out, capped = cap_depth(rest, out, parts, camera, scale, o.depth_slack, o.rel_depth, part_scale)
    out[0] = rest
    disp = out - rest[None]
    base = np.ones((T, N), np.float32) if confidence is None else np.asarray(confidence, np.float32)
    level = np.array([0.2, 0.5, 1.0])  # what each hypothesis says about the fitted detail
    conf = base * (w.T @ level)[:, None].astype(np.float32)
    if masks is not None:
        conf *= np.clip(np.nan_to_num(iou[2], nan=1.0), 0.2, 1.0)[:, None].astype(np.float32)
    conf = np.clip(conf, 0, 1)
    for v, a, b in _runs(choice[1:]):
        if v == 2:
            continue
        a, b = a + 1, b + 1
        why = f"silhouette IoU {np.nanmean(iou[2, a:b]):.2f} for {label} vs {np.nanmean(iou[v, a:b]):.2f}" if masks is not None else ""
        if np.isfinite(px[:, a:b]).any():
            why += f"{'; ' if why else ''}held-out tracks {np.nanmean(px[2, a:b]):.1f} px vs {np.nanmean(px[v, a:b]):.1f} px"
        warnings.append(f"frames {a}-{b - 1} fell back to {HYPOTHESES[v]} motion: {label} did not explain the held-out evidence better ({why})")
    if capped.max() > 0.05:
        bad = np.nonzero(capped > 0.05)[0]
        warnings.append(f"motion along the camera rays was capped in {len(bad)} frame(s) (first: {int(bad[0])}): the silhouette does not support it")
    return SelfCheck(disp.astype(np.float32), conf, choice, iou, px, capped, warnings, w, scale)
