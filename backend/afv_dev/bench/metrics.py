"""Accuracy metrics of predicted vertex motion against ground truth.

Two families:
- per-vertex metrics (same topology, same vertex order): L2 error over the GT bounding-box
  diagonal on positions and displacements, split by visibility; fractions within 1/2/5 %;
  jitter (acceleration error); silhouette IoU against masks.
- ActionBench metrics (ActionMesh Sec. 4.1; re-implemented from the published definition):
  CD-3D (per-frame ICP, then chamfer), CD-4D (one ICP fitted on the first frame), CD-M
  (motion chamfer: nearest-neighbour correspondences fixed on the first frame).

ActionBench facts this module follows (facebookresearch/actionmesh, actionbench/):
- ICP is a gradient ICP: Adam (lr 0.01, 200 iterations) on a 6D rotation, a translation and an
  anisotropic scale, x' = (s * x) @ R + t, from 24 axis-aligned initial rotations; the loss
  is the squared chamfer (mean per direction, summed); the best (init, iteration) is kept.
  ICP uses 10k points (one random subset shared by all frames), chamfer 100k surface samples.
- Chamfer score: symmetric, NOT squared: mean NN distance gt->pred + mean NN distance
  pred->gt, each on at most 10k randomly chosen query points (seeds 44 / 45).
- Predictions are sampled per frame independently (seed 44 + t) for CD-3D/CD-4D, and with one
  barycentric sampling of the first frame applied to every frame for CD-M.
- GT is a tracked point cloud (T, P, 3); here it is a synchronized surface sampling of the
  GT mesh sequence. Both are normalised with the transform that maps the first GT frame's
  bounding box into [-1, 1] (centre, divide by half the largest side).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from afv.camera import Camera
from afv.geometry.projection import transform_points
from afv.geometry.raster import rasterize, visible_vertices
from afv.geometry.silhouette import mask_iou
from afv.geometry.surface import sample_surface, surface_points


# ----------------------------------------------------------------------------- per-vertex


def bbox_diagonal(points: np.ndarray) -> float:
    """points: (..., 3) -> length of the axis-aligned bounding box diagonal."""
    p = np.asarray(points).reshape(-1, 3)
    return float(np.linalg.norm(p.max(0) - p.min(0)))


def vertex_errors(pred: np.ndarray, gt: np.ndarray, scale: float) -> np.ndarray:
    """pred, gt: (T, N, 3) -> (T, N) L2 distance divided by `scale`."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1) / scale


