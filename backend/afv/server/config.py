"""Server settings, set once from the command line and passed explicitly (no globals)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one request or job may ask for; over a bound is a 4xx."""

    max_request_bytes: int = 2 << 30  # whole multipart body (video upload included)
    max_mesh_bytes: int = 256 << 20  # the mesh .npz upload
    max_json_bytes: int = 8 << 20  # camera / params fields
    max_vertices: int = 2_000_000
    max_faces: int = 4_000_000
    max_frames: int = 4000  # selected frames per job
    max_size: int = 4096  # largest working resolution a job may request
    max_zip_members: int = 10_000  # frames in an uploaded image-sequence zip
    max_unzipped_bytes: int = 4 << 30  # their total size once extracted (counted while streaming)
    max_frame_pixels: int = 40_000_000  # W x H of one source frame (8K is 33 M), read from headers before decoding
    max_clip_pixels: int = 20_000_000_000  # W x H x selected frames: bounds decoding work
    max_queued: int = 64  # queued + running jobs

    def request_limits(self):  # -> afv.request.RequestLimits (imported late: `afv --help` must not load torch)
        from ..request import RequestLimits

        return RequestLimits(self.max_frames, self.max_size, self.max_frame_pixels, self.max_clip_pixels)


@dataclass(frozen=True)
class Timeouts:
    """Connection hygiene (seconds / counts): a client that stops talking is dropped."""

    header_s: float = 10.0  # from connect to the end of the request headers (and between requests)
    body_idle_s: float = 30.0  # longest pause inside a request body (a short body is not waited on forever)
    keep_alive_s: int = 5  # idle keep-alive connection between requests (uvicorn)
    max_connections: int = 256  # beyond: 503 (uvicorn limit_concurrency), well below the descriptor limit
    stuck_after_s: float = 1800.0  # a running job without a progress event this long: health says stuck


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    token: str
    host: str = "127.0.0.1"
    port: int = 0
    allow_origins: tuple[str, ...] = ()  # browser origins allowed to call (none by default)
    allow_roots: tuple[Path, ...] = ()  # when set, local paths must lie under one of these
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
