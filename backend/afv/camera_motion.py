"""The camera's own motion, estimated from the background (everything outside the object mask).

Optical flow between consecutive frames, sampled outside the dilated object mask, gives a
homography per frame pair (RANSAC); chained, H_t maps frame 0 to frame t. Two models explain it:

- **rotation** (pan, tilt, roll; the usual handheld or tripod shot): H_t = K R_t K^-1, no
  translation. Chosen when it explains the background to within `rotation_tol` of the diagonal.
- **plane** (dolly, truck, crane over a dominant background plane): H_t = K (R_t + t_t n^T / d) K^-1
  (OpenCV's decomposition). The plane normal n is the same in every frame (it is expressed in
  camera 0), which picks one of the decomposition's solutions: the candidate normal most frames
  agree on. The scale d is not in the images; it comes from a reference point on the plane in
  camera-0 coordinates (`plane_point`): the pipeline passes the object's lowest point, i.e. the
  object stands on the background plane (a ground). Without one, translation is left out.

Result: `world_to_cam` (T, 4, 4) maps camera-0 coordinates to camera-t coordinates (identity at
frame 0); a mesh placement M_0 (mesh -> camera 0) becomes the per-frame camera
`world_to_cam[t] @ M_0`, so an object standing still in the world keeps still in mesh coordinates.
Pixel convention as everywhere (afv.flow): pixel (0, 0) covers [0, 1)^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .progress import Progress


def background_homography(flow: np.ndarray, exclude: np.ndarray | None = None, step: int = 8, thresh: float = 1.0,
                          min_points: int = 24) -> np.ndarray | None:
    """flow: (h, w, 2) float32 from frame a to frame b (OpenCV DIS, pixel-centre indexing);
    exclude: (h, w) bool pixels not to use (the object and its surroundings).
    -> (3, 3) float64 homography H with x_b ~ H x_a (array index coordinates) fitted by RANSAC
    (`thresh` px) to the flow sampled every `step` pixels outside `exclude`; None when fewer than
    `min_points` samples are left or no model is found."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    ok = np.ones(xs.shape, bool) if exclude is None else ~exclude[ys, xs]
    if int(ok.sum()) < min_points:
        return None
    src = np.stack([xs[ok], ys[ok]], 1).astype(np.float32)
    dst = src + flow[ys[ok], xs[ok]]
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, thresh, maxIters=500, confidence=0.995)
    return H


@dataclass
class CameraMotion:
    world_to_cam: np.ndarray  # (T, 4, 4) float64: camera-0 coordinates -> camera-t coordinates
    model: str  # "static" | "rotation" | "plane"
    rotation_deg: np.ndarray  # (T,) angle of the camera's rotation since frame 0
    translation: np.ndarray  # (T,) distance the camera moved since frame 0 (camera-0 units; 0 for rotation)
    background_fraction: float  # median share of the frame used as background
    notes: list[str] = field(default_factory=list)

    @property
    def moves(self) -> bool:
        return self.model != "static"

    def summary(self) -> dict:
        return {"model": self.model, "max_rotation_deg": round(float(self.rotation_deg.max()), 3),
                "max_translation": round(float(self.translation.max()), 5),
                "background_fraction": round(self.background_fraction, 3), "notes": list(self.notes)}


def _shift(H: np.ndarray, s: float) -> np.ndarray:
    """A homography in array-index coordinates -> the same map in pixel coordinates (index + s)."""
    T = np.array([[1, 0, s], [0, 1, s], [0, 0, 1.0]])
    return T @ H @ np.linalg.inv(T)


