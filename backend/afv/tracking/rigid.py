"""The rigid tracker: mesh-to-camera poses of a rigid mesh through a clip.

Method (the `rigid` engine's; docs/engine_rigid.md)
1. Seed region: the mesh rendered at frame 0 with the given camera (z-buffer), intersected
   with the frame-0 mask when there is one, eroded a little so seeds avoid the silhouette
   where flow mixes object and background.
2. Lifting: every seed pixel on a grid is mapped to the 3D surface point it sees, in mesh
   coordinates (face id + perspective-correct barycentrics from the rasteriser).
3. Model-based tracking: DIS flow on high-passed grey images (shading-robust) from an
   anchor frame (every `anchor_every` frames, earlier when many tracks die) to each frame,
   forward-backward check, mask. At an anchor the 2D points are re-placed at
   the model's reprojection under the estimated pose (front-facing, inside the mask), so
   per-point drift never accumulates; after an early re-anchor or when fewer than
   `relift_frac` of the seeds stay visible (the object turned), the surface seen now is
   seeded and lifted again.
4. Pose: per frame, cv2.solvePnPRansac on the surviving 2D-3D pairs (previous pose as the
   initial guess), then Levenberg-Marquardt refinement on the inliers. This is only the
   starting point of
5. Direct refinement (afv.direct.refine_pose): Gauss-Newton on the 6 pose parameters so that
   the current frame, local-contrast-normalised, reproduces the colours of dense surface
   samples of keyframe 0 (exact pose) and of the latest re-lift, plus, when there are masks,
   the mesh's occluding contour pulled onto the mask boundary (signed distance transform;
   the keyer's boundary offset is calibrated at frame 0 where the pose is known). Flow + PnP
   alone leaves 1-2 % of correlated, mostly along-ray error; the contour pins depth and tilt.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import trimesh

from ..camera import Camera
from ..direct import image_with_gradients, normalized_image, refine_pose, sample_pixels, signed_distance, silhouette_points
from ..errors import InputError
from ..flow import advance, dilated, flow_image, flow_pair, make_dis
from ..geometry.projection import project_points, transform_points
from ..geometry.raster import rasterize
from ..progress import Progress

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass
class RigidTrackOptions:
    grid_step: int = 4  # px between seed points at working resolution
    max_points: int = 4000  # cap on seeds (grid step grows to respect it)
    erode: int = 2  # px trimmed off the seed region's border
    fb_thresh: float = 1.0  # px, forward-backward consistency
    ransac_px: float = 2.0  # px, RANSAC inlier reprojection threshold
    min_points: int = 12  # fewer surviving tracks: hold the previous pose, confidence 0
    flow_preset: str = "medium"  # DIS preset: ultrafast | fast | medium
    highpass: float = 5.0  # px sigma; > 0 removes slow shading from the flow images (0 = plain grey)
    anchor_every: int = 16  # frames between flow anchors (re-placed at the model reprojection)
    reanchor_frac: float = 0.6  # re-anchor early when fewer of the anchor's tracks survive
    relift_frac: float = 0.7  # re-seed the visible surface when fewer seeds stay visible (or tracks died)
    photo_iters: int = 8  # Gauss-Newton steps of direct photometric pose refinement per frame; 0 = off
    photo_step: int = 2  # px between photometric sample points at working resolution
    photo_points: int = 8000  # cap on photometric sample points per keyframe
    photo_sigma: float = 5.0  # px, local contrast normalisation scale of the photometric images
    silhouette_weight: float = 1.0  # weight of the mesh contour vs mask boundary term (needs masks); 0 = off

    def check(self) -> None:
        """Raise InputError for values the tracker cannot use."""
        if self.flow_preset not in PRESETS:
            raise InputError(f"flow_preset '{self.flow_preset}' is unknown", f"use one of {sorted(PRESETS)}")


@dataclass(frozen=True)
class RigidTrack:
    """The tracker's result for a clip of T frames."""

    poses: np.ndarray  # (T, 4, 4) float64 mesh-to-camera poses (frame 0 = the camera's)
    confidence: np.ndarray  # (T,) float32 RANSAC inlier ratio (0: pose held from the previous frame)
    inliers: np.ndarray  # (T,) int64 inlier count (frame 0: the seeds)
    relifts: int  # times the visible surface was seeded again


@dataclass(frozen=True)
class Seeds:
    """Surface points seen at one frame: X (P, 3) rest mesh coords, normals (P, 3) in rest
    coords oriented towards the camera, pts (P, 2) their pixels."""

    X: np.ndarray
    normals: np.ndarray
    pts: np.ndarray


