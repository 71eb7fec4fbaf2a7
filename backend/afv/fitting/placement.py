"""First-frame alignment: check a given camera, or estimate the mesh-to-camera pose.

Without a camera, the mesh is placed in front of a pinhole camera with an assumed field
of view. A discrete search over the 24 axis-aligned rotations (scale and position from
the mask's area and centroid, scored by silhouette IoU with the rasteriser) gives robust
starts; the best few are refined continuously by descending the silhouette energies, and
the best refined pose by IoU wins. Silhouettes cannot tell mirror/symmetric poses apart,
so near-ties are broken by an "up axis" prior (mesh up points up in the image).

With a known up direction (the request's `up_axis`, mesh coordinates) the search is upright
by construction: the candidates map that direction to image-up and differ only by the turn
about it (12 headings), the refinement penalises roll, and a refined pose whose up direction
leans more than `max_lean_deg` from image-up is refused, so no result is upside down. Only
proper rotations are searched (det +1): a mirrored pose can never be returned.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..camera import intrinsics
from ..mesh import Mesh
from ..geometry.projection import project_points, transform_points
from ..geometry.raster import rasterize
from ..geometry.rotation import axis_angle_to_matrix
from ..geometry.silhouette import downscale_mask, mask_iou, silhouette
from ..geometry.surface import sample_surface, surface_points
from .energies import MIN_DEPTH, coverage_energy, inside_energy
from .silhouette import silhouette_targets

UP_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass
class Alignment:
    pose: np.ndarray  # (4, 4) mesh-to-camera
    K: np.ndarray  # (3, 3)
    iou: float
    candidates: list[dict]  # diagnostics: rotation index, IoU before/after refinement
    alternatives: list[np.ndarray]  # (4, 4) poses that fit the silhouette about as well, prior order (first = pose)


def axis_rotations() -> np.ndarray:
    """(24, 3, 3) float64: the proper rotations mapping coordinate axes to signed axes."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            R = np.zeros((3, 3))
            R[np.arange(3), perm] = signs
            if np.linalg.det(R) > 0:
                out.append(R)
    return np.stack(out)


def _place(v: np.ndarray, R: np.ndarray, K: np.ndarray, mask: np.ndarray, faces: torch.Tensor, dev) -> tuple[np.ndarray, float]:
    """Translation putting rotated, centred verts v (N,3) over the mask (area/centroid match)."""
    ys, xs = np.nonzero(mask)
    area_m = len(xs)
    cm = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    f = K[0, 0]
    r = np.linalg.norm(v, axis=1).max()
    t = np.array([0.0, 0.0, 3.0 * r * f / max(np.sqrt(area_m), 1.0)])
    t[:2] = (cm - K[:2, 2]) / f * t[2]
    vr = v @ R.T
    H, W = mask.shape
    Kt = torch.as_tensor(K, dtype=torch.float32)
    for _ in range(3):
        vc = torch.as_tensor(vr + t, dtype=torch.float32, device=dev)
        ras = rasterize(vc, faces, Kt, (W, H))
        m = ras.mask.cpu().numpy()
        if m.sum() < 4:  # nothing in view: nearer, on the ray through the mask's centroid
            t[2] *= 0.5
            t[:2] = (cm - K[:2, 2]) / f * t[2]
            continue
        # nearer or farther along the same ray (x, y scale with the depth, or a big change of
        # depth throws the mesh off the image: the DAVIS dog's Fox ended at 0.07 x its size)
        t *= np.sqrt(m.sum() / area_m)
        yy, xx = np.nonzero(m)
        cr = np.array([xx.mean() + 0.5, yy.mean() + 0.5])
        t[:2] += (cm - cr) / f * t[2]
    vc = torch.as_tensor(vr + t, dtype=torch.float32, device=dev)
    return t, mask_iou(silhouette(vc, faces, K, (W, H)), mask)


