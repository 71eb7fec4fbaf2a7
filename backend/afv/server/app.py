"""FastAPI application: the /v1 routes. Errors are JSON {"error", "hint", "status"}.

Handlers are `async` and never block the event loop on heavy work: input validation runs
on a small dedicated executor, jobs on the JobManager's single worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import platform
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import InputError
from ..masks import MaskSource
from ..mesh import save_mesh_npz
from ..progress import Progress
from ..request import AnimateRequest, LimitExceeded, check_request, parse_request, probe_inputs
from .config import ServerConfig
from .jobs import JobManager, JobRecord, is_disk_full
from .security import Gatekeeper
from .validation import (
    Refused,
    check_local_path,
    parse_camera_json,
    parse_mesh,
    parse_params,
    recheck_local_path,
    store_upload,
)

API_VERSION = "v1"
FILE_FIELDS = {"mesh", "video_file", "masks_file"}
TEXT_FIELDS = {"video_path", "masks", "params"}
FORM_FIELDS = FILE_FIELDS | TEXT_FIELDS | {"camera"}  # camera: text or file
log = logging.getLogger("afv.server")

# the upload form, described for OpenAPI clients and fuzzers (the handler reads it itself, with limits)
SUBMIT_FORM = {
    "type": "object",
    "required": ["mesh"],
    "properties": {
        "mesh": {"type": "string", "format": "binary", "description": ".npz with vertices (N,3), faces (F,3)"},
        "video_file": {"type": "string", "format": "binary", "description": "a video or a .zip of images"},
        "video_path": {"type": "string", "description": "server-local video file or image folder (loopback only)"},
        "masks": {"type": "string", "description": "auto | none | alpha | chroma | median | server-local path"},
        "masks_file": {"type": "string", "format": "binary", "description": "a mask video or a .zip of mask images"},
        "camera": {"type": "string", "description": "camera JSON (image_size, K, mesh_to_camera)"},
        "params": {"type": "string", "description": "JSON object: engine, frames, device, max_size, fps, options, seed, up_axis, first_pose"},
    },
    "additionalProperties": False,
}
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}, "hint": {"type": "string"},
                                                 "status": {"type": "integer"}}}
ERRORS = {str(c): {"description": d, "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c, d in (
    (400, "invalid input"), (401, "missing or wrong token"), (403, "refused origin, host or path"),
    (404, "unknown job"), (409, "job not done"), (411, "body without length"), (413, "over a limit"),
    (429, "queue full"), (503, "worker dead or stuck, or too many connections"), (507, "disk full"))}


def error_response(status: int, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint, "status": status}, status_code=status)


def device_info() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "free_bytes": int(free), "total_bytes": int(total),
                "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "free_bytes": None, "total_bytes": None,
            "count": 0, "threads": torch.get_num_threads()}


def engines_info() -> list[dict[str, Any]]:
    from ..engines import DEFAULT_ENGINE, ENGINES, aliases_of

    out = []
    for name, spec in ENGINES.items():
        try:
            options = spec.options_schema()
        except Exception as exc:  # an engine whose module cannot load is reported, not fatal
            options = {"_unavailable": str(exc)}
        available, why = spec.availability()
        out.append({
            "available": available, "unavailable_reason": "" if available else why,
            "name": name, "summary": spec.summary, "default": name == DEFAULT_ENGINE, "aliases": aliases_of(name),
            "needs_camera": spec.needs_camera, "first_pose": spec.first_pose,
            "needs_weights": spec.needs_weights, "licence": spec.licence, "devices": list(spec.devices),
            "options": json.loads(json.dumps(options, default=str)),
        })
    return out


def create_app(config: ServerConfig, manager: JobManager | None = None) -> Any:
    """The ASGI app (FastAPI wrapped in the Gatekeeper). `manager` defaults to a new one."""
    config.tmp_dir.mkdir(parents=True, exist_ok=True)
    jobs = manager or JobManager(config.jobs_dir, make_runner(config), config.limits.max_queued,
                                 config.timeouts.stuck_after_s, warm_up=warm_up_engines)
    # bounded: at most two uploads are validated at once, whatever the request rate
    validators = ThreadPoolExecutor(max_workers=2, thread_name_prefix="afv-validate")
    submit_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        jobs.shutdown()
        validators.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Animate from Video backend", version=__version__, lifespan=lifespan,
                  docs_url="/v1/docs", redoc_url=None, openapi_url="/v1/openapi.json")
    app.state.jobs = jobs
    app.state.config = config

    @app.exception_handler(Refused)
    async def _refused(_req: Request, exc: Refused) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.hint)

    @app.exception_handler(InputError)
    async def _input(_req: Request, exc: InputError) -> JSONResponse:
        return error_response(400, exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {exc.errors()}")

    @app.exception_handler(LimitExceeded)
    async def _limit(_req: Request, exc: LimitExceeded) -> JSONResponse:
        return error_response(413, exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(_req: Request, exc: Exception) -> JSONResponse:  # logged once by the Gatekeeper
        return error_response(500, f"internal error: {type(exc).__name__}", "see the server log")

    @app.exception_handler(ClientDisconnect)
    async def _gone(_req: Request, _exc: ClientDisconnect) -> JSONResponse:
        return error_response(400, "the client stopped sending the request body")

    @app.exception_handler(OSError)
    async def _os(_req: Request, exc: OSError) -> JSONResponse:
        if is_disk_full(exc):
            return error_response(507, "the server's disk is full", "free space in the server's data folder")
        log.error("I/O error: %s", exc)
        return error_response(500, f"server I/O error: {exc.strerror or type(exc).__name__}", "see the server log")

    def _job_or_404(job_id: str) -> JobRecord:
        rec = jobs.get(job_id)
        if rec is None:
            raise Refused(404, f"no job '{job_id[:64]}'", "list jobs with GET /v1/jobs")
        return rec

    def _status(rec: JobRecord) -> dict[str, Any]:
        d = rec.public()
        d["queue_position"] = jobs.queue_position(rec.id) if rec.state == "queued" else None
        return d

    @app.get("/v1/health", summary="Liveness (no token needed): 503 when the job worker is dead or stuck",
             responses={"503": ERRORS["503"]})
    async def health() -> Any:
        state, reason = jobs.worker_health()
        body = {"ok": state == "ok", "api": API_VERSION, "worker": state, "warm": jobs.warm.is_set()}
        if state != "ok":
            return JSONResponse({**body, "error": f"job worker {state}: {reason}", "hint": "restart the backend",
                                 "status": 503}, status_code=503)
        return body

    @app.get("/v1/info", summary="Version, engines, device, limits")
    async def info() -> dict[str, Any]:
        return {
            "version": __version__, "api": API_VERSION, "engines": engines_info(), "device": device_info(),
            "local_paths": config.loopback, "allow_roots": [str(r) for r in config.allow_roots],
            "limits": vars(config.limits), "active_jobs": jobs.active_count(),
            "warm": jobs.warm.is_set(), "warm_up_s": jobs.warm_up_s,
        }

    @app.get("/v1/jobs", summary="All jobs, oldest first")
    async def list_jobs() -> dict[str, Any]:
        return {"jobs": [_status(r) for r in jobs.list()]}

    @app.get("/v1/jobs/{job_id}", summary="Job status")
    async def job_status(job_id: str) -> dict[str, Any]:
        return _status(_job_or_404(job_id))

    @app.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
    async def cancel(job_id: str) -> dict[str, Any]:
        _job_or_404(job_id)
        return _status(jobs.cancel(job_id))

    @app.get("/v1/jobs/{job_id}/result", summary="The tracks .npz of a finished job", response_class=FileResponse)
    async def result(job_id: str) -> FileResponse:
        rec = _job_or_404(job_id)
        if rec.state != "done":
            raise Refused(409, f"job {job_id} is {rec.state}, not done", rec.error or "poll GET /v1/jobs/{id} until done")
        path = jobs.result_path(job_id)
        if not path.is_file():
            raise Refused(410, "the result file is gone", "submit the job again")
        return FileResponse(path, media_type="application/octet-stream", filename=f"tracks_{job_id[:8]}.npz")

    @app.post("/v1/jobs", status_code=201, summary="Submit a job (multipart form)", responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": SUBMIT_FORM}}}})
    async def submit(request: Request) -> dict[str, Any]:
        """Fields: mesh (file, .npz with vertices/faces); video_file (file: video or .zip of images)
        or video_path (server-local path, loopback only); masks (keyword or local path) or
        masks_file (file); camera (JSON text or file); params (JSON text)."""
        if jobs.active_count() >= config.limits.max_queued:
            raise Refused(429, f"{config.limits.max_queued} jobs are already queued or running", "wait for some to finish")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise InputError("POST /v1/jobs takes multipart/form-data", "fields: mesh, video_file or video_path, params, ...")
        try:
            form = await request.form(max_files=4, max_fields=8, max_part_size=config.limits.max_json_bytes)
        except StarletteHTTPException as exc:
            if "maximum size" in str(exc.detail):  # a text field over max_json_bytes
                raise Refused(413, f"a form field is too large: {exc.detail}", "text fields hold at most "
                              f"{config.limits.max_json_bytes} bytes; upload large data as files") from None
            raise InputError(f"malformed multipart body: {exc.detail}") from None
        try:
            unknown = set(form.keys()) - FORM_FIELDS
            if unknown:
                raise InputError(f"unknown form fields {sorted(unknown)[:10]}", f"valid fields: {sorted(FORM_FIELDS)}")
            fields: dict[str, Any] = {}
            for k in FORM_FIELDS:
                values = form.getlist(k)
                if len(values) > 1:
                    raise InputError(f"form field '{k}' is given {len(values)} times")
                fields[k] = values[0] if values else None
            for k in FILE_FIELDS:
                if fields[k] is not None and not isinstance(fields[k], UploadFile):
                    raise InputError(f"form field '{k}' must be a file part (with a filename), not text")
            for k in TEXT_FIELDS:
                if isinstance(fields[k], UploadFile):
                    raise InputError(f"form field '{k}' must be text, not a file")
            if fields["mesh"] is None:
                raise InputError("the 'mesh' file field is required", "an .npz with 'vertices' (N,3) and 'faces' (F,3)")
            mesh_bytes = await fields["mesh"].read(config.limits.max_mesh_bytes + 1)
            texts = {k: fields[k] for k in TEXT_FIELDS}
            cam = fields["camera"]
            if isinstance(cam, UploadFile):
                raw = await cam.read(config.limits.max_json_bytes + 1)
                try:
                    cam = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError("camera file is not UTF-8 JSON") from None
            texts["camera"] = cam
            loop = asyncio.get_running_loop()
            rec, req = await loop.run_in_executor(validators, _prepare, config, jobs, mesh_bytes, texts,
                                                  fields["video_file"], fields["masks_file"])
        finally:
            await form.close()
        with submit_lock:
            try:
                if jobs.active_count() >= config.limits.max_queued:
                    raise Refused(429, f"{config.limits.max_queued} jobs are already queued or running", "wait for some to finish")
                jobs.submit(rec, req)
            except BaseException:
                jobs.discard(rec.id)
                raise
        return _status(rec)

    return Gatekeeper(app, config)


def _prepare(config: ServerConfig, jobs: JobManager, mesh_bytes: bytes, texts: dict, video_up: UploadFile | None,
             masks_up: UploadFile | None) -> tuple[JobRecord, AnimateRequest]:
    """Parse and check every input, store uploads in a new job folder (removed again on any
    error), and return the record and the typed request the job will run."""
    limits = config.limits
    params = parse_params(texts["params"], limits)
    mesh = parse_mesh(mesh_bytes, limits)
    if (video_up is None) == (not texts["video_path"]):
        raise InputError("give exactly one of video_file (upload) or video_path (server-local path)")
    if masks_up is not None and texts["masks"]:
        raise InputError("give at most one of masks (keyword or path) and masks_file (upload)")
    camera = parse_camera_json(texts["camera"], limits) if texts["camera"] else None
    local_video = check_local_path(texts["video_path"], config, "video") if texts["video_path"] else None
    masks = MaskSource.parse(texts["masks"])  # the one place the keyword-or-path is decided
    local_masks = masks.path is not None
    if local_masks:
        masks = MaskSource(None, check_local_path(str(masks.path), config, "masks"))

    job_id, d = jobs.new_job_dir()
    try:
        inp = d / "input"
        video = local_video or store_upload(video_up.file, video_up.filename, inp, "video", limits, "video")
        if masks_up is not None:
            masks = MaskSource(None, store_upload(masks_up.file, masks_up.filename, inp, "masks", limits, "masks"))
        req = parse_request(mesh=mesh, video=video, masks=masks, camera=camera, **params)
        n_frames = check_request(req, probe_inputs(req), limits.request_limits())
        save_mesh_npz(mesh, inp / "mesh.npz")
        req = dataclasses.replace(req, mesh=inp / "mesh.npz")  # the queue holds a path, not the arrays
        rec = JobRecord(
            id=job_id, params=params, n_vertices=mesh.n_vertices, n_frames=n_frames or 0,
            inputs={"mesh": str(inp / "mesh.npz"), "video": str(video), "masks": str(masks),
                    "local_video": local_video is not None, "local_masks": local_masks},
        )
        return rec, req
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise


def warm_up_engines() -> dict[str, bool]:
    """The pipeline's and every usable engine's imports (torch, OpenCV, SciPy, an engine's
    transformers): seconds of Python work that would otherwise delay the first job."""
    from ..engines import ENGINES
    from ..pipeline import animate_to_file  # noqa: F401

    return {name: spec.warm_up() for name, spec in ENGINES.items()}


def make_runner(config: ServerConfig):
    """The job worker's one call: re-check local paths at use, then the pipeline."""

    def run(req: AnimateRequest, progress: Progress, out: Path) -> dict:
        from ..pipeline import animate_to_file

        job_input = out.parent / "input"
        for what, path in (("video", req.video), ("masks", req.masks.path)):
            if path is not None and not path.is_relative_to(job_input):
                recheck_local_path(path, config, what)
        tracks = animate_to_file(req, out, progress)
        return dict(tracks.meta.get("timings_s", {}))

    return run
