"""Job records and the worker that runs them, one at a time (the GPU is the bottleneck).

Layout under <data_dir>/jobs/<id>/: job.json (the record, written atomically at every
state change), input/ (uploads; removed once the job ends), tracks.npz (the result).
On start-up records are reloaded: finished results stay available, and jobs that were
queued or running when the previous server stopped read as failed with that reason.
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import shutil
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import AfvError, Cancelled, InputError
from ..progress import CancelToken, Progress, ProgressEvent

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = {"done", "failed", "cancelled"}
JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class JobRecord:
    id: str
    state: str = "queued"
    progress: float = 0.0
    stage: str = ""
    eta_s: float | None = None
    error: str | None = None
    hint: str | None = None
    created_unix: float = field(default_factory=time.time)
    started_unix: float | None = None
    finished_unix: float | None = None
    cancel_requested: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # engine, frames, ... as submitted
    inputs: dict[str, Any] = field(default_factory=dict)  # server-side paths (video, masks, mesh, camera)
    n_vertices: int = 0
    n_frames: int = 0
    result_bytes: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What a client sees (no server paths)."""
        d = asdict(self)
        d.pop("inputs")
        return d


class JobManager:
    """Owns the records and the worker thread. Thread-safe; all methods are quick."""

    def __init__(self, jobs_dir: Path, max_queued: int = 64) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._tokens: dict[str, CancelToken] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._load()
        self._worker = threading.Thread(target=self._run_worker, name="afv-job-worker", daemon=True)
        self._worker.start()

    # ---- records -------------------------------------------------------------------------
    def _load(self) -> None:
        for f in sorted(self.jobs_dir.glob("*/job.json")):
            try:
                d = json.loads(f.read_text())
                rec = JobRecord(**{k: v for k, v in d.items() if k in JobRecord.__dataclass_fields__})
            except (OSError, ValueError, TypeError):
                continue  # a foreign or damaged record: ignore it, never crash start-up
            if not JOB_ID.fullmatch(rec.id) or f.parent.name != rec.id:
                continue
            if rec.state not in TERMINAL:
                rec.state, rec.finished_unix = "failed", time.time()
                rec.error = f"interrupted: the server stopped while this job was {d.get('state')}"
                rec.hint = "submit the job again"
                self._cleanup_inputs(rec)
                self._persist(rec)
            elif rec.state == "done" and not self.result_path(rec.id).is_file():
                rec.state, rec.error, rec.hint = "failed", "the result file is missing", "submit the job again"
                self._persist(rec)
            self._jobs[rec.id] = rec

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "tracks.npz"

    def new_job_dir(self) -> tuple[str, Path]:
        job_id = secrets.token_hex(16)
        d = self.job_dir(job_id)
        (d / "input").mkdir(parents=True)
        return job_id, d

    def _persist(self, rec: JobRecord) -> None:
        with atomic_path(self.job_dir(rec.id) / "job.json") as tmp:
            tmp.write_text(json.dumps(asdict(rec), indent=1))

    def get(self, job_id: str) -> JobRecord | None:
        if not JOB_ID.fullmatch(job_id):
            return None
        with self._lock:
            rec = self._jobs.get(job_id)
            return JobRecord(**asdict(rec)) if rec else None  # a snapshot, safe to read later

    def list(self) -> list[JobRecord]:
        with self._lock:
            return [JobRecord(**asdict(r)) for r in sorted(self._jobs.values(), key=lambda r: r.created_unix)]

    def active_count(self) -> int:
        with self._lock:
            return sum(r.state in ("queued", "running") for r in self._jobs.values())

    def queue_position(self, job_id: str) -> int | None:
        with self._lock:
            queued = sorted((r for r in self._jobs.values() if r.state == "queued"), key=lambda r: r.created_unix)
            ids = [r.id for r in queued]
            return ids.index(job_id) if job_id in ids else None

    # ---- submit / cancel -----------------------------------------------------------------
    def submit(self, rec: JobRecord) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise InputError("the server is shutting down")
            self._jobs[rec.id] = rec
            self._tokens[rec.id] = CancelToken()
            self._persist(rec)
        self._queue.put(rec.id)

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                return None
            if rec.state == "queued":
                rec.state, rec.finished_unix, rec.cancel_requested = "cancelled", time.time(), True
                self._persist(rec)
                self._cleanup_inputs(rec)
            elif rec.state == "running":
                rec.cancel_requested = True
                self._tokens[job_id].cancel()  # the engine stops at its next progress check
            return JobRecord(**asdict(rec))

    # ---- the worker ----------------------------------------------------------------------
    def _run_worker(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                break
            with self._lock:
                rec = self._jobs.get(job_id)
                if rec is None or rec.state != "queued":
                    continue  # cancelled while queued
                rec.state, rec.started_unix, rec.stage = "running", time.time(), "starting"
                token = self._tokens[job_id]
                self._persist(rec)
            self._execute(job_id, token)

    def _on_event(self, job_id: str, ev: ProgressEvent) -> None:
        with self._lock:
            rec = self._jobs[job_id]
            rec.progress, rec.stage = round(float(ev.fraction), 4), ev.stage
            rec.eta_s = None if ev.eta_s is None else round(float(ev.eta_s), 2)

    def _execute(self, job_id: str, token: CancelToken) -> None:
        from ..mesh import load_mesh
        from ..pipeline import AnimateRequest, animate

        with self._lock:
            rec = self._jobs[job_id]
            inputs, params = dict(rec.inputs), dict(rec.params)
        state, error, hint, timings = "done", None, None, {}
        try:
            camera = None
            if inputs.get("camera"):
                from ..camera import load_camera

                camera = load_camera(inputs["camera"])
            req = AnimateRequest(
                mesh=load_mesh(inputs["mesh"]), video=inputs["video"], masks=inputs.get("masks") or "auto", camera=camera, **params
            )
            progress = Progress(on_event=lambda ev: self._on_event(job_id, ev), cancel=token)
            tracks = animate(req, progress)
            token.raise_if_cancelled()
            tracks.save(self.result_path(job_id))
            timings = dict(tracks.meta.get("timings_s", {}))
        except Cancelled:
            if self._stopping.is_set():
                state, error, hint = "failed", "interrupted: the server was stopped", "submit the job again"
            else:
                state, error = "cancelled", "cancelled by request"
        except AfvError as exc:
            state, error, hint = "failed", exc.message, exc.hint or None
        except MemoryError:
            state, error, hint = "failed", "out of memory", "use a smaller max_size or fewer frames"
        except Exception as exc:  # an engine bug must not kill the worker thread
            traceback.print_exc(file=sys.stderr)
            state, error, hint = "failed", f"internal error: {type(exc).__name__}: {exc}", "see the server log"
        finally:
            _release_gpu_memory()
        with self._lock:
            rec = self._jobs[job_id]
            rec.state, rec.error, rec.hint, rec.finished_unix = state, error, hint, time.time()
            rec.eta_s = 0.0 if state == "done" else None
            if state == "done":
                rec.progress, rec.stage = 1.0, "done"
                rec.result_bytes = self.result_path(job_id).stat().st_size
                rec.timings_s = timings
            self._persist(rec)
            self._tokens.pop(job_id, None)
            self._cleanup_inputs(rec)

    def _cleanup_inputs(self, rec: JobRecord) -> None:
        shutil.rmtree(self.job_dir(rec.id) / "input", ignore_errors=True)

    def discard(self, job_id: str) -> None:
        """Forget a job whose submission failed validation (before it was queued)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # ---- shutdown ------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Cancel the running job, stop the worker; queued jobs stay queued on disk and read
        as interrupted on the next start."""
        self._stopping.set()
        with self._lock:
            for tok in self._tokens.values():
                tok.cancel()
        self._queue.put(None)
        self._worker.join(timeout_s)


def _release_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # never let cleanup fail a job
        pass
