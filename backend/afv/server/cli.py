"""`afv serve`: run the backend on loopback until told to stop or the parent process dies.

Prints one JSON line on stdout once listening:
  {"event": "ready", "url": "http://127.0.0.1:PORT", "port": PORT, "pid": PID}
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import InputError
from .config import Limits, ServerConfig, Timeouts, is_loopback


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="run the HTTP backend (for the Blender add-on)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; others disable local paths)")
    s.add_argument("--port", type=int, default=0, help="port (0 = any free port; the ready line says which)")
    s.add_argument("--data-dir", default=None, help="jobs, results and uploads (default ~/.cache/afv/server)")
    s.add_argument("--token-file", default=None, help="bearer token file; created (0600) if missing (default DATA_DIR/token)")
    s.add_argument("--parent-pid", type=_pid, default=None, help="exit when this process is gone")
    s.add_argument("--allow-origin", action="append", default=[], help="browser origin allowed to call (repeatable)")
    s.add_argument("--allow-root", action="append", default=[], help="local video/mask paths must lie under one (repeatable)")
    d = Limits()
    s.add_argument("--max-upload-mb", type=float, default=d.max_request_bytes / 2**20, help="largest request body")
    s.add_argument("--max-mesh-mb", type=float, default=d.max_mesh_bytes / 2**20, help="largest mesh .npz upload")
    s.add_argument("--max-vertices", type=int, default=d.max_vertices)
    s.add_argument("--max-faces", type=int, default=d.max_faces)
    s.add_argument("--max-frames", type=int, default=d.max_frames)
    s.add_argument("--max-size", type=int, default=d.max_size, help="largest working resolution a job may ask for")
    s.add_argument("--max-queued", type=int, default=d.max_queued, help="queued + running jobs before 429")
    s.add_argument("--max-frame-pixels", type=int, default=d.max_frame_pixels, help="W x H of one source frame")
    s.add_argument("--max-clip-pixels", type=int, default=d.max_clip_pixels, help="W x H x selected frames")
    s.add_argument("--max-unzipped-mb", type=float, default=d.max_unzipped_bytes / 2**20, help="an uploaded zip, extracted")
    t = Timeouts()
    s.add_argument("--header-timeout", type=float, default=t.header_s, help="seconds a client may take for its request headers (silent or trickling)")
    s.add_argument("--body-timeout", type=float, default=t.body_idle_s, help="longest pause (s) inside a request body")
    s.add_argument("--max-connections", type=int, default=t.max_connections, help="open connections before 503")
    s.add_argument("--stuck-after", type=float, default=t.stuck_after_s,
                   help="seconds without progress from a running job before /v1/health says 503 stuck")
    s.add_argument("--log-level", default="warning", help="uvicorn log level")
    s.set_defaults(func=cmd_serve)


def _pid(text: str) -> int:
    """--parent-pid: a positive process id (0 and negatives name process groups to os.kill)."""
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a process id") from None
    if not 0 < pid < 2**22 or pid == os.getpid():
        raise argparse.ArgumentTypeError(f"{pid} is not another process's id (1 .. 4194303)")
    return pid


def _raise_fd_limit(want: int) -> int:
    """Raise the soft open-file limit towards `want` (within the hard limit); returns it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        return int(soft)
    except (ImportError, ValueError, OSError):  # Windows has no RLIMIT
        return want