def summarize(err: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """err: (...) relative errors; mask: same shape bool (None = all) -> mean/median/p95/within."""
    e = err[mask] if mask is not None else err.ravel()
    if e.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan"), "n": 0}
    return {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "p95": float(np.percentile(e, 95)),
        "within_1pct": float((e < 0.01).mean()),
        "within_2pct": float((e < 0.02).mean()),
        "within_5pct": float((e < 0.05).mean()),
        "n": int(e.size),
    }


def jitter_error(pred: np.ndarray, gt: np.ndarray, scale: float) -> float:
    """Mean norm of the acceleration difference (second finite difference per frame), / scale.

    pred, gt: (T, N, 3); 0 for T < 3. Measures temporal noise the GT does not have.
    """
    if len(pred) < 3:
        return 0.0
    acc = lambda p: p[2:] - 2 * p[1:-1] + p[:-2]  # noqa: E731
    return float(np.linalg.norm(acc(np.asarray(pred, np.float64)) - acc(np.asarray(gt, np.float64)), axis=-1).mean() / scale)


def visibility(positions: np.ndarray, faces: np.ndarray, camera: Camera) -> np.ndarray:
    """positions: (T, N, 3) mesh coords -> (T, N) bool, vertex seen by the camera at frame t."""
    K = torch.as_tensor(camera.K, dtype=torch.float32)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    out = np.zeros(positions.shape[:2], bool)
    for t, p in enumerate(positions):
        M = camera.pose(t)
        pc = torch.as_tensor(transform_points(p, M), dtype=torch.float32)
        r = rasterize(pc, f, K, camera.image_size)
        out[t] = visible_vertices(r, pc, K).numpy()
    return out


def silhouettes(positions: np.ndarray, faces: np.ndarray, camera: Camera) -> np.ndarray:
    """positions: (T, N, 3) -> (T, H, W) bool coverage of the mesh seen by `camera`."""
    K = torch.as_tensor(camera.K, dtype=torch.float32)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    W, H = camera.image_size
    out = np.zeros((len(positions), H, W), bool)
    for t, p in enumerate(positions):
        M = camera.pose(t)
        pc = torch.as_tensor(transform_points(p, M), dtype=torch.float32)
        out[t] = rasterize(pc, f, K, (W, H)).mask.numpy()
    return out


@dataclass
class VertexMetrics:
    position: dict  # summarize() of position error over frames 1..T-1
    displacement: dict  # summarize() of displacement error (pred_t - pred_0 vs gt_t - gt_0)
    visible: dict  # position error on vertices visible at that frame
    occluded: dict  # position error on vertices hidden at that frame
    jitter: float  # acceleration error / diagonal
    per_frame_mean: list  # (T,) mean position error per frame
    worst_frame: int
    silhouette_iou: float | None = None  # mean over frames, when masks and camera are given
    per_frame_iou: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def vertex_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    faces: np.ndarray | None = None,
    camera: Camera | None = None,
    masks: np.ndarray | None = None,
    vis: np.ndarray | None = None,
) -> VertexMetrics:
    """pred, gt: (T, N, 3) positions in mesh coordinates; faces (F, 3); camera at the masks'
    resolution; masks (T, H, W) bool. Errors are relative to the GT first-frame bbox diagonal.
    Frame 0 (the rest pose every engine returns unchanged) is excluded from the summaries.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    scale = bbox_diagonal(gt[0])
    err = vertex_errors(pred, gt, scale)
    derr = vertex_errors(pred - pred[:1], gt - gt[:1], scale)
    sel = slice(1, None) if len(gt) > 1 else slice(None)
    if vis is None and faces is not None and camera is not None:
        vis = visibility(gt.astype(np.float32), faces, camera)
    per_frame = err.mean(1)
    m = VertexMetrics(
        position=summarize(err[sel]),
        displacement=summarize(derr[sel]),
        visible=summarize(err[sel], vis[sel]) if vis is not None else {},
        occluded=summarize(err[sel], ~vis[sel]) if vis is not None else {},
        jitter=jitter_error(pred, gt, scale),
        per_frame_mean=[float(x) for x in per_frame],
        worst_frame=int(np.argmax(per_frame)),
    )
    if masks is not None and camera is not None and faces is not None:
        ious = mask_iou(silhouettes(pred.astype(np.float32), faces, camera), masks)
        m.silhouette_iou = float(ious.mean())
        m.per_frame_iou = [float(x) for x in ious]
    return m


# ----------------------------------------------------------------------------- ActionBench


@dataclass(frozen=True)
class ActionBenchConfig:
    """Defaults are ActionBench's; `fast()` keeps the definitions with fewer samples/inits."""

    n_pts_icp: int = 10_000
    n_pts_chamfer: int = 100_000
    n_pts_query: int = 10_000  # chamfer query subset per direction
    icp_iters: int = 200
    icp_lr: float = 0.01
    icp_inits: str = "canonical24"  # or "identity" (our predictions share the GT frame)
    seed: int = 44

    @staticmethod
    def fast() -> "ActionBenchConfig":
        return ActionBenchConfig(n_pts_icp=1000, n_pts_chamfer=10_000, n_pts_query=5000, icp_iters=100, icp_inits="identity")


