"""Reaching the backend: launch a local one (kept for the Blender session) or connect to a URL.

No bpy here: the worker thread calls `ensure`, so starting a backend never blocks the UI.
A launched backend is told Blender's pid and exits with it; `stop` ends it earlier.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .backend_client import BackendClient, BackendError, launch_backend

HERE = Path(__file__).resolve().parent
BUNDLED_BACKEND = HERE / "backend_src"  # the `afv` package copied in by build_addon.py
REQUIRED_MODULES = ("afv", "torch", "numpy", "cv2", "fastapi", "uvicorn")


@dataclass(frozen=True)
class BackendConfig:
    mode: str = "LAUNCH"  # LAUNCH | CONNECT
    python: str = ""  # the backend's interpreter (LAUNCH)
    data_dir: str = ""
    url: str = ""  # CONNECT
    token: str = ""  # CONNECT
    timeout_s: float = 30.0  # per HTTP request
    launch_timeout_s: float = 180.0


def backend_env(extra: dict | None = None) -> dict:
    """Environment for the backend process: the bundled `afv` first on the path, no .pyc in the add-on."""
    env = dict(os.environ)
    if BUNDLED_BACKEND.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(BUNDLED_BACKEND)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # never write into the add-on's own folder
    env.update(extra or {})
    return env


INSTALL_HINT = ("install the backend into a virtual environment (README: python3 -m venv .venv && "
                ".venv/bin/pip install -e .) and set the add-on's Preferences > Backend Python to its bin/python")


def check_interpreter(python: str) -> Path:
    """The interpreter path if it exists and is executable, else BackendError (fast, no subprocess)."""
    if not python:
        raise BackendError("no backend Python interpreter is set", INSTALL_HINT, None)
    p = Path(python).expanduser()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise BackendError(f"backend Python not found or not executable: {p}", INSTALL_HINT, None)
    return p


def preflight(python: str, timeout_s: float = 180.0) -> dict:
    """Check that `python` can run the backend (imports its packages). Raises BackendError with a hint."""
    p = check_interpreter(python)
    code = (
        "import importlib, json, sys\n"
        f"mods = {list(REQUIRED_MODULES)!r}\n"
        "missing = []\n"
        "for m in mods:\n"
        "    try: importlib.import_module(m)\n"
        "    except Exception as e: missing.append(f'{m} ({type(e).__name__}: {e})')\n"
        "v = getattr(sys.modules.get('afv'), '__version__', None)\n"
        "print(json.dumps({'python': sys.version.split()[0], 'missing': missing, 'afv': v}))\n"
    )
    try:
        out = subprocess.run([str(p), "-c", code], capture_output=True, text=True, timeout=timeout_s, env=backend_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"could not run {p}: {exc}", INSTALL_HINT, None) from None
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BackendError(f"{p} did not answer the check (exit {out.returncode}): {out.stderr.strip()[-300:]}",
                           "is this a Python 3.10+ interpreter?", None) from None
    if info["missing"]:
        raise BackendError(f"{p} lacks packages: {', '.join(info['missing'])}",
                           f"run: {p} -m pip install -e <path to the Animate from Video repo>", None)
    return info


@dataclass
class BackendSession:
    """One backend per Blender session, shared by every job (launching takes seconds)."""

    config: BackendConfig | None = None
    client: BackendClient | None = None
    process: object | None = None  # backend_client.BackendProcess when we launched it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure(self, cfg: BackendConfig) -> BackendClient:
        """A healthy client for `cfg`, launching or reconnecting as needed (blocking: call off the UI thread)."""
        with self.lock:
            if self.client is not None and cfg == self.config and self.alive():
                try:
                    self.client.health()
                    return self.client
                except BackendError as exc:
                    if exc.status == 503 and cfg.mode == "CONNECT":
                        raise  # a dead or stuck job worker: the message says so; we cannot restart it
                    print(f"Animate from Video: backend unhealthy ({exc}); restarting it")
            self._stop_locked()
            if cfg.mode == "CONNECT":
                if not cfg.url:
                    raise BackendError("no backend URL is set", "set Preferences > Backend URL, or choose 'Launch local backend'", None)
                client = BackendClient(cfg.url, cfg.token, cfg.timeout_s)
                client.health()
            else:
                check_interpreter(cfg.python)
                try:
                    proc = launch_backend(cfg.python, cfg.data_dir or None, parent_pid=os.getpid(),
                                          env=backend_env(), timeout_s=cfg.launch_timeout_s)
                except BackendError:
                    preflight(cfg.python)  # explains missing packages better than a failed launch
                    raise
                self.process = proc
                client = BackendClient(proc.url, proc.token, cfg.timeout_s)
            self.client, self.config = client, cfg
            return client

    def alive(self, grace_s: float = 0.0) -> bool:
        """False when we launched a backend and its process has exited (waiting up to grace_s
        for it: after a connection reset the dying process may not have exited yet)."""
        proc = getattr(self.process, "process", None)
        if proc is None:
            return True
        if grace_s > 0:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                return True
        return proc.poll() is None

    def exit_code(self) -> int | None:
        proc = getattr(self.process, "process", None)
        return None if proc is None else proc.poll()

    def stop(self) -> None:
        with self.lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self.process is not None:
            try:
                self.process.stop()
            except Exception:  # already gone: nothing left to stop
                pass
        self.process = self.client = self.config = None
