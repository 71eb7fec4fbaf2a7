"""One Animate-from-Video job against the backend, run on a worker thread.

The UI thread only calls `snapshot()` (a copy of a few fields under a lock) and, once the job
is done, writes the result; every network wait, launch and file read happens on the worker.
No bpy here.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .backend_client import BackendError
from .backend_session import BackendConfig, BackendSession


@dataclass
class JobRequest:
    mesh_npz: bytes  # vertices (N,3) + faces (F,3)
    n_vertices: int
    video_path: str
    masks: str | None = None  # keyword (auto | none | alpha) or a folder/file path
    camera: dict | None = None  # backend camera JSON, None = the engine estimates one
    params: dict = field(default_factory=dict)  # engine, frames, device, max_size, fps, options, seed


@dataclass(frozen=True)
class JobState:
    state: str = "starting"  # starting | running | done | failed | cancelled
    stage: str = "starting backend"
    progress: float = 0.0  # [0, 1]
    eta_s: float | None = None
    message: str = ""
    hint: str = ""
    job_id: str | None = None
    detail: str = ""  # the backend's latest progress message, when it sends one

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass
class ResultCamera:
    """The camera the backend used or estimated (docs/contracts.md), OpenCV convention, source pixels."""

    K: np.ndarray  # (3, 3) float64
    image_size: tuple[int, int]  # (W, H)
    mesh_to_camera: np.ndarray  # (T, 4, 4) float64, one per track (a static camera repeats)

    @property
    def moves(self) -> bool:
        m = self.mesh_to_camera
        return bool(np.abs(m - m[:1]).max() > 1e-6)


@dataclass
class TracksResult:
    displacements: np.ndarray  # (T, N, 3) float32
    frame_indices: np.ndarray  # (T,) int32 video frames
    fps: float  # video fps: track t is at frame_indices[t] / fps seconds
    confidence: np.ndarray | None
    meta: dict
    camera: ResultCamera | None = None
    bone_rotations: np.ndarray | None = None  # (T, B, 4) float32 wxyz, R_b relative to parent in mesh axes
    root_translation: np.ndarray | None = None  # (T, 3) float32
    bone_names: list[str] | None = None  # (B,) when the file names its bones (else: the order the add-on sent)

    @property
    def warnings(self) -> list[str]:
        """What the backend wants the user to know: engine warnings, then mask notes."""
        info = self.meta.get("info") if isinstance(self.meta.get("info"), dict) else {}
        masks = self.meta.get("masks_result") if isinstance(self.meta.get("masks_result"), dict) else {}
        out = [str(w) for w in (info.get("warnings") or [])]
        # backends since the footage branch already list the mask notes in info["warnings"]: once only
        out += [m for m in (f"masks: {n}" for n in (masks.get("notes") or [])) if m not in out]
        return out


class TracksFileError(ValueError):
    """A tracks file that does not fit the mesh or the contract (message says which)."""


def read_tracks(path: Path, n_vertices: int) -> TracksResult:
    """Read and check a tracks .npz (allow_pickle=False). Raises TracksFileError."""
    import json
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise TracksFileError(f"{Path(path).name} is not a tracks .npz file: {exc}") from None
    with z:
        missing = [k for k in ("displacements", "frame_indices", "fps") if k not in z.files]
        if missing:
            raise TracksFileError(f"{Path(path).name} lacks {missing}: not a tracks file from 'afv animate'")
        try:
            disp = z["displacements"].astype(np.float32)
            fi = z["frame_indices"].astype(np.int32)
            fps = float(z["fps"])
            conf = z["confidence"].astype(np.float32) if "confidence" in z.files else None
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            cam = None
            if "camera_K" in z.files:
                m2c = z["camera_mesh_to_camera"].astype(np.float64).reshape(-1, 4, 4)
                if len(m2c) == 1:
                    m2c = np.repeat(m2c, len(disp), 0)
                cam = ResultCamera(z["camera_K"].astype(np.float64).reshape(3, 3),
                                   tuple(int(x) for x in z["camera_image_size"]), m2c)
            rot = z["bone_rotations"].astype(np.float32) if "bone_rotations" in z.files else None
            trans = z["root_translation"].astype(np.float32) if "root_translation" in z.files else None
            names = [str(n) for n in z["bone_names"].reshape(-1)] if "bone_names" in z.files else None
        except ValueError as exc:  # pickled arrays, bad shapes, bad JSON
            raise TracksFileError(f"{Path(path).name} could not be read: {exc}") from None
    if disp.ndim != 3 or disp.shape[2] != 3 or fi.shape != (disp.shape[0],):
        raise TracksFileError(f"tracks have shape {disp.shape} with {fi.shape} frame indices; expected (T, N, 3) and (T,)")
    if disp.shape[1] != n_vertices:
        raise TracksFileError(f"the tracks are for a mesh of {disp.shape[1]} vertices, this mesh has {n_vertices}; "
                              "apply them to the mesh they were computed for (same vertex order)")
    if not (np.isfinite(disp).all() and np.isfinite(fps) and fps > 0):
        raise TracksFileError("the tracks contain non-finite displacements or a non-positive fps")
    if cam is not None and cam.mesh_to_camera.shape[0] != disp.shape[0]:
        raise TracksFileError(f"the camera has {cam.mesh_to_camera.shape[0]} poses for {disp.shape[0]} frames")
    if (rot is None) != (trans is None) or (rot is not None and (
            rot.ndim != 3 or rot.shape[0] != disp.shape[0] or rot.shape[2] != 4 or trans.shape != (disp.shape[0], 3))):
        raise TracksFileError("bone_rotations (T, B, 4) and root_translation (T, 3) must come together, one per frame")
    if names is not None and (rot is None or len(names) != rot.shape[1]):
        raise TracksFileError("bone_names must name each of the bone_rotations' bones")
    return TracksResult(disp, fi, fps, conf, meta, cam, rot, trans, names)


class AnimateJob:
    def __init__(self, session: BackendSession, config: BackendConfig, request: JobRequest,
                 result_dir: str | Path, poll_s: float = 0.25) -> None:
        self.session, self.config, self.request = session, config, request
        self.result_dir = Path(result_dir)
        self.poll_s = poll_s
        self.result: TracksResult | None = None
        self.notes: list[str] = []  # things the user should know about how the job ran (shown after it)
        self._state = JobState()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="afv-job", daemon=True)

    def start(self) -> "AnimateJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def snapshot(self) -> JobState:
        with self._lock:
            return self._state

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _set(self, **kw) -> None:
        with self._lock:
            self._state = replace(self._state, **kw)

    def _run(self) -> None:
        client = None
        try:
            client = self.session.ensure(self.config)
            if self._cancel.is_set():
                self._set(state="cancelled", stage="cancelled", message="cancelled before submitting")
                return
            self._set(stage="uploading")
            r = self.request
            try:
                job_id = client.submit(r.mesh_npz, video_path=r.video_path, masks=r.masks, camera=r.camera, params=r.params)
            except BackendError as exc:
                if not (exc.status == 400 and "unknown params" in exc.message and "up_axis" in exc.message):
                    raise
                # a backend older than the up_axis field: the job still runs, the engine guesses the up direction
                params = {k: v for k, v in r.params.items() if k != "up_axis"}
                job_id = client.submit(r.mesh_npz, video_path=r.video_path, masks=r.masks, camera=r.camera, params=params)
                self.notes.append("this backend does not take the mesh's up direction (up_axis); update it for "
                                  "upright results without a camera")
            self._set(state="running", stage="queued", job_id=job_id)
            while True:
                if self._cancel.wait(self.poll_s):
                    try:
                        client.cancel(job_id)
                    except BackendError:
                        pass  # the backend may be gone; the object is untouched either way
                    self._set(state="cancelled", stage="cancelled", message="cancelled")
                    return
                st = self._status(client, job_id)
                s = st.get("state")
                self._set(stage=str(st.get("stage") or s), progress=float(st.get("progress") or 0.0), eta_s=st.get("eta_s"),
                          detail=str(st.get("message") or ""))
                if s == "done":
                    break
                if s in ("failed", "cancelled"):
                    self._set(state=s, stage=s, message=str(st.get("error") or f"the job was {s}"), hint=str(st.get("hint") or ""))
                    return
            self._set(stage="downloading")
            dest = self.result_dir / f"{job_id}-{uuid.uuid4().hex[:6]}.npz"
            path = client.result(job_id, dest)
            try:
                self.result = read_tracks(Path(path), r.n_vertices)
            except TracksFileError as exc:
                raise BackendError(f"the backend returned unusable tracks: {exc}",
                                   "was the mesh edited while the job ran? run it again", None) from None
            try:
                Path(path).unlink()
            except OSError:
                pass
            self._set(state="done", stage="done", progress=1.0)
        except BackendError as exc:
            self._fail(exc.message if hasattr(exc, "message") else str(exc), getattr(exc, "hint", "") or "")
        except Exception as exc:  # anything else still ends the job with a message, never a hung UI
            self._fail(f"{type(exc).__name__}: {exc}", "")

    def _status(self, client, job_id: str) -> dict:
        try:
            return client.status(job_id)
        except BackendError:
            if not self.session.alive(grace_s=1.0):
                code = self.session.exit_code()
                self.session.stop()
                raise BackendError(f"the backend process stopped unexpectedly (exit code {code})",
                                   "run again to restart it; see the backend log in the data folder", None) from None
            raise

    def _fail(self, message: str, hint: str) -> None:
        if not self.session.alive(grace_s=1.0):
            code = self.session.exit_code()
            self.session.stop()
            message = f"the backend process stopped unexpectedly (exit code {code}): {message}"
            hint = hint or "run again to restart it"
        self._set(state="failed", stage="failed", message=message, hint=hint)
