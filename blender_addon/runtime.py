"""Session-lifetime objects of the add-on: the backend session and what /info last said.

Blender operators are re-created on every call, so the launched backend (seconds to start)
must live here; register() creates it and unregister() stops it.
"""

from __future__ import annotations

import threading

from .backend_session import BackendConfig, BackendSession


class _State:
    def __init__(self) -> None:
        self.session = BackendSession()
        self.info: dict = {}
        self.early_start: threading.Thread | None = None


STATE = _State()


def start_backend_early(cfg: BackendConfig) -> threading.Thread | None:
    """Launch the local backend in the background once a video is chosen, so its start-up and
    import warm-up (8-12 s with a learned engine) overlap the user's remaining choices instead of
    the first job. Only for a backend we launch, only when none runs or is starting; errors are
    left for Animate / Check Backend to report with their hints."""
    if cfg.mode != "LAUNCH" or STATE.session.client is not None:
        return None
    if STATE.early_start is not None and STATE.early_start.is_alive():
        return None

    def launch() -> None:
        try:
            STATE.info = STATE.session.ensure(cfg).info()
        except Exception:  # noqa: BLE001 - reported by the next explicit call
            pass

    STATE.early_start = threading.Thread(target=launch, name="afv-backend-early", daemon=True)
    STATE.early_start.start()
    return STATE.early_start


def known_engines() -> list[str]:
    """Engines the backend can run now (an engine whose weights are absent is left out)."""
    eng = STATE.info.get("engines") or []
    if isinstance(eng, dict):
        return sorted(eng)
    return sorted(e["name"] if isinstance(e, dict) else str(e) for e in eng
                  if not (isinstance(e, dict) and e.get("available") is False))


def unavailable_engines() -> dict[str, str]:
    """{name: why} for engines the backend knows but cannot run here (e.g. weights not installed)."""
    eng = STATE.info.get("engines") or []
    return {e["name"]: str(e.get("unavailable_reason", "")) for e in eng
            if isinstance(e, dict) and e.get("available") is False}


def status_line(info: dict) -> str:
    dev = info.get("device") or info.get("devices") or "?"
    if isinstance(dev, (list, tuple)):
        dev = ", ".join(map(str, dev))
    line = f"connected: afv {info.get('version', '?')}, device {dev}, engines {', '.join(known_engines()) or '?'}"
    off = unavailable_engines()
    if off:
        line += "; not available here: " + ", ".join(f"{n} (needs its weights: `afv weights status`)" for n in sorted(off))
    return line


def shutdown() -> None:
    STATE.session.stop()
    STATE.info = {}
