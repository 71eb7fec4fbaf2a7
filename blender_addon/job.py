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

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass
class TracksResult:
    displacements: np.ndarray  # (T, N, 3) float32
    frame_indices: np.ndarray  # (T,) int32 video frames
    fps: float  # video fps: track t is at frame_indices[t] / fps seconds
    confidence: np.ndarray | None
    meta: dict


def read_tracks(path: Path, n_vertices: int) -> TracksResult:
    import json

    with np.load(path, allow_pickle=False) as z:
        disp = z["displacements"].astype(np.float32)
        fi = z["frame_indices"].astype(np.int32)
        fps = float(z["fps"])
        conf = z["confidence"].astype(np.float32) if "confidence" in z.files else None
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    if disp.ndim != 3 or disp.shape[1:] != (n_vertices, 3) or fi.shape != (disp.shape[0],):
        raise BackendError(f"the backend returned tracks of shape {disp.shape} for a mesh of {n_vertices} vertices",
                           "was the mesh edited while the job ran? run it again", None)
    if not np.isfinite(disp).all():
        raise BackendError("the backend returned non-finite displacements", "try another engine or frame range", None)
    return TracksResult(disp, fi, fps, conf, meta)


class AnimateJob:
    def __init__(self, session: BackendSession, config: BackendConfig, request: JobRequest,
                 result_dir: str | Path, poll_s: float = 0.25) -> None:
        self.session, self.config, self.request = session, config, request
        self.result_dir = Path(result_dir)
        self.poll_s = poll_s
        self.result: TracksResult | None = None
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
            job_id = client.submit(r.mesh_npz, video_path=r.video_path, masks=r.masks, camera=r.camera, params=r.params)
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
                self._set(stage=str(st.get("stage") or s), progress=float(st.get("progress") or 0.0), eta_s=st.get("eta_s"))
                if s == "done":
                    break
                if s in ("failed", "cancelled"):
                    self._set(state=s, stage=s, message=str(st.get("error") or f"the job was {s}"), hint=str(st.get("hint") or ""))
                    return
            self._set(stage="downloading")
            dest = self.result_dir / f"{job_id}-{uuid.uuid4().hex[:6]}.npz"
            path = client.result(job_id, dest)
            self.result = read_tracks(Path(path), r.n_vertices)
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
            if not self.session.alive():
                code = self.session.exit_code()
                self.session.stop()
                raise BackendError(f"the backend process stopped unexpectedly (exit code {code})",
                                   "run again to restart it; see the backend log in the data folder", None) from None
            raise

    def _fail(self, message: str, hint: str) -> None:
        if not self.session.alive():
            code = self.session.exit_code()
            self.session.stop()
            message = f"the backend process stopped unexpectedly (exit code {code}): {message}"
            hint = hint or "run again to restart it"
        self._set(state="failed", stage="failed", message=message, hint=hint)
