"""Job records and the worker that runs them, one at a time (the GPU is the bottleneck).

Layout under <data_dir>/jobs/<id>/: job.json (the record, written atomically at every
state change), input/ (uploads; removed once the job ends), tracks.npz (the result).

The manager knows nothing of animation: a job is a record plus an opaque payload (the typed
request) that the `run` callable given at construction turns into the result file.

Failure behaviour:
- the worker cannot die: any exception while running or persisting a job marks that job
  failed with the reason, and the worker takes the next one;
- a record that cannot be written (disk full) stays marked dirty and is written again at each
  worker wake-up (about once a second) until it lands, so disk and memory converge once space
  returns; a non-final record read at start-up becomes `failed` (interrupted), or `cancelled`
  when a cancel had been recorded;
- start-up removes partial files (atomic-write temp files), orphan job folders (no record) and
  left-over inputs, and skips a corrupt record with a logged warning.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import re
import secrets
import shutil
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_path
from ..errors import AfvError, Cancelled, InputError
from ..progress import CancelToken, Progress, ProgressEvent

log = logging.getLogger("afv.server")

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = {"done", "failed", "cancelled"}
JOB_ID = re.compile(r"[0-9a-f]{32}")

# run(payload, progress, result_path) -> timings; raises AfvError / Cancelled / anything
Runner = Callable[[Any, Progress, Path], dict]


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

    @staticmethod
    def from_json(d: Any) -> "JobRecord":
        """A record read from disk, every field type-checked (a hand-edited file must not
        break listing); raises ValueError naming the first bad field."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        kinds = {"id": str, "state": str, "progress": (int, float), "stage": str, "eta_s": (int, float, type(None)),
                 "error": (str, type(None)), "hint": (str, type(None)), "created_unix": (int, float),
                 "started_unix": (int, float, type(None)), "finished_unix": (int, float, type(None)),
                 "cancel_requested": bool, "params": dict, "inputs": dict, "n_vertices": int, "n_frames": int,
                 "result_bytes": (int, type(None)), "timings_s": dict}
        kw = {}
        for f in fields(JobRecord):
            if f.name not in d:
                if f.name == "id":
                    raise ValueError("no id")
                continue
            v = d[f.name]
            if not isinstance(v, kinds[f.name]) or (isinstance(v, bool) and kinds[f.name] is not bool):
                raise ValueError(f"field {f.name} has type {type(v).__name__}")
            kw[f.name] = v
        rec = JobRecord(**kw)
        if rec.state not in STATES or not JOB_ID.fullmatch(rec.id):
            raise ValueError(f"state {rec.state!r} / id {rec.id[:40]!r}")
        return rec


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class JobManager:
    """Owns the records and the worker thread. Thread-safe; all methods are quick."""

    def __init__(self, jobs_dir: Path, run: Runner, max_queued: int = 64, stuck_after_s: float = 1800.0,
                 warm_up: Callable[[], Any] | None = None) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.max_queued = max_queued
        self.stuck_after_s = stuck_after_s
        self._run = run
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._payloads: dict[str, Any] = {}
        self._tokens: dict[str, CancelToken] = {}
        self._dirty: set[str] = set()  # records whose last write failed
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._last_event = time.monotonic()  # the worker's heartbeat: job start, progress, job end
        # the worker's first task: the engines' slow imports, so the first job does not wait for them
        # (jobs submitted meanwhile queue behind it: the same wait, without two threads fighting for the GIL)
        self._warm_up = warm_up
        self.warm = threading.Event()
        self.warm_up_s: float | None = None
        self._load()
        self._worker = threading.Thread(target=self._run_worker, name="afv-job-worker", daemon=True)
        self._worker.start()

    # ---- records -------------------------------------------------------------------------
    def _load(self) -> None:
        """Start-up recovery (see the module docstring)."""
        for d in sorted(p for p in self.jobs_dir.iterdir() if p.is_dir()):
            f = d / "job.json"
            for partial in d.glob(".*"):  # atomic_path temp files of a write that was killed
                _remove(partial)
            if not f.is_file():
                if JOB_ID.fullmatch(d.name):  # a submission killed before its record was written
                    log.warning("removing orphan job folder %s (no job.json)", d.name)
                    _remove(d)
                continue
            try:
                rec = JobRecord.from_json(json.loads(f.read_text()))
                if d.name != rec.id:
                    raise ValueError(f"id {rec.id} in folder {d.name}")
            except (OSError, ValueError, RecursionError) as exc:
                log.warning("skipping job record %s: %s", f, str(exc)[:200])
                continue
            if rec.state not in TERMINAL:
                was = rec.state
                rec.finished_unix = time.time()
                if rec.cancel_requested:
                    rec.state, rec.error, rec.hint = "cancelled", "cancelled by request", None
                else:
                    rec.state, rec.hint = "failed", "submit the job again"
                    rec.error = f"interrupted: the server stopped while this job was {was}"
                _remove(self.result_path(rec.id))  # a result without a finished record is not trusted
                self._persist_or_mark(rec)
            elif rec.state == "done" and not self.result_path(rec.id).is_file():
                rec.state, rec.error, rec.hint = "failed", "the result file is missing", "submit the job again"
                self._persist_or_mark(rec)
            self._cleanup_inputs(rec)
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

    def _persist_or_mark(self, rec: JobRecord) -> bool:
        """Write the record; on failure remember it for a later attempt. True when written."""
        try:
            self._persist(rec)
        except Exception as exc:  # disk full, permissions, a vanished folder: never fatal
            self._dirty.add(rec.id)
            log.error("could not save job %s (%s); will retry", rec.id, exc)
            return False
        self._dirty.discard(rec.id)
        return True

    def _flush_dirty(self) -> None:
        with self._lock:
            for job_id in list(self._dirty):
                rec = self._jobs.get(job_id)
                if rec is None:
                    self._dirty.discard(job_id)
                else:
                    self._persist_or_mark(rec)

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

    def worker_health(self) -> tuple[str, str]:
        """("ok" | "dead" | "stuck", reason)."""
        if not self._worker.is_alive() and not self._stopping.is_set():
            return "dead", "the job worker thread has stopped"
        with self._lock:
            running = any(r.state == "running" for r in self._jobs.values())
        quiet = time.monotonic() - self._last_event
        if running and quiet > self.stuck_after_s:
            return "stuck", f"the running job has reported no progress for {quiet:.0f} s"
        return "ok", ""

    # ---- submit / cancel -----------------------------------------------------------------
    def submit(self, rec: JobRecord, payload: Any) -> None:
        """Queue a validated job. Raises OSError (disk full) when its record cannot be written:
        then nothing is queued."""
        with self._lock:
            if self._stopping.is_set():
                raise InputError("the server is shutting down")
            self._persist(rec)
            self._jobs[rec.id] = rec
            self._payloads[rec.id] = payload
            self._tokens[rec.id] = CancelToken()
        self._queue.put(rec.id)

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                return None
            if rec.state == "queued":
                rec.state, rec.finished_unix, rec.cancel_requested = "cancelled", time.time(), True
                rec.error = "cancelled by request"
                self._payloads.pop(job_id, None)
                self._persist_or_mark(rec)
                self._cleanup_inputs(rec)
            elif rec.state == "running" and not rec.cancel_requested:
                rec.cancel_requested = True
                self._tokens[job_id].cancel()  # the engine stops at its next progress check
                self._persist_or_mark(rec)  # a restart before the job ends still reads it as cancelled
            return JobRecord(**asdict(rec))

    # ---- the worker ----------------------------------------------------------------------
    def _run_worker(self) -> None:
        self._run_warm_up()
        while not self._stopping.is_set():
            try:
                job_id = self._queue.get(timeout=1.0)
            except queue.Empty:
                job_id = ""
            try:
                self._flush_dirty()
                if job_id is None:
                    break
                if job_id:
                    self._run_one(job_id)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any job
                log.error("job worker: %s\n%s", exc, traceback.format_exc(limit=5))
                if job_id:
                    self._finish(job_id, "failed", f"internal error: {type(exc).__name__}: {str(exc)[:300]}", "see the server log")

    def _run_warm_up(self) -> None:
        t0 = time.perf_counter()
        try:
            if self._warm_up is not None:
                self._warm_up()
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means the first job imports itself
            log.warning("warm-up failed (jobs still run): %s: %s", type(exc).__name__, str(exc)[:300])
        finally:
            self.warm_up_s = round(time.perf_counter() - t0, 2)
            self._last_event = time.monotonic()
            self.warm.set()

    def _on_event(self, job_id: str, ev: ProgressEvent) -> None:
        self._last_event = time.monotonic()
        with self._lock:
            rec = self._jobs[job_id]
            rec.progress, rec.stage = round(float(ev.fraction), 4), ev.stage
            rec.eta_s = None if ev.eta_s is None else round(float(ev.eta_s), 2)

    def _run_one(self, job_id: str) -> None:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None or rec.state != "queued":
                return  # cancelled while queued
            rec.state, rec.started_unix, rec.stage = "running", time.time(), "starting"
            token = self._tokens[job_id]
            payload = self._payloads.pop(job_id)
            self._last_event = time.monotonic()
            self._persist_or_mark(rec)
        state, error, hint, timings = "done", None, None, {}
        try:
            progress = Progress(on_event=lambda ev: self._on_event(job_id, ev), cancel=token)
            timings = self._run(payload, progress, self.result_path(job_id))
            token.raise_if_cancelled()
        except Cancelled:
            if self._stopping.is_set():
                state, error, hint = "failed", "interrupted: the server was stopped", "submit the job again"
            else:
                state, error = "cancelled", "cancelled by request"
        except AfvError as exc:
            state, error, hint = "failed", exc.message, exc.hint or None
        except MemoryError:
            state, error, hint = "failed", "out of memory", "use a smaller max_size or fewer frames"
        except OSError as exc:
            state, error = "failed", f"could not read or write job files: {exc.strerror or exc}"
            hint = "free disk space and submit the job again" if is_disk_full(exc) else "see the server log"
        except Exception as exc:  # an engine bug must not kill the worker thread
            log.error("job %s failed:\n%s", job_id, traceback.format_exc(limit=8))
            state, error, hint = "failed", f"internal error: {type(exc).__name__}: {str(exc)[:300]}", "see the server log"
        finally:
            _release_gpu_memory()
        if state != "done":
            _remove(self.result_path(job_id))
        self._finish(job_id, state, error, hint, timings)

    def _finish(self, job_id: str, state: str, error: str | None, hint: str | None, timings: dict | None = None) -> None:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                return
            if state == "done":
                try:
                    rec.result_bytes = self.result_path(job_id).stat().st_size
                except OSError:
                    state, error, hint = "failed", "the result file is missing", "submit the job again"
            rec.state, rec.error, rec.hint, rec.finished_unix = state, error, hint, time.time()
            rec.eta_s = 0.0 if state == "done" else None
            if state == "done":
                rec.progress, rec.stage = 1.0, "done"
                rec.timings_s = dict(timings or {})
            self._persist_or_mark(rec)
            self._tokens.pop(job_id, None)
            self._payloads.pop(job_id, None)
            self._cleanup_inputs(rec)
        self._last_event = time.monotonic()

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


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _release_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # never let cleanup fail a job
        pass
