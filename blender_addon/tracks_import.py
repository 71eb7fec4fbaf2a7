"""File > Import > Animate from Video tracks (.npz): a tracks file from `afv animate` onto the selected mesh.

The same write as a finished job (animate.apply_result): shape keys and/or bone keys, the
camera (always, when the file has one), the scene range. A file made for another vertex
count is refused before anything changes.
"""

from __future__ import annotations

from pathlib import Path

from . import animate
from .job import read_tracks


def import_tracks(scene, obj, path: str, settings, cache_dir: str | None = None) -> dict:
    """Apply the tracks file at `path` to mesh object `obj`; returns apply_result's summary.

    Raises ValueError (with what to do) for a wrong object, file or vertex count.
    """
    if obj is None or obj.type != "MESH":
        raise ValueError("select the mesh the tracks were computed for")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"tracks file not found: {p}")
    result = read_tracks(p, len(obj.data.vertices))
    summary = animate.apply_result(scene, obj, result, settings, cache_dir, place_camera=True)
    summary["notes"].insert(0, f"applied {p.name} ({len(result.frame_indices)} frames)")
    return summary
