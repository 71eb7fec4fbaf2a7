"""Client for the `afv serve` HTTP backend, standard library only (runs in Blender's Python).

    proc = launch_backend("/path/to/venv/bin/python", data_dir)      # or connect to a running one
    client = BackendClient(proc.url, proc.token)
    job = client.submit(mesh_npz_bytes, video_path="/clips/walk.mp4", params={"engine": "rigid"})
    client.wait(job, on_status=print)                                 # final status dict
    client.result(job, "/tmp/tracks.npz")
    proc.stop()

Every failure is a BackendError(message, hint, status): `status` is the HTTP status, or None
when the server could not be reached. The multipart body is encoded by hand (no `requests`
in Blender) and streamed from disk, so uploading a large video does not load it into memory.
numpy stays out of this module: the caller builds the mesh .npz bytes.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

TERMINAL_STATES = ("done", "failed", "cancelled")
DEFAULT_DATA_DIR = Path.home() / ".cache" / "afv" / "server"


class BackendError(Exception):
    """A failure talking to the backend: message (what), hint (what to do), status (HTTP or None)."""

    def __init__(self, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class _MultipartBody:
    """A file-like multipart/form-data body over in-memory parts and files on disk.

    parts: (field name, filename or None, bytes or Path). Length is known up front, so the
    request carries Content-Length (the server refuses bodies without one).
    """

    def __init__(self, parts: list[tuple[str, str | None, bytes | Path]]) -> None:
        self.boundary = "afv-" + secrets.token_hex(16)
        self._chunks: list[bytes | Path] = []
        for name, filename, payload in parts:
            disp = f'form-data; name="{_quote(name)}"' + (f'; filename="{_quote(filename)}"' if filename else "")
            ctype = "application/octet-stream" if filename else "text/plain; charset=utf-8"
            head = f"--{self.boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n"
            self._chunks += [head.encode(), payload, b"\r\n"]
        self._chunks.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(c.stat().st_size if isinstance(c, Path) else len(c) for c in self._chunks)
        self._i, self._pos, self._fh = 0, 0, None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while self._i < len(self._chunks) and (n < 0 or len(out) < n):
            chunk = self._chunks[self._i]
            want = -1 if n < 0 else n - len(out)
            if isinstance(chunk, Path):
                if self._fh is None:
                    self._fh = open(chunk, "rb")
                data = self._fh.read(want if want > 0 else 1 << 20)
                if not data:
                    self._fh.close()
                    self._fh, self._i = None, self._i + 1
                out += data
            else:
                data = chunk[self._pos :] if want < 0 else chunk[self._pos : self._pos + want]
                self._pos += len(data)
                out += data
                if self._pos >= len(chunk):
                    self._i, self._pos = self._i + 1, 0
        return bytes(out)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")


class BackendClient:
    """One backend at `url` (e.g. http://127.0.0.1:PORT) with its bearer `token`.

    timeout: seconds per request. connect_retry_s: how long to keep retrying while the
    connection is refused (a server that is still starting).
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0, connect_retry_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.connect_retry_s = connect_retry_s

    # ---- transport ---------------------------------------------------------------------
    def _open(self, method: str, path: str, body_factory: Callable[[], Any] | None = None, headers: dict | None = None,
              timeout: float | None = None):
        deadline = time.monotonic() + self.connect_retry_s
        while True:
            body = body_factory() if body_factory else None
            hdrs = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", **(headers or {})}
            if isinstance(body, _MultipartBody):
                hdrs["Content-Type"], hdrs["Content-Length"] = body.content_type, str(body.length)
            elif method == "POST" and body is None:
                body = b""
            req = urllib.request.Request(self.url + path, data=body, headers=hdrs, method=method)
            try:
                return urllib.request.urlopen(req, timeout=timeout or self.timeout)
            except urllib.error.HTTPError as exc:
                raise _http_error(exc) from None
            except urllib.error.URLError as exc:
                refused = isinstance(exc.reason, ConnectionRefusedError)
                if refused and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise BackendError(f"cannot reach the backend at {self.url}: {exc.reason}",
                                   "is the backend running? check the URL and port", None) from None
            except (TimeoutError, OSError) as exc:
                raise BackendError(f"backend at {self.url} did not answer: {exc}",
                                   "the server may be busy or stuck; try again or restart it", None) from None
            finally:
                if isinstance(body, _MultipartBody):
                    body.close()

    def _json(self, method: str, path: str, **kw) -> Any:
        with self._open(method, path, **kw) as resp:
            data = resp.read()
        try:
            return json.loads(data)
        except ValueError:
            raise BackendError(f"backend sent a non-JSON answer to {method} {path}", "is the URL an afv backend?", None) from None

    # ---- API -----------------------------------------------------------------------------
    def health(self) -> dict:
        """{"ok": true, "api", "worker": "ok"}; a dead or stuck job worker is a BackendError with
        status 503 whose message says which (the backend then needs a restart)."""
        return self._json("GET", "/v1/health")

    def info(self) -> dict:
        """version, engines (name, needs_camera, licence, options...), device, limits."""
        return self._json("GET", "/v1/info")

    def submit(self, mesh_npz: bytes, video_path: str | os.PathLike | None = None, video_file: str | os.PathLike | None = None,
               masks: str | os.PathLike | None = None, camera: dict | str | os.PathLike | None = None,
               params: dict | None = None) -> str:
        """Submit a job; returns its id.

        mesh_npz: bytes of an .npz with 'vertices' (N,3) float32 and 'faces' (F,3) int32.
        video_path: a path on the SERVER's machine (loopback servers only); video_file: a local
        video or .zip of images to upload. Exactly one of the two.
        masks: a keyword ('auto', 'none', 'alpha', ...) or server-local path as str; a
        pathlib.Path is uploaded instead (mask video or .zip of images).
        camera: a dict (the camera JSON) or a path to a camera JSON file.
        params: {engine, frames, device, max_size, fps, options, seed, up_axis}.
        """
        if (video_path is None) == (video_file is None):
            raise BackendError("give exactly one of video_path and video_file", "", None)
        parts: list[tuple[str, str | None, bytes | Path]] = [("mesh", "mesh.npz", bytes(mesh_npz))]
        if video_path is not None:
            parts.append(("video_path", None, os.fspath(video_path).encode()))
        else:
            vf = Path(video_file)
            if not vf.is_file():
                raise BackendError(f"video file not found: {vf}", "", None)
            parts.append(("video_file", vf.name, vf))
        if isinstance(masks, Path):
            parts.append(("masks_file", masks.name, masks))
        elif masks is not None:
            parts.append(("masks", None, str(masks).encode()))
        if camera is not None:
            text = json.dumps(camera) if isinstance(camera, dict) else Path(camera).read_text()
            parts.append(("camera", None, text.encode()))
        if params:
            parts.append(("params", None, json.dumps(params).encode()))
        upload_timeout = max(self.timeout, 600.0) if video_file is not None else self.timeout
        st = self._json("POST", "/v1/jobs", body_factory=lambda: _MultipartBody(parts), timeout=upload_timeout)
        return st["id"]

    def status(self, job_id: str) -> dict:
        """state (queued|running|done|failed|cancelled), progress 0..1, stage, eta_s, error, hint, ..."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self) -> list[dict]:
        return self._json("GET", "/v1/jobs")["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def result(self, job_id: str, dest: str | os.PathLike) -> Path:
        """Download the tracks .npz to `dest` atomically (temp file + rename); returns dest."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, self._open("GET", f"/v1/jobs/{job_id}/result", timeout=max(self.timeout, 120)) as resp:
                expected = resp.headers.get("Content-Length")
                n = 0
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    n += len(chunk)
            if expected is not None and n != int(expected):
                raise BackendError(f"result download was cut short ({n} of {expected} bytes)", "try again", None)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    def wait(self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None,
             on_status: Callable[[dict], None] | None = None) -> dict:
        """Poll until the job ends; returns the final status (check its 'state': a failed job
        carries 'error' and 'hint'). Raises BackendError on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            st = self.status(job_id)
            if on_status:
                on_status(st)
            if st["state"] in TERMINAL_STATES:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError(f"job {job_id} still {st['state']} after {timeout_s} s", "cancel it or wait longer", None)
            time.sleep(poll_s)


def _http_error(exc: urllib.error.HTTPError) -> BackendError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    finally:
        exc.close()
    message = body.get("error") or body.get("detail") or f"HTTP {exc.code} {exc.reason}"
    hint = body.get("hint") or ""
    if exc.code == 401 and not hint:
        hint = "the token does not match the server's token file"
    if exc.code == 503:  # the server answers but says it cannot work (e.g. its job worker died)
        message = f"the backend is running but cannot take jobs (HTTP 503): {message}"
        hint = hint or "restart the backend: 'Check Backend' relaunches a local one; restart 'afv serve' for a URL"
    return BackendError(str(message), str(hint), exc.code)


@dataclass
class BackendProcess:
    url: str
    token: str
    process: subprocess.Popen
    log_path: Path | None = None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Ask the server to stop (SIGTERM), kill it if it does not within timeout_s; exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def client(self, timeout: float = 30.0) -> BackendClient:
        return BackendClient(self.url, self.token, timeout)


def launch_backend(python: str | os.PathLike, data_dir: str | os.PathLike | None = None, parent_pid: int | None = None,
                   env: dict | None = None, timeout_s: float = 120.0, extra_args: list[str] | None = None) -> BackendProcess:
    """Start `python -m afv serve` on loopback and wait for its ready line.

    The token lives in data_dir/token (created 0600 by the server); the server's stderr goes
    to data_dir/server.log. The server exits by itself when parent_pid (default: this
    process) dies. extra_args: more `afv serve` flags (limits, --allow-root ...).
    """
    data_dir = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "token"
    log_path = data_dir / "server.log"
    cmd = [os.fspath(python), "-m", "afv", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
           "--token-file", str(token_file), "--parent-pid", str(parent_pid or os.getpid()), *(extra_args or [])]
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env} if env is not None else None,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except OSError as exc:
        log.close()
        raise BackendError(f"could not start the backend with {python}: {exc}", "check the backend Python path", None) from None
    log.close()  # the child holds its own handle
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:  # reads stdout for the whole life of the server so the pipe never fills
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="afv-backend-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            line = b""
            if time.monotonic() >= deadline:
                BackendProcess("", "", proc).stop(5)
                raise BackendError(f"the backend did not start within {timeout_s:.0f} s", f"see {log_path}", None) from None
            continue
        if line is None:
            code = proc.wait(10)
            raise BackendError(f"the backend exited during start-up (exit code {code}): {_tail(log_path)}", f"see {log_path}", None)
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # stray output before the ready line
        if isinstance(msg, dict) and msg.get("event") == "ready":
            break
    token = token_file.read_text().strip()
    return BackendProcess(msg["url"], token, proc, log_path)


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


if __name__ == "__main__":  # tiny manual check: python backend_client.py URL TOKEN
    print(json.dumps(BackendClient(sys.argv[1], sys.argv[2]).info(), indent=1))
