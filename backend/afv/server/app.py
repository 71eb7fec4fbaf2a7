"""FastAPI application: the /v1 routes. Errors are JSON {"error", "hint", "status"}.

Handlers are `async` and never block the event loop on heavy work: input validation runs
on a small dedicated executor, jobs on the JobManager's single worker thread.
"""

from __future__ import annotations

import asyncio
import json
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

from .. import __version__
from ..errors import InputError
from ..mesh import save_mesh_npz
from .config import ServerConfig
from .jobs import JobManager, JobRecord
from .security import Gatekeeper
from .validation import (
    Refused,
    check_local_path,
    check_masks_keyword,
    check_video,
    parse_camera,
    parse_mesh,
    parse_params,
    store_upload,
)

API_VERSION = "v1"
FORM_FIELDS = {"mesh", "video_file", "video_path", "masks", "masks_file", "camera", "params"}


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
    from ..engines import DEFAULT_ENGINE, ENGINES

    out = []
    for name, spec in ENGINES.items():
        try:
            options = spec.options_schema()
        except Exception as exc:  # an engine whose module cannot load is reported, not fatal
            options = {"_unavailable": str(exc)}
        available, why = spec.availability()
        out.append({
            "available": available, "unavailable_reason": "" if available else why,
            "name": name, "summary": spec.summary, "default": name == DEFAULT_ENGINE, "needs_camera": spec.needs_camera,
            "needs_weights": spec.needs_weights, "licence": spec.licence, "devices": list(spec.devices),
            "options": json.loads(json.dumps(options, default=str)),
        })
    return out


def create_app(config: ServerConfig, manager: JobManager | None = None) -> Any:
    """The ASGI app (FastAPI wrapped in the Gatekeeper). `manager` defaults to a new one."""
    config.tmp_dir.mkdir(parents=True, exist_ok=True)
    jobs = manager or JobManager(config.jobs_dir, config.limits.max_queued)
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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    def _job_or_404(job_id: str) -> JobRecord:
        rec = jobs.get(job_id)
        if rec is None:
            raise Refused(404, f"no job '{job_id[:64]}'", "list jobs with GET /v1/jobs")
        return rec

    def _status(rec: JobRecord) -> dict[str, Any]:
        d = rec.public()
        d["queue_position"] = jobs.queue_position(rec.id) if rec.state == "queued" else None
        return d

    @app.get("/v1/health", summary="Liveness (no token needed)")
    async def health() -> dict[str, Any]:
        return {"ok": True, "api": API_VERSION}

    @app.get("/v1/info", summary="Version, engines, device, limits")
    async def info() -> dict[str, Any]:
        return {
            "version": __version__, "api": API_VERSION, "engines": engines_info(), "device": device_info(),
            "local_paths": config.loopback, "allow_roots": [str(r) for r in config.allow_roots],
            "limits": vars(config.limits), "active_jobs": jobs.active_count(),
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

    @app.post("/v1/jobs", status_code=201, summary="Submit a job (multipart form)")
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
            raise InputError(f"malformed multipart body: {exc.detail}") from None
        try:
            unknown = set(form.keys()) - FORM_FIELDS
            if unknown:
                raise InputError(f"unknown form fields {sorted(unknown)}", f"valid fields: {sorted(FORM_FIELDS)}")
            fields = {k: form.get(k) for k in FORM_FIELDS}
            mesh_up = fields["mesh"]
            if not isinstance(mesh_up, UploadFile):
                raise InputError("the 'mesh' file field is required", "an .npz with 'vertices' (N,3) and 'faces' (F,3)")
            mesh_bytes = await mesh_up.read(config.limits.max_mesh_bytes + 1)
            texts = {}
            for k in ("video_path", "masks", "camera", "params"):
                v = fields[k]
                if isinstance(v, UploadFile):
                    if k != "camera":
                        raise InputError(f"field '{k}' must be text, not a file")
                    v = (await v.read(config.limits.max_json_bytes + 1)).decode("utf-8", "replace")
                texts[k] = v
            loop = asyncio.get_running_loop()
            rec = await loop.run_in_executor(validators, _prepare, config, jobs, mesh_bytes, texts, fields)
        finally:
            await form.close()
        with submit_lock:
            if jobs.active_count() >= config.limits.max_queued:
                jobs.discard(rec.id)
                raise Refused(429, f"{config.limits.max_queued} jobs are already queued or running", "wait for some to finish")
            jobs.submit(rec)
        return _status(rec)

    return Gatekeeper(app, config)


def _prepare(config: ServerConfig, jobs: JobManager, mesh_bytes: bytes, texts: dict, fields: dict) -> JobRecord:
    """Validate every input and store it in a new job folder (removed again on any error)."""
    limits = config.limits
    params = parse_params(texts["params"], limits)
    mesh = parse_mesh(mesh_bytes, limits)
    video_up, masks_up = fields["video_file"], fields["masks_file"]
    if (video_up is None) == (not texts["video_path"]):
        raise InputError("give exactly one of video_file (upload) or video_path (server-local path)")
    if masks_up is not None and texts["masks"]:
        raise InputError("give at most one of masks (keyword or path) and masks_file (upload)")
    local_video = check_local_path(texts["video_path"], config, "video") if texts["video_path"] else None
    masks: str = "auto"
    local_masks = False
    if texts["masks"]:
        if check_masks_keyword(texts["masks"]):
            masks = texts["masks"].strip()
        else:
            masks, local_masks = str(check_local_path(texts["masks"], config, "masks")), True
    camera = parse_camera(texts["camera"], limits) if texts["camera"] else None

    job_id, d = jobs.new_job_dir()
    try:
        inp = d / "input"
        save_mesh_npz(mesh, inp / "mesh.npz")
        video = local_video or store_upload(video_up.file, video_up.filename, inp, "video", limits, "video")
        if masks_up is not None:
            masks = str(store_upload(masks_up.file, masks_up.filename, inp, "masks", limits, "masks"))
        n_frames = check_video(Path(video), params, camera[0] if camera else None, limits)
        cam_path = None
        if camera is not None:
            cam_path = inp / "camera.json"
            cam_path.write_text(json.dumps(camera[1]))
        return JobRecord(
            id=job_id, params=params, n_vertices=mesh.n_vertices, n_frames=n_frames,
            inputs={"mesh": str(inp / "mesh.npz"), "video": str(video), "masks": masks,
                    "camera": str(cam_path) if cam_path else None, "local_video": local_video is not None,
                    "local_masks": local_masks},
        )
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
