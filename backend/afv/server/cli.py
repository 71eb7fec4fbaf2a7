"""`afv serve`: run the backend on loopback until told to stop or the parent process dies.

Prints one JSON line on stdout once listening:
  {"event": "ready", "url": "http://127.0.0.1:PORT", "port": PORT, "pid": PID}
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import InputError
from .config import Limits, ServerConfig, is_loopback


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="run the HTTP backend (for the Blender add-on)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; others disable local paths)")
    s.add_argument("--port", type=int, default=0, help="port (0 = any free port; the ready line says which)")
    s.add_argument("--data-dir", default=None, help="jobs, results and uploads (default ~/.cache/afv/server)")
    s.add_argument("--token-file", default=None, help="bearer token file; created (0600) if missing (default DATA_DIR/token)")
    s.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
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
    s.add_argument("--log-level", default="warning", help="uvicorn log level")
    s.set_defaults(func=cmd_serve)


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

    data_dir = Path(args.data_dir or Path.home() / ".cache" / "afv" / "server").expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = load_or_create_token(Path(args.token_file).expanduser() if args.token_file else data_dir / "token")
    limits = Limits(
        max_request_bytes=int(args.max_upload_mb * 2**20), max_mesh_bytes=int(args.max_mesh_mb * 2**20),
        max_vertices=args.max_vertices, max_faces=args.max_faces, max_frames=args.max_frames,
        max_size=args.max_size, max_queued=args.max_queued,
    )
    config = ServerConfig(
        data_dir=data_dir, token=token, host=args.host, port=args.port,
        allow_origins=tuple(args.allow_origin), allow_roots=tuple(Path(r).expanduser().resolve() for r in args.allow_root),
        limits=limits,
    )
    if not is_loopback(args.host):
        print(f"afv serve: WARNING bound to {args.host}, reachable from other machines; local paths are disabled",
              file=sys.stderr)
    # uploads that spill to disk land in the data dir, not a shared /tmp
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

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5))
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
