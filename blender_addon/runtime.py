"""Session-lifetime objects of the add-on: the backend session and what /info last said.

Blender operators are re-created on every call, so the launched backend (seconds to start)
must live here; register() creates it and unregister() stops it.
"""

from __future__ import annotations

from .backend_session import BackendSession


class _State:
    def __init__(self) -> None:
        self.session = BackendSession()
        self.info: dict = {}


STATE = _State()


def known_engines() -> list[str]:
    eng = STATE.info.get("engines") or []
    if isinstance(eng, dict):
        return sorted(eng)
    return sorted(e["name"] if isinstance(e, dict) else str(e) for e in eng)


def status_line(info: dict) -> str:
    dev = info.get("device") or info.get("devices") or "?"
    if isinstance(dev, (list, tuple)):
        dev = ", ".join(map(str, dev))
    return f"connected: afv {info.get('version', '?')}, device {dev}, engines {', '.join(known_engines()) or '?'}"


def shutdown() -> None:
    STATE.session.stop()
    STATE.info = {}
