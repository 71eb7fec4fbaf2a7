"""`rigid`: whole-object 6-DoF motion from point tracks and robust PnP (needs a camera).

Method
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
   The camera pose is known, so the object's own motion in mesh coordinates is A_t = C_t^-1 P_t.
6. Optional Gaussian smoothing of A_t over time (off by default; translation directly, rotation
   as so(3) logs around the mean rotation), re-anchored so frame 0 stays the rest pose.
7. Displacements A_t(X) - X for every vertex; confidence = RANSAC inlier ratio per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import trimesh
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from ..camera import Camera, project, transform
from ..errors import EngineError, InputError
from ..direct import image_with_gradients, normalized_image, refine_pose, sample_pixels, signed_distance, silhouette_points
from ..flow import advance, dilated, flow_image, flow_pair, make_dis
from ..progress import Progress
from ..render import rasterize
from .base import EngineInput, EngineOutput

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass
class RigidOptions:
    grid_step: int = 4  # px between seed points at working resolution
    max_points: int = 4000  # cap on seeds (grid step grows to respect it)
    erode: int = 2  # px trimmed off the seed region's border
    fb_thresh: float = 1.0  # px, forward-backward consistency
    ransac_px: float = 2.0  # px, RANSAC inlier reprojection threshold
    min_points: int = 12  # fewer surviving tracks: hold the previous pose, confidence 0
    smooth_sigma: float = 0.0  # frames, Gaussian on the pose track; 0 = off (the refined poses need none)
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


def smooth_poses(A: np.ndarray, sigma: float) -> np.ndarray:
    """A: (T, 4, 4) rigid transforms -> Gaussian-smoothed (T, 4, 4) with A[0] = identity."""
    if sigma <= 0 or len(A) < 3:
        return A
    rot = Rotation.from_matrix(A[:, :3, :3])
    mean = rot.mean()
    logs = (mean.inv() * rot).as_rotvec()  # small angles around the mean: averaging is safe
    logs = gaussian_filter1d(logs, sigma, axis=0, mode="nearest")
    tr = gaussian_filter1d(A[:, :3, 3], sigma, axis=0, mode="nearest")
    out = np.tile(np.eye(4), (len(A), 1, 1))
    out[:, :3, :3] = (mean * Rotation.from_rotvec(logs)).as_matrix()
    out[:, :3, 3] = tr
    # re-anchor: the rest pose must stay exactly the rest pose
    return out @ np.linalg.inv(out[0])


class RigidEngine:
    name = "rigid"
    stages = {"lifting": 0.05, "tracking": 0.88, "pose": 0.01, "write": 0.06}  # in run order, ~wall-time shares

    def __init__(self, options: RigidOptions | None = None) -> None:
        self.options = options or RigidOptions()
        if self.options.flow_preset not in PRESETS:
            raise InputError(f"flow_preset '{self.options.flow_preset}' is unknown", f"use one of {sorted(PRESETS)}")

    def _lift(self, rest, faces, faces_t, M, K, size, masks, t, device, step=None, max_points=None):
        """Seeds on the surface seen at frame t, where M (4, 4) maps rest mesh coords to camera.

        Returns X (P, 3) rest mesh coords, normals (P, 3) in rest coords oriented towards the
        camera, pts (P, 2) pixels.
        """
        o = self.options
        vc = torch.as_tensor(transform(rest, M), dtype=torch.float32, device=device)
        m = masks[t] if masks is not None else None
        step = o.grid_step if step is None else step
        max_points = o.max_points if max_points is None else max_points
        pts, face, bary = seed_points(vc, faces_t, K, size, m, step, o.erode, max_points)
        tri = rest[faces[face]]
        X = (tri * bary[..., None]).sum(1)
        nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-12
        # orient by what the camera saw, so meshes with mixed winding still work
        flip = (transform(X, M) * (nrm @ M[:3, :3].T)).sum(1) > 0
        nrm[flip] *= -1
        return X, nrm, pts

    @staticmethod
    def _visible_model_points(X, nrm, M, K, size, mask):
        """(P,) bool: facing the camera (not grazing), inside the image and the mask."""
        W, H = size
        xc = transform(X, M)
        # cos(angle to the viewing ray) > 0.25: grazing surface tracks badly
        front = (xc * (nrm @ M[:3, :3].T)).sum(1) < -0.25 * np.linalg.norm(xc, axis=1)
        uv = project(xc, K)
        ok = front & (xc[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        if mask is not None:
            xi = np.clip(uv[:, 0].astype(np.int64), 0, W - 1)
            yi = np.clip(uv[:, 1].astype(np.int64), 0, H - 1)
            ok &= mask[yi, xi]
        return ok

    def _keyframe(self, rest, faces, faces_t, M, K, size, masks, t, device, frame):
        """Photometric reference at frame t seen under pose M: (X (P, 3), normals (P, 3), values (P, C))."""
        o = self.options
        X, nrm, pts = self._lift(rest, faces, faces_t, M, K, size, masks, t, device, o.photo_step, o.photo_points)
        img = normalized_image(frame, o.photo_sigma)
        xi, yi = pts[:, 0].astype(np.int64), pts[:, 1].astype(np.int64)  # seeds sit on pixel centres
        return X, nrm, img[yi, xi].astype(np.float64)

    @staticmethod
    def _mask_bias(contour, M, mask, K):
        """Median signed distance (px, > 0: mask too small) of the model contour under the known
        frame-0 pose M to the frame-0 mask boundary: a keyer's systematic boundary offset,
        removed from later frames so it does not turn into depth (scale) error."""
        rest, faces, adj, adj_edges, spacing = contour[:5]
        Xs = silhouette_points(rest, faces, adj, adj_edges, M, spacing)
        if len(Xs) == 0:
            return 0.0
        uv = project(transform(Xs, M), K)
        return float(np.median(sample_pixels(signed_distance(mask)[..., :1], uv)))

    def _refine(self, M, keyframes, frame, mask, K, size, contour=None):
        """Pose M (4, 4) refined against the keyframes' points visible under M."""
        o = self.options
        sel = [self._visible_model_points(X, nrm, M, K, size, mask) for X, nrm, _ in keyframes]
        X = np.concatenate([kf[0][s] for kf, s in zip(keyframes, sel)])
        ref = np.concatenate([kf[2][s] for kf, s in zip(keyframes, sel)])
        if len(X) < o.min_points:
            return M
        usable = None
        if mask is not None:  # samples must not straddle the silhouette
            usable = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        field = image_with_gradients(normalized_image(frame, o.photo_sigma))
        sil_X = sil_field = None
        if contour is not None and mask is not None and o.silhouette_weight > 0:
            rest, faces, adj, adj_edges, spacing = contour[:5]
            sil_X = silhouette_points(rest, faces, adj, adj_edges, M, spacing)
            sil_field = signed_distance(mask)
            sil_field[..., 0] -= contour[5]
        M2, used = refine_pose(M, X, ref, field, K, usable, o.photo_iters, sil_X=sil_X, sil_field=sil_field, sil_weight=o.silhouette_weight)
        return M2 if used > 0 else M

    def track_poses(
        self, rest: np.ndarray, faces: np.ndarray, cam: Camera, frames: np.ndarray, masks: np.ndarray | None,
        device: torch.device, progress: Progress | None = None, stage: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Mesh-to-camera poses of a rigid mesh through a clip (flow + PnP + direct refinement).

        rest: (N, 3) float64 rest vertices; faces: (F, 3); cam: camera with T frames (frame 0's
        pose is taken as exact); frames: (T, H, W, 3) uint8; masks: (T, H, W) bool or None.
        progress: stage `stage` is started (when given) and updated per frame.
        Returns P (T, 4, 4) mesh-to-camera poses, conf (T,) inlier ratios, inliers (T,) int, re-lifts.
        """
        o = self.options
        T = len(frames)
        H, W = frames.shape[1:3]
        faces_t = torch.as_tensor(faces, dtype=torch.long, device=device)
        Kd = cam.K.astype(np.float64)
        X, nrm, pts = self._lift(rest, faces, faces_t, cam.pose(0), Kd, (W, H), masks, 0, device)
        n_seeds = len(X)
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
        rvec = cv2.Rodrigues(P[0, :3, :3])[0]
        tvec = P[0, :3, 3].reshape(3, 1).copy()
        # photometric keyframes: frame 0 (exact pose) and the latest re-lift
        contour = None
        if masks is not None and o.silhouette_weight > 0:
            tm = trimesh.Trimesh(rest, faces, process=False)
            z0 = transform(rest, P[0])[:, 2].mean()
            # ~1 contour point per pixel of silhouette at the frame-0 distance
            contour = (rest, np.asarray(faces), tm.face_adjacency, tm.face_adjacency_edges, z0 / Kd[0, 0])
            contour += (self._mask_bias(contour, P[0], masks[0], Kd),)
        keyframes = [self._keyframe(rest, faces, faces_t, P[0], Kd, (W, H), masks, 0, device, frames[0])] if o.photo_iters > 0 else []
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
            q, ok = advance(fwd, bwd, pts, o.fb_thresh, True, mask_t)
            good = False
            if ok.sum() >= o.min_points:
                O, I = X[ok], q[ok].astype(np.float64)
                good, r1, t1, inl = cv2.solvePnPRansac(
                    O, I, Kd, None, rvec.copy(), tvec.copy(), useExtrinsicGuess=True,
                    iterationsCount=100, reprojectionError=o.ransac_px, confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE,
                )
                if good and inl is not None and len(inl) >= max(6, o.min_points // 2):
                    inl = inl.ravel()
                    rvec, tvec = cv2.solvePnPRefineLM(O[inl], I[inl], Kd, None, r1, t1)
                    conf[t] = len(inl) / len(X)
                    n_inl[t] = len(inl)
                else:
                    good = False
            P[t, :3, :3] = cv2.Rodrigues(rvec)[0]  # on failure: the previous pose, confidence 0
            P[t, :3, 3] = tvec.ravel()
            P[t, 3, 3] = 1.0
            if keyframes:
                P[t] = self._refine(P[t], keyframes, frames[t], masks[t] if masks is not None else None, Kd, (W, H), contour)
                rvec, tvec = cv2.Rodrigues(P[t, :3, :3])[0], P[t, :3, 3].reshape(3, 1).copy()
            # move the anchor every k frames, or early when many tracks died (fast turns)
            early = ok.sum() < o.reanchor_frac * len(pts)
            if t < T - 1 and (t - anchor >= k or early):
                anchor, anchor_img, init = t, cur, None
                keep = self._visible_model_points(X, nrm, P[t], Kd, (W, H), mask_t)
                if early or keep.sum() < o.relift_frac * n_seeds:  # the object turned: seed the surface seen now
                    X_new, nrm_new, _ = self._lift(rest, faces, faces_t, P[t], Kd, (W, H), masks, t, device)
                    if len(X_new) >= o.min_points:
                        X, nrm, n_seeds, relifts = X_new, nrm_new, len(X_new), relifts + 1
                        keep = np.ones(len(X), bool)
                        if keyframes:
                            kf = self._keyframe(rest, faces, faces_t, P[t], Kd, (W, H), masks, t, device, frames[t])
                            keyframes = [keyframes[0], kf]
                X, nrm = X[keep], nrm[keep]
                pts = project(transform(X, P[t]), Kd).astype(np.float32)
        if progress is not None:
            progress.update(1.0)
        return P, conf, n_inl, relifts


    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        o = self.options
        clip = inp.clip
        T, (W, H) = clip.n_frames, clip.size
        cam = inp.camera.with_frames(T)  # given (needs_camera) and at working resolution: afv.request checked it
        rest = inp.mesh.vertices.astype(np.float64)

        progress.start("lifting")
        P, conf, n_inl, relifts = self.track_poses(rest, inp.mesh.faces, cam, clip.frames, inp.masks, inp.device, progress, "tracking")

        progress.start("pose")
        # object motion in mesh coordinates: P_t = C_t A_t
        A = np.linalg.inv(cam.mesh_to_camera) @ P
        A = A @ np.linalg.inv(A[0])
        A = smooth_poses(A, o.smooth_sigma)
        A[0] = np.eye(4)  # exact zeros at the rest frame, not 1e-17
        progress.update(1.0)

        progress.start("write")
        disp = np.empty((T, len(rest), 3), np.float32)
        for t in range(T):
            disp[t] = rest @ A[t, :3, :3].T + A[t, :3, 3] - rest
            if t % 16 == 0:
                progress.update(t / T)
        if not np.isfinite(disp).all():
            raise EngineError("rigid pose estimation produced non-finite values", "check the camera and the masks")
        confidence = np.repeat(conf[:, None], len(rest), axis=1)
        info = {
            "seeds": int(n_inl[0]),
            "relifts": relifts,
            "inliers": n_inl.tolist(),
            "failed_frames": int((conf[1:] == 0).sum()),
        }
        return EngineOutput(disp, confidence, cam, info)