def _refine(v: torch.Tensor, R0: np.ndarray, t0: np.ndarray, K: np.ndarray, mask: np.ndarray, iters: int, progress=None,
            up: np.ndarray | None = None, upright: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Continuous pose refinement by the silhouette energies (Adam on axis-angle + translation).
    up: (3,) mesh up direction or None; then `upright` weights a penalty on camera roll (the up
    direction's image-x component): upright footage, the silhouette alone may tilt it."""
    dev = v.device
    tg = silhouette_targets(mask[None], dev, n_contour=200, n_interior=200)
    Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)
    R0t = torch.as_tensor(R0, dtype=torch.float32, device=dev)
    z0 = float(t0[2])
    rvec = torch.zeros(3, device=dev, requires_grad=True)
    dt = torch.zeros(3, device=dev, requires_grad=True)  # translation in units of depth
    opt = torch.optim.Adam([rvec, dt], lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / max(iters, 1))
    t0t = torch.as_tensor(t0, dtype=torch.float32, device=dev)
    up_t = None if up is None else torch.as_tensor(up, dtype=torch.float32, device=dev)
    for it in range(iters):
        R = axis_angle_to_matrix(rvec) @ R0t
        pc = v @ R.T + _shift(t0t, dt, z0)
        uv = project_points(pc, Kt, min_depth=MIN_DEPTH)[None]
        e = inside_energy(uv, tg.dist_out, tg.frame_w) + coverage_energy(tg.samples, tg.sample_w, uv, tg.frame_w)
        if up_t is not None:
            e = e + upright * float(mask.sum()) ** 0.5 * (R @ up_t)[0] ** 2  # pixels^2 scale like the energies
        opt.zero_grad()
        e.backward()
        opt.step()
        sched.step()
        if progress is not None and it % 10 == 0:
            progress.check()
    with torch.no_grad():
        R = (axis_angle_to_matrix(rvec) @ R0t).cpu().numpy().astype(np.float64)
        t = _shift(t0t, dt, z0).cpu().numpy().astype(np.float64)
    return R, t


def _shift(t0: torch.Tensor, dt: torch.Tensor, z0: float) -> torch.Tensor:
    """Translation (3,) from the start t0 (depth z0) and the refined offsets dt (units of depth).
    The depth stays within [z0 / 2, 2 z0]: the start already matches the mask's area, and a
    silhouette fit left free can pull a narrow pose (a quadruped seen head on) towards the
    camera until the mesh wraps around it (the DAVIS dog: depth 0.3 x the Fox's size)."""
    scale = torch.exp(0.7 * torch.tanh(dt[2] / 0.7))  # smooth, ~1 + dt[2] near 0
    return torch.stack([t0[0] + dt[0] * z0, t0[1] + dt[1] * z0, t0[2] * scale])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _prior(up_axis: str, front_axis: str):
    """Score of a mesh-to-camera rotation R (3, 3) under the orientation priors, lower = more
    plausible: the mesh's up axis points up in the image (-y in OpenCV camera coordinates) and
    its front axis towards the camera (-z). Used only to break ties between poses whose
    silhouettes fit equally well (symmetric shapes)."""
    up, front = UP_AXES.get(up_axis), UP_AXES.get(front_axis)

    def score(R: np.ndarray) -> float:
        return (float(R[1, up]) if up is not None else 0.0) + 0.5 * (float(R[2, front]) if front is not None else 0.0)

    return score


def upright_rotations(up: np.ndarray, n_headings: int = 12) -> np.ndarray:
    """(n_headings, 3, 3): rotations mapping the mesh direction `up` (3,) to image-up (camera
    -y), turned about it in equal steps (the heading the silhouette must decide)."""
    from scipy.spatial.transform import Rotation

    u = np.asarray(up, np.float64) / np.linalg.norm(up)
    A = Rotation.align_vectors([[0.0, -1.0, 0.0]], [u])[0].as_matrix()
    out = [Rotation.from_rotvec([0.0, -a, 0.0]).as_matrix() @ A for a in np.arange(n_headings) * 2 * np.pi / n_headings]
    return np.stack(out)


def lean_deg(R: np.ndarray, up: np.ndarray) -> float:
    """Angle (degrees) between the image-up direction and `up` (mesh coords) seen through R (3, 3)."""
    c = R @ (np.asarray(up, np.float64) / np.linalg.norm(up))
    return float(np.degrees(np.arccos(np.clip(-c[1], -1.0, 1.0))))


def estimate_pose(
    mesh: Mesh,
    mask: np.ndarray,
    fov_y_deg: float,
    device: torch.device,
    up_axis: str = "y",
    front_axis: str = "z",
    tilts: tuple[float, ...] = (0.0, -25.0, 25.0),
    search_size: int = 128,
    n_refine: int = 4,
    refine_iters: int = 80,
    tie_iou: float = 0.03,
    progress=None,
    up_vector: np.ndarray | None = None,
    max_lean_deg: float = 50.0,
) -> Alignment:
    """mask: (H, W) bool of the first frame -> Alignment (pose at the mask's resolution).

    up_vector: (3,) the mesh's known up direction (mesh coordinates) or None (then the axis
    priors up_axis/front_axis break ties). Raises ValueError when the mask is empty.
    """
    if mask.sum() < 16:
        raise ValueError("first-frame mask is empty")
    H, W = mask.shape
    K = intrinsics(W, H, fov_y_deg)
    small, Ks = downscale_mask(mask, K, search_size)
    centre = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    v = (mesh.vertices - centre).astype(np.float64)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=device)
    cands = []
    rots = axis_rotations() if up_vector is None else upright_rotations(up_vector)
    for i, R in enumerate(rots):
        t, iou = _place(v, R, Ks, small, faces, device)
        cands.append({"rotation": i, "iou_search": iou, "R": R, "t": t})
        if progress is not None:
            progress.update(0.5 * (i + 1) / len(rots))
    # symmetric silhouettes give exact ties in the coarse search: order those by the up-axis
    # prior, so the refined few are not just the first rotations enumerated
    prior = _prior(up_axis, front_axis) if up_vector is None else _prior("none", front_axis)
    cands.sort(key=lambda c: (-round(c["iou_search"], 3), prior(c["R"])))
    # refine with area-uniform surface samples: dense enough to cover the mask evenly
    sf, sb = sample_surface(v, mesh.faces, 2000)
    vs = torch.as_tensor(surface_points(v, mesh.faces, sf, sb), dtype=torch.float32, device=device)
    top = cands[:n_refine]
    for j, c in enumerate(top):
        # each start is also refined seen from above and below: cameras are usually raised or
        # lowered, and a refinement started 25+ degrees off can stall in a worse pose
        best = None
        for a in np.radians(tilts):
            R, t = _refine(vs, _rot_x(a) @ c["R"], c["t"], Ks, small, refine_iters, progress, up=up_vector)
            vc = torch.as_tensor(v @ R.T + t, dtype=torch.float32, device=device)
            iou = mask_iou(silhouette(vc, faces, Ks, small.shape[::-1]), small)
            if up_vector is not None and lean_deg(R, up_vector) > max_lean_deg:
                iou = -1.0  # leaning over or upside down: refused whatever its silhouette
            if best is None or iou > best[2]:
                best = (R, t, iou)
        c.update(R=best[0], t=best[1], iou=best[2])
        if progress is not None:
            progress.update(0.5 + 0.5 * (j + 1) / len(top))
    if up_vector is not None and all(c["iou"] < 0 for c in top):
        for c in top:  # every refinement leaned over: keep the upright starts
            vc = torch.as_tensor(v @ c["R"].T + c["t"], dtype=torch.float32, device=device)
            c["iou"] = mask_iou(silhouette(vc, faces, Ks, small.shape[::-1]), small)
    best_iou = max(c["iou"] for c in top)
    tied = [c for c in top if c["iou"] >= best_iou - tie_iou]
    if len(tied) > 1:
        tied.sort(key=lambda c: prior(c["R"]))
    best = tied[0]
    # the translation was found at the search resolution; depth/offset are scale-free
    # because K scales with the image (x, y, z all stay), so it carries over unchanged.
    alts = []
    for c in tied:
        M = np.eye(4)
        M[:3, :3] = c["R"]
        M[:3, 3] = c["t"] - c["R"] @ centre
        alts.append(M)
    pose = alts[0]
    vc = torch.as_tensor(transform_points(mesh.vertices, pose), dtype=torch.float32, device=device)
    iou_full = mask_iou(silhouette(vc, faces, K, (W, H)), mask)
    diag = [{k: (float(val) if k.startswith("iou") else int(val)) for k, val in c.items() if k in ("rotation", "iou_search", "iou")} for c in top]
    return Alignment(pose=pose, K=K, iou=iou_full, candidates=diag, alternatives=alts)
