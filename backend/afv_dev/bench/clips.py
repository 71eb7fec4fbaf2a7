"""The animation clips of a glTF asset, read from its JSON (no bpy), and the clips never used.

The `real` benchmark subset is built from every clip of every asset; this module says which
clips an asset has, how long each is and at what rate its keyframes were authored (the clip's
own frame rate), so that recipes can be written without starting Blender.

RESERVED_CLIPS are held out for evaluation: no recipe may name them, and the Blender builder
refuses them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afv.errors import InputError

# (asset file name, clip name): held-out evaluation data, never rendered into any subset
RESERVED_CLIPS = frozenset({("RobotExpressive.glb", "Jump")})


@dataclass(frozen=True)
class ClipInfo:
    index: int  # position in the glTF `animations` list
    name: str | None  # the glTF animation name (None when unnamed)
    duration_s: float  # last keyframe time minus first, seconds
    rate_fps: float  # the clip's own keyframe rate (1 / median keyframe interval)


def is_reserved(asset: str | Path, clip: str | None) -> bool:
    """True when (asset file name, clip) is held out for evaluation."""
    return clip is not None and (Path(str(asset)).name, clip) in RESERVED_CLIPS


def _read_gltf(path: Path) -> tuple[dict, bytes]:
    """The glTF JSON and its first binary buffer (.glb chunk or the .gltf's external .bin)."""
    data = path.read_bytes()
    if data[:4] == b"glTF":  # binary container: 12-byte header, then JSON and BIN chunks
        json_len = struct.unpack_from("<I", data, 12)[0]
        doc = json.loads(data[20 : 20 + json_len])
        off = 20 + json_len
        binary = b""
        if off + 8 <= len(data):
            bin_len = struct.unpack_from("<I", data, off)[0]
            binary = data[off + 8 : off + 8 + bin_len]
        return doc, binary
    doc = json.loads(data)
    buffers = doc.get("buffers", [])
    uri = buffers[0].get("uri") if buffers else None
    if uri is None or uri.startswith("data:"):
        raise InputError(f"{path}: only external or GLB buffers are supported for clip listing")
    return doc, (path.parent / uri).read_bytes()


def _times(doc: dict, binary: bytes, accessor: int) -> np.ndarray:
    """Keyframe times of one sampler input accessor: (K,) float32 seconds."""
    acc = doc["accessors"][accessor]
    view = doc["bufferViews"][acc["bufferView"]]
    off = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, np.float32, count=acc["count"], offset=off)


def list_clips(path: str | Path) -> list[ClipInfo]:
    """Every animation of a .glb / .gltf file, in file order."""
    path = Path(path)
    doc, binary = _read_gltf(path)
    out = []
    for i, anim in enumerate(doc.get("animations", [])):
        times = [_times(doc, binary, s["input"]) for s in anim.get("samplers", [])]
        times = [t for t in times if len(t)]
        if not times:
            continue
        lo = min(float(t.min()) for t in times)
        hi = max(float(t.max()) for t in times)
        steps = np.concatenate([np.diff(t) for t in times if len(t) > 1] or [np.array([1 / 24], np.float32)])
        steps = steps[steps > 1e-6]
        rate = 1.0 / float(np.median(steps)) if len(steps) else 24.0
        out.append(ClipInfo(i, anim.get("name"), hi - lo, round(rate, 3)))
    return out
