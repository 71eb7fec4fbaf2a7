"""Self-check of an engine's result against evidence held out of its fit, with fallback.

Any engine may call `self_check` on its candidate displacements before returning them. The
candidate competes, frame by frame, with two simpler hypotheses:
  still  zero motion (the rest pose, or frame 0's pose held when an engine posed frame 0),
  rigid  the engine's own rigid hypothesis (e.g. `articulated`: the root bones' motion only),
and is scored against evidence the engine did not fit:
  - silhouette IoU of each hypothesis rendered with the camera against the mask,
  - held-out 2D flow tracks: fresh tracks (own seed points, own chaining from frame 0) bound
    to the surface of frame 0 (the rest pose unless an engine posed frame 0) through the
    z-buffer, compared with each hypothesis's reprojection.
Per frame the cost is (1 - IoU) / 1 % + track error / (1 % of the object size in pixels),
each capped, so one unit is a just-visible improvement; the simplest
hypothesis within `margin` of the best is chosen. Costs are smoothed over time and short runs
are absorbed (hysteresis). The result is per-frame blend weights of the three hypotheses
(cross-faded over a few frames where the choice changes): the engine applies them to its own
parameters, so its output stays consistent with its model (bone rotations with vertex tracks).

Depth: this 2D evidence does not see motion along camera rays. The check reports the
silhouette's scale against frame 0 (sqrt of the mask-area ratio) for the engine to bound the
depth it returns (`articulated` clamps its root depth with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..camera import Camera
from ..flow import track_points
from ..geometry.projection import project_points, transform_points
from ..geometry.raster import rasterize
from ..geometry.silhouette import camera_mask_iou
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
    min_run: int = 3  # shorter runs of one choice are absorbed by their neighbours ...
    keep: float = 3.0  # ... unless they win by more than this (cost units summed over the run)
    blend: int = 2  # frames over which the weights cross-fade where the choice changes
    raster_size: int = 192  # long side (px) at which silhouettes are compared


@dataclass
class SelfCheck:
    weights: np.ndarray  # (3, T) blend weights of still, rigid, fitted (columns sum to 1)
    confidence: np.ndarray  # (T, N) float32: what the weights keep of the fit x its silhouette IoU
    choice: np.ndarray  # (T,) int: 0 still, 1 rigid, 2 fitted (after hysteresis)
    iou: np.ndarray  # (3, T) silhouette IoU of still, rigid, fitted (nan without masks)
    track_px: np.ndarray  # (3, T) median held-out track error in pixels (nan: too few tracks)
    scale: np.ndarray | None  # (T,) silhouette scale against frame 0 (sqrt of the mask-area ratio); None without masks
    warnings: list[str] = field(default_factory=list)

    def info(self) -> dict:
        r = lambda a: [None if not np.isfinite(x) else round(float(x), 3) for x in a]  # noqa: E731
        return {
            "choice": [HYPOTHESES[c] for c in self.choice],
            "iou": {h: r(self.iou[i]) for i, h in enumerate(HYPOTHESES)},
            "track_px": {h: r(self.track_px[i]) for i, h in enumerate(HYPOTHESES)},
        }


# ----------------------------------------------------------------------------- evidence


@dataclass
class HeldOutTracks:
    face: np.ndarray  # (P,) int64 face each track starts on
    bary: np.ndarray  # (P, 3) float32 its barycentric coordinates (rest surface)
    xy: np.ndarray  # (T, P, 2) float32 tracked pixels
    valid: np.ndarray  # (T, P) bool


def held_out_tracks(mesh: Mesh, camera: Camera, frames: np.ndarray, masks: np.ndarray | None, n: int, seed: int,
                    stop: Callable[[], bool] | None = None, vertices0: np.ndarray | None = None) -> HeldOutTracks | None:
    """Fresh flow tracks from random visible surface pixels of frame 0, bound to the surface
    through the z-buffer: the rest surface, or vertices0 (N, 3) when an engine posed frame 0
    (first_pose). The seed differs from any engine's, so these points were not fitted.
    stop: checked between frame pairs (a job cancelled while this ran in a thread); None when
    stopped. Host only (numpy, OpenCV, torch on the CPU): it may run beside a CUDA graph capture."""
    W, H = camera.image_size
    M = camera.pose(0)
    v0 = mesh.vertices if vertices0 is None else vertices0
    vc = torch.as_tensor(transform_points(v0, M), dtype=torch.float32)
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
    xy, valid = track_points(frames, np.stack([xs, ys], 1).astype(np.float32) + 0.5, masks, stop=stop)
    if stop is not None and stop():
        return None
    face = r.face_id.numpy()[ys, xs].astype(np.int64)
    bary = r.bary.numpy()[ys, xs].astype(np.float32)
    return HeldOutTracks(face, bary, xy, valid)


def silhouette_iou(positions: np.ndarray, faces: np.ndarray, camera: Camera, masks: np.ndarray, size: int,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """positions: (T, N, 3) mesh coords -> (T,) IoU with masks (T, H, W), compared at `size` px."""
    return np.array([camera_mask_iou(p, faces, camera.K, camera.pose(t), masks[t], device, long_side=size) for t, p in enumerate(positions)])


def track_error(positions: np.ndarray, faces: np.ndarray, camera: Camera, tr: HeldOutTracks, min_tracks: int) -> np.ndarray:
    """(T,) median pixel distance between the tracks and the hypothesis's reprojection of their
    surface points (nan where fewer than min_tracks are alive)."""
    out = np.full(len(positions), np.nan)
    for t, p in enumerate(positions):
        v = tr.valid[t]
        if v.sum() < min_tracks:
            continue
        pts = (p[faces[tr.face[v]]] * tr.bary[v, :, None]).sum(1)
        out[t] = np.median(np.linalg.norm(project_points(transform_points(pts, camera.pose(t)), camera.K) - tr.xy[t, v], axis=1))
    return out


# ----------------------------------------------------------------------------- decision


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, axis=-1, mode="nearest") if sigma > 0 and x.shape[-1] > 1 else x


def decide(cost: np.ndarray, margin: float, smooth: float, min_run: int, keep: float = np.inf) -> np.ndarray:
    """cost: (H, T) per hypothesis (simplest first) -> (T,) choice (row index): the simplest hypothesis
    whose smoothed cost is within `margin` of the best; runs shorter than min_run frames take
    the choice of the longer neighbouring run (no flicker), unless the run's choice beats that
    neighbour's by more than `keep` cost units summed over the run: hysteresis smooths close
    calls, it does not overrule clear evidence (e.g. the last frame of a loop, back at rest)."""
    c = _smooth(cost, smooth)
    best = c.min(0)
    choice = np.argmax(c <= best + margin, axis=0)
    T = len(choice)
    kept: set[tuple[int, int]] = set()
    for _ in range(T):
        runs = _runs(choice)
        short = [r for r in runs if r[2] - r[1] < min_run and len(runs) > 1 and (r[1], r[2]) not in kept]
        if not short:
            break
        v, a, b = min(short, key=lambda r: r[2] - r[1])
        i = runs.index((v, a, b))
        nb = [runs[j] for j in (i - 1, i + 1) if 0 <= j < len(runs)]
        other = max(nb, key=lambda r: r[2] - r[1])[0]
        if (c[other, a:b] - c[v, a:b]).sum() > keep:
            kept.add((a, b))
            continue
        choice[a:b] = other
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


def depth_shift(centroids: np.ndarray, mesh_to_camera: np.ndarray, scale: np.ndarray | None, slack: float = 0.03) -> np.ndarray:
    """Keep an object's depth within what its silhouette scale explains.

    centroids: (T, 3) the posed object's centroid per frame, mesh coordinates (frame 0: the depth reference);
    mesh_to_camera: (T, 4, 4); scale: (T,) `SelfCheck.scale`, None without masks (nothing is
    known: no shift). The centroid's camera depth may lie in [z0, z0 / scale] widened by
    `slack` x z0, z0 its frame-0 depth (a grown silhouette allows nearer, a shrunk one farther,
    an unchanged one neither). Returns (T, 3) shifts in mesh coordinates that slide each
    centroid along its own camera ray; zero where it is within bounds or behind the camera."""
    c = np.asarray(centroids, np.float64)
    if scale is None:
        return np.zeros_like(c)
    M = np.asarray(mesh_to_camera, np.float64)
    cc = transform_points(c[:, None], M)[:, 0]  # camera coordinates
    z0 = cc[0, 2]
    sc = np.maximum(np.asarray(scale, np.float64), 1e-3)
    lo = np.minimum(z0, z0 / sc) - slack * z0
    hi = np.maximum(z0, z0 / sc) + slack * z0
    z = cc[:, 2]
    front = z > 1e-6  # a centroid behind the camera has no ray to slide along
    zt = np.clip(z, lo, hi)
    shift_c = cc * np.where(front, zt / np.where(front, z, 1.0) - 1, 0.0)[:, None]
    return np.einsum("tba,tb->ta", M[:, :3, :3], shift_c)  # camera axes -> mesh axes


# ----------------------------------------------------------------------------- entry point


def self_check(
    mesh: Mesh,
    camera: Camera,
    frames: np.ndarray,
    masks: np.ndarray | None,
    displacements: np.ndarray,
    *,
    rigid_positions: np.ndarray | None,
    label: str,
    seed: int = 0,
    options: SelfCheckOptions | None = None,
    held_out: Callable[[], HeldOutTracks | None] | None = None,
    device: torch.device | str = "cpu",
    still_positions: np.ndarray | None = None,
) -> SelfCheck:
    """Check candidate displacements (T, N, 3) against held-out evidence; fall back per frame.

    frames: (T, H, W, 3) uint8 at the camera's resolution; masks: (T, H, W) bool or None
    (without masks only the tracks judge; without either the candidate is kept, with a warning).
    rigid_positions: (T, N, 3) the engine's own rigid hypothesis (mesh coordinates), or None
    when the candidate is itself rigid (only the still mesh competes); label names the candidate
    in warnings ("the articulated fit"). Depth is bounded by the engine
    (with `SelfCheck.scale`), not here. held_out: returns the held-out tracks when they were
    computed ahead (`held_out_tracks` with `options.n_tracks`, e.g. in a thread while the fit
    ran: the flow needs only the frames); default: computed here. device: where the
    hypotheses' silhouettes are rasterised. still_positions: (N, 3) the still hypothesis when it
    is not the rest mesh (an engine that posed frame 0, first_pose: that pose held); frame 0 then
    keeps the candidate.
    """
    o = options or SelfCheckOptions()
    camera = camera.with_frames(len(displacements))
    T, N = displacements.shape[:2]
    rest = mesh.vertices.astype(np.float32)
    candidate = rest[None] + displacements.astype(np.float32)
    rigid = candidate if rigid_positions is None else np.asarray(rigid_positions, np.float32)
    if rigid.shape != (T, N, 3):
        raise ValueError(f"rigid_positions must be {(T, N, 3)}, got {rigid.shape}")
    still = rest if still_positions is None else np.asarray(still_positions, np.float32)
    hyps = [np.repeat(still[None], T, 0), rigid, candidate]
    warnings: list[str] = []
    if T < 2:
        tracks = None
    else:
        tracks = held_out() if held_out is not None else held_out_tracks(mesh, camera, frames, masks, o.n_tracks, seed)
    iou = np.full((3, T), np.nan)
    px = np.full((3, T), np.nan)
    judged = [0, 2] if rigid_positions is None else [0, 1, 2]
    if masks is not None:
        for h in judged:
            iou[h] = silhouette_iou(hyps[h], mesh.faces, camera, masks, o.raster_size, device)
    if tracks is not None:
        for h in judged:
            px[h] = track_error(hyps[h], mesh.faces, camera, tracks, o.min_tracks)
    if masks is not None:
        area = masks.reshape(T, -1).sum(1).astype(np.float64)
        obj_px = np.sqrt(np.maximum(area, 1.0))
        scale = np.sqrt(np.maximum(area, 1.0) / max(area[0], 1.0))
    else:
        obj_px = np.full(T, np.sqrt(camera.image_size[0] * camera.image_size[1]) / 4)
        scale = None
    cost = np.zeros((3, T))
    if masks is not None:
        cost += (1 - np.nan_to_num(iou, nan=0.0)) / o.iou_unit
    trk = np.where(np.isfinite(px), np.minimum(px / (o.track_unit * obj_px[None]), o.track_cap), 0.0)
    trk[:, ~np.isfinite(px[judged]).all(0)] = 0.0  # a frame is judged on tracks only where all judged hypotheses have them
    cost += o.track_weight * trk
    if masks is None and tracks is None:
        choice = np.full(T, 2)
        warnings.append(f"{label} could not be checked (no masks and no trackable texture); returned unchecked")
    else:
        choice = np.asarray(judged)[decide(cost[judged], o.margin, o.smooth, o.min_run, o.keep)]  # among the judged, simplest first
        choice[0] = choice[1] if T > 1 else 2  # frame 0: the rest pose under every hypothesis, so not judged: it follows frame 1
    w = blend_weights(choice, o.blend)
    if still_positions is not None:
        w[:, 0] = (0.0, 0.0, 1.0)  # frame 0 is the candidate's own first pose
    level = np.array([0.2, 0.5, 1.0])  # what each hypothesis says about the fitted detail
    conf = w.T @ level
    if masks is not None:
        conf = conf * np.clip(np.nan_to_num(iou[2], nan=1.0), 0.2, 1.0)
    conf = np.repeat(np.clip(conf, 0, 1)[:, None], N, 1).astype(np.float32)
    for v, a, b in _runs(choice[1:]):
        if v == 2:
            continue
        a, b = a + 1, b + 1
        why = f"silhouette IoU {np.nanmean(iou[2, a:b]):.2f} for {label} vs {np.nanmean(iou[v, a:b]):.2f}" if masks is not None else ""
        if np.isfinite(px[:, a:b]).any():
            why += f"{'; ' if why else ''}held-out tracks {np.nanmean(px[2, a:b]):.1f} px vs {np.nanmean(px[v, a:b]):.1f} px"
        warnings.append(f"frames {a}-{b - 1} fell back to {HYPOTHESES[v]} motion: {label} did not explain the held-out evidence better ({why})")
    return SelfCheck(w, conf, choice, iou, px, scale, warnings)