def load_or_create_token(path: Path) -> str:
    """Read the token, or create a new random one readable by the owner only."""
    if path.is_file():
        token = path.read_text().strip()
        if len(token) < 16:
            raise InputError(f"token file {path} holds a token shorter than 16 characters")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def parent_alive(pid: int, original_ppid: int) -> bool:
    """False once `pid` is gone. If it was our direct parent, re-parenting tells us even
    when the dead parent lingers as a zombie."""
    if pid == original_ppid and os.getppid() != pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:  # Windows: os.kill(pid, 0) is not a probe; assume alive
        return True
    try:  # Linux: a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .connections import limit_log_rate, timed_protocol

    # uploads, records and results are readable by the server's user alone (0600 / 0700)
    os.umask(0o077)
    # OpenCV refuses to decode an image over this many pixels (checked from the header): a
    # second line behind the header checks at submit, for every decode in the process
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(args.max_frame_pixels))
    data_dir = Path(args.data_dir or Path.home() / ".cache" / "afv" / "server").expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.name != "nt":
        data_dir.chmod(0o700)
    token = load_or_create_token(Path(args.token_file).expanduser() if args.token_file else data_dir / "token")
    limits = Limits(
        max_request_bytes=int(args.max_upload_mb * 2**20), max_mesh_bytes=int(args.max_mesh_mb * 2**20),
        max_vertices=args.max_vertices, max_faces=args.max_faces, max_frames=args.max_frames,
        max_size=args.max_size, max_queued=args.max_queued, max_frame_pixels=args.max_frame_pixels,
        max_clip_pixels=args.max_clip_pixels, max_unzipped_bytes=int(args.max_unzipped_mb * 2**20),
    )
    timeouts = Timeouts(header_s=args.header_timeout, body_idle_s=args.body_timeout,
                        max_connections=args.max_connections, stuck_after_s=args.stuck_after)
    config = ServerConfig(
        data_dir=data_dir, token=token, host=args.host, port=args.port,
        allow_origins=tuple(args.allow_origin), allow_roots=tuple(Path(r).expanduser().resolve() for r in args.allow_root),
        limits=limits, timeouts=timeouts,
    )
    if not is_loopback(args.host):
        print(f"afv serve: WARNING bound to {args.host}, reachable from other machines; local paths are disabled",
              file=sys.stderr)
    # uploads that spill to disk land in the data dir, not a shared /tmp; what a killed
    # server left there is removed
    shutil.rmtree(config.tmp_dir, ignore_errors=True)
    config.tmp_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(config.tmp_dir)
    # torch keeps caches under the temp dir unless told otherwise; they belong beside it, so
    # tmp/ holds only in-flight uploads (and is empty when nothing is in flight)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config.data_dir / "cache" / "torchinductor"))

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host.strip("[]"), args.port))
    except OSError as exc:
        raise InputError(f"cannot bind {args.host}:{args.port}: {exc}", "choose another --port (0 picks a free one)") from None
    port = sock.getsockname()[1]

    # descriptors: room for every allowed connection plus the jobs' files
    fd_limit = _raise_fd_limit(4 * timeouts.max_connections + 256)
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=args.log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=5,
        http=timed_protocol(timeouts.header_s, timeouts.body_idle_s), timeout_keep_alive=timeouts.keep_alive_s,
        limit_concurrency=min(timeouts.max_connections, max(16, fd_limit // 2)), h11_max_incomplete_event_size=64 << 10,
        backlog=128))
    limit_log_rate()  # after uvicorn configured its loggers
    host_url = f"[{args.host.strip('[]')}]" if family == socket.AF_INET6 else args.host

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            print(json.dumps({"event": "ready", "url": f"http://{host_url}:{port}", "port": port, "pid": os.getpid()}),
                  flush=True)

    def watch_parent(pid: int, original_ppid: int) -> None:
        while not server.should_exit:
            if not parent_alive(pid, original_ppid):
                print(f"afv serve: parent process {pid} is gone; shutting down", file=sys.stderr, flush=True)
                server.should_exit = True
                return
            time.sleep(0.5)

    threading.Thread(target=announce, name="afv-ready", daemon=True).start()
    if args.parent_pid:
        if not parent_alive(args.parent_pid, os.getppid()):
            print(f"afv serve: parent process {args.parent_pid} is not running", file=sys.stderr)
            return 2
        threading.Thread(target=watch_parent, args=(args.parent_pid, os.getppid()), name="afv-parent-watch",
                         daemon=True).start()
    # uvicorn installs SIGINT/SIGTERM handlers that set should_exit; lifespan shutdown then
    # cancels the running job and stops the worker.
    server.run(sockets=[sock])
    return 0