@dataclass(frozen=True)
class Keyframe:
    """Photometric reference: surface points X (P, 3), normals (P, 3), colours values (P, C)."""

    X: np.ndarray
    normals: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Contour:
    """What the occluding-contour term needs: the rest mesh with its face adjacency, the
    spacing of contour points (mesh units) and the keyer's boundary offset (px)."""

    rest: np.ndarray  # (N, 3)
    faces: np.ndarray  # (F, 3)
    adjacency: np.ndarray  # (E, 2) faces sharing an edge (trimesh face_adjacency)
    adjacency_edges: np.ndarray  # (E, 2) that edge's vertices
    spacing: float
    bias: float = 0.0

    def points(self, M: np.ndarray) -> np.ndarray:
        """(S, 3) rest-mesh points on the contour seen under pose M (4, 4)."""
        return silhouette_points(self.rest, self.faces, self.adjacency, self.adjacency_edges, M, self.spacing)


def seed_points(
    verts_cam: torch.Tensor, faces: torch.Tensor, K: np.ndarray, size: tuple[int, int], mask: np.ndarray | None,
    step: int, erode: int, max_points: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid seeds on the visible surface. verts_cam: (N, 3) camera coords of the rest mesh.

    Returns pts (P, 2) float32 pixel centres, face (P,) int64, bary (P, 3) float32.
    """
    W, H = size
    r = rasterize(verts_cam, faces, torch.as_tensor(K, dtype=torch.float32), (W, H))
    region = r.mask.cpu().numpy()
    if mask is not None:
        region &= mask
    if erode > 0:
        region = cv2.erode(region.astype(np.uint8), np.ones((2 * erode + 1,) * 2, np.uint8)).astype(bool)
    n = int(region.sum())
    step = max(int(step), int(np.ceil(np.sqrt(n / max(max_points, 1)))), 1)
    grid = np.zeros_like(region)
    grid[step // 2 :: step, step // 2 :: step] = True
    ys, xs = np.nonzero(region & grid)
    face = r.face_id.cpu().numpy()[ys, xs]
    bary = r.bary.cpu().numpy()[ys, xs]
    pts = np.stack([xs + 0.5, ys + 0.5], 1).astype(np.float32)
    return pts, face.astype(np.int64), bary.astype(np.float32)


def visible_model_points(seeds: Seeds | Keyframe, M: np.ndarray, K: np.ndarray, size: tuple[int, int], mask: np.ndarray | None) -> np.ndarray:
    """(P,) bool: facing the camera under pose M (not grazing), inside the image and the mask."""
    W, H = size
    xc = transform_points(seeds.X, M)
    # cos(angle to the viewing ray) > 0.25: grazing surface tracks badly
    front = (xc * (seeds.normals @ M[:3, :3].T)).sum(1) < -0.25 * np.linalg.norm(xc, axis=1)
    uv = project_points(xc, K)
    ok = front & (xc[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    if mask is not None:
        xi = np.clip(uv[:, 0].astype(np.int64), 0, W - 1)
        yi = np.clip(uv[:, 1].astype(np.int64), 0, H - 1)
        ok &= mask[yi, xi]
    return ok


class RigidTracker:
    """Tracks one rigid mesh (rest (N, 3) float64, faces (F, 3)) through clips; see the module
    docstring for the method."""

    def __init__(self, rest: np.ndarray, faces: np.ndarray, options: RigidTrackOptions, device: torch.device) -> None:
        options.check()
        self.rest, self.faces, self.o, self.device = rest, np.asarray(faces), options, device
        self.faces_t = torch.as_tensor(faces, dtype=torch.long, device=device)

    def lift(self, M: np.ndarray, K: np.ndarray, size: tuple[int, int], mask: np.ndarray | None,
             step: int | None = None, max_points: int | None = None) -> Seeds:
        """Seeds on the surface seen under pose M (4, 4) (inside mask (H, W) when given)."""
        o = self.o
        vc = torch.as_tensor(transform_points(self.rest, M), dtype=torch.float32, device=self.device)
        step = o.grid_step if step is None else step
        max_points = o.max_points if max_points is None else max_points
        pts, face, bary = seed_points(vc, self.faces_t, K, size, mask, step, o.erode, max_points)
        tri = self.rest[self.faces[face]]
        X = (tri * bary[..., None]).sum(1)
        nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-12
        # orient by what the camera saw, so meshes with mixed winding still work
        flip = (transform_points(X, M) * (nrm @ M[:3, :3].T)).sum(1) > 0
        nrm[flip] *= -1
        return Seeds(X, nrm, pts)

    def keyframe(self, M: np.ndarray, K: np.ndarray, size: tuple[int, int], mask: np.ndarray | None, frame: np.ndarray) -> Keyframe:
        """Photometric reference of `frame` seen under pose M."""
        o = self.o
        s = self.lift(M, K, size, mask, o.photo_step, o.photo_points)
        img = normalized_image(frame, o.photo_sigma)
        xi, yi = s.pts[:, 0].astype(np.int64), s.pts[:, 1].astype(np.int64)  # seeds sit on pixel centres
        return Keyframe(s.X, s.normals, img[yi, xi].astype(np.float64))

    def contour(self, M0: np.ndarray, K: np.ndarray, mask0: np.ndarray) -> Contour:
        """The contour term's data, its point spacing (~1 per pixel of silhouette at the frame-0
        distance) and the keyer's boundary offset measured under the exact frame-0 pose M0."""
        tm = trimesh.Trimesh(self.rest, self.faces, process=False)
        z0 = transform_points(self.rest, M0)[:, 2].mean()
        c = Contour(self.rest, self.faces, tm.face_adjacency, tm.face_adjacency_edges, z0 / K[0, 0])
        # median signed distance (px, > 0: mask too small) of the model contour to the mask
        # boundary at frame 0: a keyer's systematic offset, removed from later frames so it does
        # not turn into depth (scale) error
        Xs = c.points(M0)
        if len(Xs) == 0:
            return c
        uv = project_points(transform_points(Xs, M0), K)
        bias = float(np.median(sample_pixels(signed_distance(mask0)[..., :1], uv)))
        return Contour(c.rest, c.faces, c.adjacency, c.adjacency_edges, c.spacing, bias)

    def refine(self, M: np.ndarray, keyframes: list[Keyframe], frame: np.ndarray, mask: np.ndarray | None,
               K: np.ndarray, size: tuple[int, int], contour: Contour | None = None) -> np.ndarray:
        """Pose M (4, 4) refined against the keyframes' points visible under M."""
        o = self.o
        sel = [visible_model_points(kf, M, K, size, mask) for kf in keyframes]
        X = np.concatenate([kf.X[s] for kf, s in zip(keyframes, sel)])
        ref = np.concatenate([kf.values[s] for kf, s in zip(keyframes, sel)])
        if len(X) < o.min_points:
            return M
        usable = None
        if mask is not None:  # samples must not straddle the silhouette
            usable = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        field = image_with_gradients(normalized_image(frame, o.photo_sigma))
        sil_X = sil_field = None
        if contour is not None and mask is not None and o.silhouette_weight > 0:
            sil_X = contour.points(M)
            sil_field = signed_distance(mask)
            sil_field[..., 0] -= contour.bias
        M2, used = refine_pose(M, X, ref, field, K, usable, o.photo_iters, sil_X=sil_X, sil_field=sil_field, sil_weight=o.silhouette_weight)
        return M2 if used > 0 else M

    def track(self, cam: Camera, frames: np.ndarray, masks: np.ndarray | None,
              progress: Progress | None = None, stage: str | None = None) -> RigidTrack:
        """Poses through a clip. cam: camera with T frames (frame 0's pose is taken as exact);
        frames: (T, H, W, 3) uint8; masks: (T, H, W) bool or None. progress: stage `stage` is
        started (when given) and updated per frame."""
        o = self.o
        T = len(frames)
        H, W = frames.shape[1:3]
        size = (W, H)
        Kd = cam.K.astype(np.float64)
        seeds = self.lift(cam.pose(0), Kd, size, masks[0] if masks is not None else None)
        n_seeds = len(seeds.X)
        if n_seeds < o.min_points:
            raise InputError(
                f"only {n_seeds} seed points: the mesh seen through the camera barely overlaps the object in frame 0",
                "check the camera pose (mesh_to_camera) and the masks",
            )

        # Model-based tracking: flow is measured from an anchor frame whose 2D points are the
        # model's reprojection under the estimated pose, so per-point drift never accumulates;
        # only the pose error at anchors carries over.
        if progress is not None and stage is not None:
            progress.start(stage)
        dis = make_dis(PRESETS[o.flow_preset])
        k = max(1, o.anchor_every)
        P = np.zeros((T, 4, 4))
        P[0] = cam.pose(0)
        conf = np.zeros(T, np.float32)
        conf[0] = 1.0
        n_inl = np.zeros(T, np.int64)
        n_inl[0] = n_seeds
        relifts = 0
        anchor_img = flow_image(frames[0], o.highpass)
        init = None
        anchor = 0
        pts = seeds.pts
        rvec = cv2.Rodrigues(P[0, :3, :3])[0]
        tvec = P[0, :3, 3].reshape(3, 1).copy()
        contour = self.contour(P[0], Kd, masks[0]) if masks is not None and o.silhouette_weight > 0 else None
        # photometric keyframes: frame 0 (exact pose) and the latest re-lift
        m0 = masks[0] if masks is not None else None
        keyframes = [self.keyframe(P[0], Kd, size, m0, frames[0])] if o.photo_iters > 0 else []
        for t in range(1, T):
            if progress is not None:
                progress.update((t - 1) / (T - 1))
            cur = flow_image(frames[t], o.highpass)
            if init is None:
                fwd, bwd = flow_pair(dis, anchor_img, cur)
            else:  # the anchor's flow to the previous frame is a good start (motion grows with t)
                fwd, bwd = dis.calc(anchor_img, cur, init[0]), dis.calc(cur, anchor_img, init[1])
            init = (fwd, bwd)
            mask_t = dilated(masks[t], 1) if masks is not None else None
            q, ok = advance(fwd, bwd, pts, o.fb_thresh, mask_t)
            if ok.sum() >= o.min_points:
                O, I = seeds.X[ok], q[ok].astype(np.float64)
                good, r1, t1, inl = cv2.solvePnPRansac(
                    O, I, Kd, None, rvec.copy(), tvec.copy(), useExtrinsicGuess=True,
                    iterationsCount=100, reprojectionError=o.ransac_px, confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE,
                )
                if good and inl is not None and len(inl) >= max(6, o.min_points // 2):
                    inl = inl.ravel()
                    rvec, tvec = cv2.solvePnPRefineLM(O[inl], I[inl], Kd, None, r1, t1)
                    conf[t] = len(inl) / len(seeds.X)
                    n_inl[t] = len(inl)
            P[t, :3, :3] = cv2.Rodrigues(rvec)[0]  # on failure: the previous pose, confidence 0
            P[t, :3, 3] = tvec.ravel()
            P[t, 3, 3] = 1.0
            if keyframes:
                P[t] = self.refine(P[t], keyframes, frames[t], masks[t] if masks is not None else None, Kd, size, contour)
                rvec, tvec = cv2.Rodrigues(P[t, :3, :3])[0], P[t, :3, 3].reshape(3, 1).copy()
            # move the anchor every k frames, or early when many tracks died (fast turns)
            early = ok.sum() < o.reanchor_frac * len(pts)
            if t < T - 1 and (t - anchor >= k or early):
                anchor, anchor_img, init = t, cur, None
                keep = visible_model_points(seeds, P[t], Kd, size, mask_t)
                if early or keep.sum() < o.relift_frac * n_seeds:  # the object turned: seed the surface seen now
                    new = self.lift(P[t], Kd, size, masks[t] if masks is not None else None)
                    if len(new.X) >= o.min_points:
                        seeds, n_seeds, relifts = new, len(new.X), relifts + 1
                        keep = np.ones(len(seeds.X), bool)
                        if keyframes:
                            keyframes = [keyframes[0], self.keyframe(P[t], Kd, size, masks[t] if masks is not None else None, frames[t])]
                seeds = Seeds(seeds.X[keep], seeds.normals[keep], seeds.pts[keep])
                pts = project_points(transform_points(seeds.X, P[t]), Kd).astype(np.float32)
        if progress is not None:
            progress.update(1.0)
        return RigidTrack(P, conf, n_inl, relifts)


def track_rigid(rest: np.ndarray, faces: np.ndarray, cam: Camera, frames: np.ndarray, masks: np.ndarray | None,
                device: torch.device, options: RigidTrackOptions | None = None,
                progress: Progress | None = None, stage: str | None = None) -> RigidTrack:
    """Mesh-to-camera poses of a rigid mesh through a clip (flow + PnP + direct refinement).

    rest: (N, 3) float64 rest vertices; faces: (F, 3); cam: camera with T frames (frame 0's pose
    is taken as exact); frames: (T, H, W, 3) uint8; masks: (T, H, W) bool or None.
    Raises InputError when the mesh seen at frame 0 gives too few seed points.
    """
    return RigidTracker(rest, faces, options or RigidTrackOptions(), device).track(cam, frames, masks, progress, stage)