def normalize_to_first_frame(gt: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Map the first GT frame's bbox into [-1, 1] (uniform scale) and apply the same to others.

    gt: (T, N, 3); others: (T, M, 3) -> tuple of arrays, gt first.
    """
    lo, hi = gt[0].min(0), gt[0].max(0)
    c, s = (lo + hi) / 2, (hi - lo).max() / 2
    return tuple((np.asarray(a, np.float64) - c) / s for a in (gt, *others))


def chamfer_score(pred: np.ndarray, gt: np.ndarray, n: int = 10_000, seed: int = 44) -> float:
    """Symmetric, non-squared chamfer: mean NN distance gt->pred + pred->gt.

    pred (P, 3), gt (Q, 3); each direction queries at most n random points (seeds seed / seed+1).
    """
    ip = np.random.RandomState(seed).permutation(len(pred))[:n] if 0 < n < len(pred) else np.arange(len(pred))
    ig = np.random.RandomState(seed + 1).permutation(len(gt))[:n] if 0 < n < len(gt) else np.arange(len(gt))
    d1, _ = cKDTree(pred).query(gt[ig])
    d2, _ = cKDTree(gt).query(pred[ip])
    return float(d1.mean() + d2.mean())


def motion_chamfer_score(preds: np.ndarray, gts: np.ndarray) -> float:
    """CD-M: preds (T, P, 3), gts (T, Q, 3) with per-index tracked points.

    NN correspondences in both directions are fixed on frame 0; distances of the corresponding
    points are averaged over all frames and points, both directions summed.
    """
    _, g2p = cKDTree(preds[0]).query(gts[0])
    _, p2g = cKDTree(gts[0]).query(preds[0])
    d1 = np.linalg.norm(preds[:, g2p] - gts, axis=-1).mean()
    d2 = np.linalg.norm(gts[:, p2g] - preds, axis=-1).mean()
    return float(d1 + d2)


def canonical_rotations() -> np.ndarray:
    """(24, 3, 3) axis-aligned rotations (ActionBench's ICP initialisations, XYZ Euler angles)."""
    az = [0] * 4 + [90] * 4 + [180] * 4 + [270] * 4 + [0] * 4 + [90] * 4
    el = [0] * 16 + [90] * 2 + [-90] * 2 + [90] * 2 + [-90] * 2
    ro = [0, 90, 180, 270] * 4 + [0, 90] * 4
    return Rotation.from_euler("XYZ", np.stack([az, el, ro], 1), degrees=True).as_matrix()


def _rot6d(x: torch.Tensor) -> torch.Tensor:
    """(B, 6) -> (B, 3, 3) rotation by Gram-Schmidt; rows are the orthonormal basis."""
    a1, a2 = x[:, :3], x[:, 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-2)


def _nn_index(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """a (B, P, 3), b (B, Q, 3) -> (B, P) index of the nearest b point (no grad, chunked)."""
    out = []
    with torch.no_grad():
        for s in range(0, a.shape[1], chunk):
            out.append(torch.cdist(a[:, s : s + chunk], b).argmin(-1))
    return torch.cat(out, 1)


def _sq_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (B, P, 3), y (B, Q, 3) -> (B,) mean squared NN distance both ways, summed."""
    ix = _nn_index(x, y)
    iy = _nn_index(y, x)
    gy = torch.gather(y, 1, ix[..., None].expand(-1, -1, 3))
    gx = torch.gather(x, 1, iy[..., None].expand(-1, -1, 3))
    return ((x - gy) ** 2).sum(-1).mean(1) + ((y - gx) ** 2).sum(-1).mean(1)


def gradient_icp(pred: np.ndarray, gt: np.ndarray, cfg: ActionBenchConfig, device: torch.device | str = "cpu"):
    """Rigid + anisotropic-scale alignment of pred (P, 3) onto gt (Q, 3).

    Returns (s (3,), R (3, 3), t (3,)) with aligned = (s * x) @ R + t.
    """
    dev = torch.device(device)
    R0 = torch.as_tensor(canonical_rotations() if cfg.icp_inits == "canonical24" else np.eye(3)[None], dtype=torch.float32, device=dev)
    B = len(R0)
    x = torch.as_tensor(pred, dtype=torch.float32, device=dev)[None].expand(B, -1, -1)
    y = torch.as_tensor(gt, dtype=torch.float32, device=dev)[None].expand(B, -1, -1)
    T = torch.zeros(B, 3, device=dev, requires_grad=True)
    r6 = torch.tensor([[1.0, 0, 0, 0, 1, 0]], device=dev).repeat(B, 1).requires_grad_(True)
    s = torch.ones(B, 3, device=dev, requires_grad=True)
    opt = torch.optim.Adam([T, r6, s], lr=cfg.icp_lr)
    best, params = float("inf"), None
    threads = torch.get_num_threads()
    if dev.type == "cpu":  # thousands of tiny ops: thread hand-off costs more than it gains
        torch.set_num_threads(1)
    try:
        params = _icp_loop(x, y, R0, T, r6, s, opt, cfg.icp_iters)
    finally:
        torch.set_num_threads(threads)
    s_, R_, t_ = (p.cpu().double().numpy() for p in params)
    return s_, R_, t_


def _icp_loop(x, y, R0, T, r6, s, opt, iters):
    best, params = float("inf"), None
    with torch.enable_grad():
        for _ in range(iters):
            opt.zero_grad()
            R = R0 @ _rot6d(r6)
            loss = _sq_chamfer((s[:, None] * x) @ R + T[:, None], y)
            loss.mean().backward()
            opt.step()
            lmin, i = loss.detach().min(0)
            if float(lmin) < best:
                # as ActionBench: the loss and R are from before the step, s and t after it
                best = float(lmin)
                params = (s[i].detach().clone(), R[i].detach().clone(), T[i].detach().clone())
    return params


def apply_similarity(points: np.ndarray, s: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """points (..., 3) -> (s * points) @ R + t."""
    return (s * points) @ R + t


def actionbench_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    faces: np.ndarray,
    gt_faces: np.ndarray | None = None,
    cfg: ActionBenchConfig = ActionBenchConfig(),
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """CD-3D, CD-4D, CD-M of a predicted mesh sequence against a GT mesh sequence.

    pred: (T, N, 3) vertices with `faces`; gt: (T, M, 3) vertices with `gt_faces` (default
    `faces`). GT becomes a tracked point cloud by synchronized sampling of its first frame.
    """
    gt_faces = faces if gt_faces is None else gt_faces
    gt, pred = normalize_to_first_frame(np.asarray(gt, np.float64), np.asarray(pred, np.float64))
    T = len(gt)
    fi, bi = sample_surface(gt[0], gt_faces, cfg.n_pts_chamfer, cfg.seed + 1000)
    gt_pc = surface_points(gt, gt_faces, fi, bi)  # (T, P, 3) tracked GT points
    # prediction: independent samples per frame (CD-3D / CD-4D), synchronized (CD-M)
    pred_pc = np.stack([surface_points(pred[t : t + 1], faces, *sample_surface(pred[t], faces, cfg.n_pts_chamfer, cfg.seed + t))[0] for t in range(T)])
    sub = lambda pc: pc[:, np.random.RandomState(cfg.seed).permutation(pc.shape[1])[: cfg.n_pts_icp]] if pc.shape[1] > cfg.n_pts_icp else pc  # noqa: E731
    gt_icp, pred_icp = sub(gt_pc), sub(pred_pc)
    per_frame = [gradient_icp(pred_icp[t], gt_icp[t], cfg, device) for t in range(T)]
    first = per_frame[0]  # the unified ICP is the first frame's fit (same data, same seed)
    cd3 = [chamfer_score(apply_similarity(pred_pc[t], *per_frame[t]), gt_pc[t], cfg.n_pts_query, cfg.seed) for t in range(T)]
    cd4 = [chamfer_score(apply_similarity(pred_pc[t], *first), gt_pc[t], cfg.n_pts_query, cfg.seed) for t in range(T)]
    fs, bs = sample_surface(pred[0], faces, cfg.n_pts_chamfer, cfg.seed)
    pred_sync = apply_similarity(surface_points(pred, faces, fs, bs), *first)
    cdm = motion_chamfer_score(pred_sync, gt_pc)
    return {"cd_3d": float(np.mean(cd3)), "cd_4d": float(np.mean(cd4)), "cd_m": cdm, "cd_3d_per_frame": [float(c) for c in cd3]}
