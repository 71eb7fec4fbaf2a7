"""Real animated assets (glTF) rendered through Blender's Python module (bpy).

`build_asset(recipe, folder)` runs this module in a subprocess (bpy keeps global state, and a
crash there must not take the caller down); the subprocess imports the asset into an empty
scene, selects the clip (exact name; reserved clips are refused), samples `n_frames` either at
`fps` (a cyclic clip loops, another holds its last pose) or spread over the whole clip,
records every vertex of every rendered mesh object at every frame, renders RGBA frames with
Workbench (textures, studio light, transparent film) and writes a sequence folder.

Rig: when one armature moves the rendered objects, its bones at the first sampled frame
(world heads/tails, parent-first) and every vertex's influences (vertex groups, or the parent
bone of a bone-parented object) go into mesh.npz as an afv.rig.Rig (only the bones that deform
something, unweighted single-child roots dropped: rig_pose.deforming_bones), and the pose bones' world
matrices per frame plus the contract's rotations into rig_gt.npz (see rig_pose.py).

Coordinates: the input mesh is all rendered mesh objects joined (object-name order, each
object's own vertex order), in Blender world coordinates at the first sampled frame (Z up).
So the mesh's coordinates are Blender world coordinates; camera.json maps them to OpenCV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from afv.errors import EngineError



def view_direction(azimuth_deg: float, elevation_deg: float) -> tuple[float, float, float]:
    """Unit direction from the object centre to the camera, Blender world (Z up, glTF front = -Y);
    azimuth 0 = in front, positive towards +X (the object's left side)."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    return (float(np.cos(e) * np.sin(a)), float(-np.cos(e) * np.cos(a)), float(np.sin(e)))


VIEWS = {
    "three_quarter": view_direction(35, 15),
    "side": view_direction(90, 15),
    "front": view_direction(0, 11),
}
CYCLIC_TOL = 0.01  # a clip whose last pose is within 1 % of the bbox diagonal of its first loops
FOV_DEG = 35.0


def data_roots() -> list[Path]:
    """Where the shared development data may live ($AFV_DATA first)."""
    roots = []
    if os.environ.get("AFV_DATA"):
        roots.append(Path(os.environ["AFV_DATA"]))
    here = Path(__file__).resolve()
    for p in here.parents:
        roots.append(p / "shared" / "data")
    return roots


def asset_path(rel: str) -> Path | None:
    for r in data_roots():
        p = r / "assets" / rel
        if p.is_file():
            return p
    return None


def build_asset(recipe, folder: Path, timeout_s: float = 1800) -> Path:
    """Render one asset recipe into `folder` (via a bpy subprocess). Returns the folder."""
    folder = Path(folder)
    src = recipe.source.split(":", 1)[1]
    rel, _, clip = src.partition("#")
    path = asset_path(rel)
    if path is None:
        raise FileNotFoundError(rel)
    job = {"recipe": asdict(recipe), "asset": str(path), "clip": clip or None, "folder": str(folder)}
    env = dict(os.environ)
    backend = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = backend + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("BLENDER_USER_RESOURCES", str(folder.parent / ".blender-user"))
    r = subprocess.run(
        [sys.executable, "-m", "afv_dev.bench.blender_scene", json.dumps(job)], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if r.returncode != 0 or not (folder / "gt.npz").is_file():
        tail = (r.stderr or r.stdout)[-2000:]
        raise EngineError(f"Blender could not build {recipe.name}: {tail}")
    return folder

def sample_times(sampling: str, n: int, start: float, end: float, scene_fps: float, fps: float, cyclic: bool) -> tuple[np.ndarray, float]:
    """Blender frame times of the n sampled frames and the resulting video frame rate.

    "whole": n frames from the first to the last keyframe (inclusive), fps = (n-1) / duration;
    "rate": n consecutive frames at `fps` from the start; past the end a cyclic clip loops and
    another holds its last pose (a looped non-cyclic clip would jump: no video does that).
    """
    length = max(end - start, 1e-6)
    if sampling == "whole":
        return np.linspace(start, end, n), (n - 1) / (length / scene_fps)
    if sampling != "rate":
        raise ValueError(f"unknown sampling '{sampling}'")
    raw = np.arange(n) / fps * scene_fps
    return start + (raw % length if cyclic else np.minimum(raw, length)), float(fps)