def _nearest_rotation(A: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(A)
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1, 1, -1]) @ Vt
    return R


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def _map(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ H.T
    return p[:, :2] / p[:, 2:3]


def _refine_to_first(Hs: np.ndarray, frames, masks, size, kernel, gray) -> np.ndarray:
    """Register every frame directly to frame 0 (ECC, homography, background only), starting
    from the chained estimate: removes the chain's drift. Frames where ECC fails keep the chain."""
    w, h = size
    tpl = gray(frames[0]).astype(np.float32)
    bg = np.full((h, w), 255, np.uint8)
    if masks is not None:
        m = cv2.resize(masks[0].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        bg = np.where(cv2.dilate(m, kernel) > 0, 0, 255).astype(np.uint8)
    out = Hs.copy()
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float)
    max_change = 0.05
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5)
    for t in range(1, len(Hs)):
        W0 = _shift(Hs[t], -0.5).astype(np.float32)  # pixel -> index coordinates
        try:
            _, W1 = cv2.findTransformECC(tpl, gray(frames[t]).astype(np.float32), W0, cv2.MOTION_HOMOGRAPHY, crit, bg, 3)
        except cv2.error:
            continue
        H1 = _shift(W1.astype(np.float64), 0.5)
        H1 /= H1[2, 2]
        # a registration that wandered off (little overlap left with frame 0) is not trusted
        if np.abs(_map(H1, corners) - _map(Hs[t], corners)).max() <= max_change * np.hypot(w, h):
            out[t] = H1
    return out


