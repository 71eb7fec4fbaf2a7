"""`rigid`: whole-object 6-DoF motion from point tracks and robust PnP (needs a camera).

Method
1-5. The rigid tracker (afv.tracking.rigid): seeds on the surface seen at frame 0, flow tracks
   from re-placed anchors, PnP + RANSAC per frame, direct refinement on colour and outline.
   The camera pose is known, so the object's own motion in mesh coordinates is A_t = C_t^-1 P_t.
6. Optional Gaussian smoothing of A_t over time (off by default; translation directly, rotation
   as so(3) logs around the mean rotation), re-anchored so frame 0 stays the rest pose.
7. Self-check (engines/selfcheck.py, as the default engine's): per frame the tracked pose
   competes with the still mesh on held-out tracks and silhouette IoU; where it loses, the pose
   is blended back to rest, with a warning. The depth is then kept within what the silhouette's
   scale explains (a lost PnP used to throw the mesh along the camera rays: Robot Death side
   view 2124 % of the diagonal).
8. Displacements A_t(X) - X for every vertex; confidence = RANSAC inlier ratio per frame x the
   self-check's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from ..camera import Camera
from ..errors import EngineError
from ..geometry.projection import transform_points
from ..progress import Progress
from ..tracking.rigid import RigidTrackOptions, track_rigid
from .base import EngineInput, EngineOutput
from .selfcheck import depth_shift, self_check


@dataclass
class RigidOptions(RigidTrackOptions):
    """The tracker's options (afv.tracking.rigid.RigidTrackOptions) and the engine's own."""

    smooth_sigma: float = 0.0  # frames, Gaussian on the pose track; 0 = off (the refined poses need none)
    selfcheck: bool = True  # check against held-out evidence; fall back to the still mesh per frame, bound the depth


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
        self.options.check()

    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        o = self.options
        clip = inp.clip
        T = clip.n_frames
        cam = inp.camera.with_frames(T)  # given (needs_camera) and at working resolution: afv.request checked it
        rest = inp.mesh.vertices.astype(np.float64)

        progress.start("lifting")
        track = track_rigid(rest, inp.mesh.faces, cam, clip.frames, inp.masks, inp.device, o, progress, "tracking")
        P, conf, n_inl = track.poses, track.confidence, track.inliers

        progress.start("pose")
        # object motion in mesh coordinates: P_t = C_t A_t
        A = np.linalg.inv(cam.mesh_to_camera) @ P
        A = A @ np.linalg.inv(A[0])
        A = smooth_poses(A, o.smooth_sigma)
        A[0] = np.eye(4)  # exact zeros at the rest frame, not 1e-17
        info: dict = {"warnings": []}
        if o.selfcheck and T >= 2:
            A, conf = self._checked(inp, cam, A, conf, info)
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
        info |= {
            "seeds": int(n_inl[0]),
            "relifts": track.relifts,
            "inliers": n_inl.tolist(),
            "failed_frames": int((conf[1:] == 0).sum()),
        }
        return EngineOutput(disp, confidence, cam, info)

    @staticmethod
    def _checked(inp: EngineInput, cam: Camera, A: np.ndarray, conf: np.ndarray, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """The self-check's still-or-tracked choice per frame applied to the poses A (T, 4, 4),
        then the depth bound. -> (poses (T, 4, 4), per-frame confidence (T,))."""
        rest = inp.mesh.vertices.astype(np.float64)
        disp = transform_points(np.broadcast_to(rest, (len(A), *rest.shape)), A) - rest
        chk = self_check(inp.mesh, cam, inp.clip.frames, inp.masks, disp.astype(np.float32), rigid_positions=None,
                         label="the rigid track", seed=inp.seed, device=inp.device)
        out = blend_towards_rest(A, chk.weights[1] + chk.weights[2], rest.mean(0))
        cen = transform_points(np.broadcast_to(rest.mean(0), (len(out), 1, 3)), out)[:, 0]  # (T, 3) posed centroid
        out[:, :3, 3] += depth_shift(cen, cam.mesh_to_camera, chk.scale)
        info["warnings"].extend(chk.warnings)
        info["selfcheck"] = chk.info()
        c = conf * chk.confidence[:, 0]
        c[0] = conf[0]  # frame 0 is the given rest pose under every hypothesis
        return out, c


def blend_towards_rest(A: np.ndarray, w: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Rigid poses A (T, 4, 4) taken a fraction w (T,) of the way from rest, about `center` (3,):
    R_w = exp(w log R), and the centre moves w of its way, so a cross-fade frame puts the object
    between the two hypotheses (blending about the mesh origin would swing it elsewhere)."""
    out = np.tile(np.eye(4), (len(A), 1, 1))
    Rw = Rotation.from_rotvec(Rotation.from_matrix(A[:, :3, :3]).as_rotvec() * w[:, None]).as_matrix()
    moved = A[:, :3, :3] @ center + A[:, :3, 3]  # (T, 3) where A puts the centre
    out[:, :3, :3] = Rw
    out[:, :3, 3] = center + w[:, None] * (moved - center) - Rw @ center
    return out