def estimate_camera_motion(
    frames: np.ndarray,
    masks: np.ndarray | None,
    K: np.ndarray,
    plane_point: np.ndarray | None = None,
    exclude_margin: float = 0.03,
    rotation_tol: float = 0.002,
    static_tol: float = 0.001,
    long_side: int = 512,
    anchor_every: int = 4,
    refine: bool = True,
    min_texture: float = 2e-5,
    progress: Progress | None = None,
) -> CameraMotion:
    """frames: (T, H, W, 3) uint8 RGB; masks: (T, H, W) bool object masks or None; K: (3, 3) at
    the frames' resolution; plane_point: (3,) a point of the background plane in camera-0
    coordinates (sets the translation's scale) or None.

    exclude_margin: the masks are dilated by this fraction of the diagonal before the background
    is sampled. rotation_tol / static_tol: fractions of the diagonal; the median over frames of the
    background's misfit under a pure rotation decides rotation vs plane, and a camera whose chained
    homographies move the background by less than static_tol is "static". anchor_every: flow is
    measured from an anchor frame moved every that many frames (less drift than frame to frame).
    refine: register each frame to frame 0 directly (ECC) to remove the chain's drift. min_texture:
    OpenCV's minimum structure-tensor eigenvalue (5 px blocks) below which a pixel's flow is not used
    (flat backdrops score 0, textured ground 1e-4 and more).
    """
    T, H, W = frames.shape[:3]
    s = min(1.0, long_side / max(H, W))
    w, h = max(16, int(round(W * s))), max(16, int(round(H * s)))
    sx, sy = w / W, h / H
    Ks = np.diag([sx, sy, 1.0]) @ K
    Ki = np.linalg.inv(Ks)
    diag = float(np.hypot(w, h))
    r = max(1, int(round(exclude_margin * diag)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = lambda f: cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)  # noqa: E731
    # flow from an anchor frame, moved every `anchor_every` frames: drift accumulates over
    # T / anchor_every chained homographies instead of T
    Hs = [np.eye(3)]
    bg_frac = []
    anchor, anchor_img = 0, gray(frames[0])
    lost = 0
    for t in range(1, T):
        if progress is not None:
            progress.update(0.9 * t / T)
        cur = gray(frames[t])
        flow = dis.calc(anchor_img, cur, None)
        # flow is only evidence where the image has texture: DIS fills flat regions (a backdrop, the
        # sky) with the flow of their surroundings, i.e. with the object's motion near it
        excl = cv2.cornerMinEigenVal(anchor_img, 5, 3) < min_texture
        if masks is not None:
            m = cv2.resize(masks[anchor].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            obj = cv2.dilate(m, kernel).astype(bool)
            bg_frac.append(1.0 - float(obj.mean()))
            excl |= obj
        Hp = background_homography(flow, excl, step=6)
        if Hp is None:  # no background to see: assume the camera kept still for this step
            Hp, lost = np.eye(3), lost + 1
        Hs.append(_shift(Hp, 0.5) @ Hs[anchor])
        if t - anchor >= anchor_every:
            anchor, anchor_img = t, cur
    Hs = np.stack([Hh / Hh[2, 2] for Hh in Hs])
    # background sample (pixel coordinates) to score the models on
    gy, gx = np.mgrid[0.5:h:h / 12, 0.5:w:w / 16]
    pts = np.stack([gx.ravel(), gy.ravel()], 1)

    def motion_of(Hs: np.ndarray) -> np.ndarray:
        return np.array([np.median(np.linalg.norm(_map(Hh, pts) - pts, axis=1)) for Hh in Hs])

    bgf = float(np.median(bg_frac)) if bg_frac else 1.0
    eye = np.repeat(np.eye(4)[None], T, 0)
    if lost == T - 1:
        return CameraMotion(eye, "static", np.zeros(T), np.zeros(T), bgf,
                            ["the background has too little texture to see the camera move; it is assumed still"])
    notes = [f"{lost} frame pair(s) had too little textured background; the camera was assumed still there"] if lost else []
    if motion_of(Hs).max() < static_tol * diag:  # a still camera: no registration needed
        return CameraMotion(eye, "static", np.zeros(T), np.zeros(T), bgf, notes)
    if refine:
        Hs = _refine_to_first(Hs, frames, masks, (w, h), kernel, gray)
    motion = motion_of(Hs)

    Rs = np.stack([_nearest_rotation(Ki @ Hh @ Ks * np.sign(np.linalg.det(Ki @ Hh @ Ks)) / abs(np.linalg.det(Ki @ Hh @ Ks)) ** (1 / 3)) for Hh in Hs])
    rot_err = np.array([np.median(np.linalg.norm(_map(Ks @ R @ Ki, pts) - _map(Hh, pts), axis=1)) for R, Hh in zip(Rs, Hs)])
    out = eye.copy()
    out[:, :3, :3] = Rs
    angles = np.array([_angle_deg(R) for R in Rs])
    if np.median(rot_err[1:]) <= rotation_tol * diag:
        notes.append(f"camera rotates (pan/tilt/roll) up to {angles.max():.2f} deg; background misfit {np.median(rot_err[1:]):.2f} px")
        return CameraMotion(out, "rotation", angles, np.zeros(T), bgf, notes)
    if plane_point is None:
        notes.append("the camera also translates, but no scale reference was given: only its rotation is used")
        return CameraMotion(out, "rotation", angles, np.zeros(T), bgf, notes)

    # plane model: candidates per frame, the normal most frames agree on, then per-frame solutions
    rays = np.c_[pts, np.ones(len(pts))] @ Ki.T
    cands = []
    for t in range(T):
        if motion[t] < static_tol * diag:
            cands.append([])
            continue
        n_sol, Rc, tc, nc = cv2.decomposeHomographyMat(Hs[t], Ks)
        sols = []
        for R_, t_, n_ in zip(Rc, tc, nc):
            n_ = n_.ravel()
            if (rays @ n_ > 0).mean() > 0.5:  # background in front of camera 0: n . X = d > 0
                sols.append((R_, t_.ravel(), n_))
        cands.append(sols)
    all_n = [s_[2] for c in cands for s_ in c]
    if not all_n:
        notes.append("plane decomposition failed: only the camera's rotation is used")
        return CameraMotion(out, "rotation", angles, np.zeros(T), bgf, notes)
    votes = [sum(max((float(a @ s_[2]) for s_ in c), default=0.0) for c in cands if c) for a in all_n]
    n_star = all_n[int(np.argmax(votes))]
    d = float(n_star @ np.asarray(plane_point, float))
    if d <= 0:
        notes.append("the scale reference is not in front of the background plane: only the camera's rotation is used")
        return CameraMotion(out, "rotation", angles, np.zeros(T), bgf, notes)
    trans = np.zeros(T)
    for t, c in enumerate(cands):
        if not c:
            continue
        R_, t_, _ = max(c, key=lambda s_: float(s_[2] @ n_star))
        out[t, :3, :3] = R_
        out[t, :3, 3] = t_ * d
        angles[t] = _angle_deg(R_)
        trans[t] = float(np.linalg.norm(-R_.T @ (t_ * d)))
    notes.append(f"camera moves over a background plane: up to {angles.max():.2f} deg and {trans.max():.3g} units "
                 f"(scale: the plane passes through the object's lowest point)")
    return CameraMotion(out, "plane", angles, trans, bgf, notes)


__all__ = ["CameraMotion", "estimate_camera_motion", "background_homography"]
