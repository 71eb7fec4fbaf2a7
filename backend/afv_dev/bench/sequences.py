"""Benchmark sequences: the on-disk folder format, recipes, the cache and the builders.

A sequence folder (anyone may add one by hand; no code change needed):
  frames/00000.png ...   RGBA renders, transparent background (alpha = object)
  plain/00000.png ...    optional: RGB on a plain background (composited from frames/)
  clutter/00000.png ...  optional: RGB on a cluttered background (composited)
  masks/00000.png ...    object masks (0/255)
  camera.json            afv.camera JSON: image_size, K, mesh_to_camera (mesh coords -> OpenCV camera)
  mesh.npz               vertices (N, 3) float32, faces (F, 3) int32: the input mesh = GT frame 0
  gt.npz                 positions (T, N, 3) float32: every vertex at every frame, same order,
                         in the mesh's coordinates
  meta.json              {"name", "source", "fps", "n_frames", "recipe", "recipe_hash", ...}
  rig_gt.npz             optional (rigged assets): the rig's ground-truth pose per frame,
                         bone_matrices (T, B, 4, 4) world matrices of the pose bones, and the
                         contract's bone_rotations (T, B, 4) wxyz / root_translation (T, 3)
                         relative to frame 0 (docs/contracts.md "Rig"); mesh.npz then holds the
                         rig (bone_* and skin_* keys) in frame 0's pose

Builders write into <cache>/<name>/ and skip the work when meta.json's recipe_hash equals
the hash of the requested recipe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from afv_dev import synthetic
from afv.camera import Camera, load_camera
from afv.errors import InputError
from afv.gltf import list_animations
from afv.mesh import Mesh, load_mesh
from afv.npz import read_npz

VARIANTS = ("frames", "plain", "clutter")
# 2: views at 35 deg azimuth / 15 deg elevation (3q) and 90 / 15 (side); sampling modes; non-cyclic
#    clips hold their last pose instead of looping; the asset's rig in mesh.npz and rig_gt.npz
FORMAT_VERSION = 2
SAMPLINGS = ("rate", "whole")


@dataclass(frozen=True)
class Recipe:
    """What to build. source: "synthetic:<name>" or "asset:<file>[#<clip>]"."""

    name: str
    source: str
    n_frames: int = 16
    size: int = 256  # image side in pixels (square)
    view: str = "front"  # synthetic: its own camera; assets: "three_quarter" | "side"
    fps: float = 24.0  # sampling rate of the clip (assets: resampled from the action)
    variants: tuple[str, ...] = ("frames", "plain", "clutter")
    # assets: "rate" = n_frames consecutive frames at `fps` (a cyclic clip loops, another holds its
    # last pose); "whole" = n_frames spread evenly over the whole clip, first to last keyframe
    sampling: str = "rate"
    extra: dict[str, Any] = field(default_factory=dict)

    def hash(self) -> str:
        d = asdict(self)
        d["format"] = FORMAT_VERSION
        if self.source.startswith("synthetic:"):
            d["synthetic_version"] = synthetic.SYNTHETIC_VERSION  # the renderer is part of the recipe
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SequenceData:
    """A loaded sequence folder."""

    path: Path
    name: str
    mesh: Mesh
    positions: np.ndarray  # (T, N, 3) float32 GT
    camera: Camera
    masks: np.ndarray  # (T, H, W) bool
    fps: float
    meta: dict

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def up_axis(self) -> str | None:
        """The mesh's up, as the add-on would send it: real assets are rendered in Blender's world
        (Z up); procedural sequences have none."""
        return "+z" if str(self.meta.get("coordinates", "")).startswith("Blender world, Z up") else None

    def frames_dir(self, variant: str = "frames") -> Path:
        d = self.path / variant
        if not d.is_dir():
            raise InputError(f"sequence {self.name} has no '{variant}' frames", f"available: {self.variants()}")
        return d

    def read_rig_gt(self) -> dict[str, np.ndarray] | None:
        """The rig's ground-truth pose per frame (rig_gt.npz), None for sequences without a rig."""
        f = self.path / "rig_gt.npz"
        return dict(read_npz(f)) if f.is_file() and self.mesh.rig is not None else None

    def variants(self) -> list[str]:
        return [v for v in VARIANTS if (self.path / v).is_dir()]

    def read_frames(self, variant: str = "frames") -> np.ndarray:
        """(T, H, W, 3|4) uint8 RGB(A)."""
        out = []
        for f in sorted(self.frames_dir(variant).glob("*.png")):
            im = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            out.append(cv2.cvtColor(im, cv2.COLOR_BGRA2RGBA if im.shape[2] == 4 else cv2.COLOR_BGR2RGB))
        return np.stack(out)


def load_sequence(path: str | Path) -> SequenceData:
    """Read and check a sequence folder."""
    path = Path(path)
    for f in ("camera.json", "mesh.npz", "gt.npz", "meta.json", "masks"):
        if not (path / f).exists():
            raise InputError(f"{path} is not a benchmark sequence: {f} is missing", "see docs/benchmark.md for the folder format")
    meta = json.loads((path / "meta.json").read_text())
    mesh = load_mesh(path / "mesh.npz")
    pos = read_npz(path / "gt.npz")["positions"].astype(np.float32)
    if pos.ndim != 3 or pos.shape[1:] != (mesh.n_vertices, 3):
        raise InputError(f"{path}/gt.npz positions {pos.shape} do not match the mesh's {mesh.n_vertices} vertices")
    camera = load_camera(path / "camera.json")
    mask_files = sorted((path / "masks").glob("*.png"))
    if len(mask_files) != len(pos):
        raise InputError(f"{path}: {len(mask_files)} masks for {len(pos)} GT frames")
    masks = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) > 127 for f in mask_files])
    return SequenceData(path, meta.get("name", path.name), mesh, pos, camera, masks, float(meta.get("fps", 24.0)), meta)


def find_sequences(root: str | Path) -> list[Path]:
    """Sequence folders directly in `root` (or root itself)."""
    root = Path(root)
    if (root / "gt.npz").is_file():
        return [root]
    return sorted(p.parent for p in root.glob("*/gt.npz"))


# ----------------------------------------------------------------------------- writing


def _write_png(path: Path, img: np.ndarray) -> None:
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), img)


def clutter_background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: random coloured rectangles and discs on a gradient (static clutter)."""
    W, H = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    img = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.5 - 0.2 * xx], -1) * 255
    img = np.ascontiguousarray(img.astype(np.uint8))
    for _ in range(24):
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        r = int(rng.integers(max(2, W // 40), max(3, W // 8)))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x - r, y - r), (x + r, y + r // 2), col, -1)
        else:
            cv2.circle(img, (x, y), r, col, -1)
    return img


def composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """rgba (T, H, W, 4) uint8 over background (H, W, 3) uint8 -> (T, H, W, 3) uint8."""
    a = rgba[..., 3:4].astype(np.float32) / 255
    return (rgba[..., :3] * a + background[None] * (1 - a) + 0.5).astype(np.uint8)


def write_sequence(
    folder: Path,
    recipe: Recipe,
    mesh: Mesh,
    positions: np.ndarray,
    camera: Camera,
    rgba: np.ndarray,
    extra_meta: dict | None = None,
    rig_gt: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a complete sequence folder atomically (temp folder, then rename).

    mesh.rig (if any) goes into mesh.npz; rig_gt (arrays, see the module doc) into rig_gt.npz."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    W, H = camera.image_size
    if rgba.shape[1:3] != (H, W):
        raise ValueError(f"frames {rgba.shape} do not match the camera's {(W, H)}")
    (tmp / "frames").mkdir()
    (tmp / "masks").mkdir()
    for t, f in enumerate(rgba):
        _write_png(tmp / "frames" / f"{t:05d}.png", f)
        _write_png(tmp / "masks" / f"{t:05d}.png", ((f[..., 3] > 127) * 255).astype(np.uint8))
    backgrounds = {"plain": np.full((H, W, 3), (200, 205, 210), np.uint8), "clutter": clutter_background((W, H), seed=1)}
    for v in recipe.variants:
        if v in backgrounds:
            (tmp / v).mkdir()
            for t, f in enumerate(composite(rgba, backgrounds[v])):
                _write_png(tmp / v / f"{t:05d}.png", f)
    (tmp / "camera.json").write_text(json.dumps(camera.to_json()))
    rig_arrays = mesh.rig.to_npz_arrays() if mesh.rig is not None else {}
    np.savez(tmp / "mesh.npz", vertices=mesh.vertices.astype(np.float32), faces=mesh.faces.astype(np.int32), **rig_arrays)
    if rig_gt is not None:
        np.savez(tmp / "rig_gt.npz", **{k: np.asarray(v) for k, v in rig_gt.items()})
    np.savez(tmp / "gt.npz", positions=np.asarray(positions, np.float32))
    meta = {
        "name": recipe.name,
        "source": recipe.source,
        "fps": recipe.fps,
        "n_frames": int(len(positions)),
        "n_vertices": int(mesh.n_vertices),
        "image_size": [W, H],
        "recipe": asdict(recipe),
        "recipe_hash": recipe.hash(),
        **(extra_meta or {}),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def is_fresh(folder: Path, recipe: Recipe) -> bool:
    m = Path(folder) / "meta.json"
    if not m.is_file() or not (Path(folder) / "gt.npz").is_file():
        return False
    try:
        return json.loads(m.read_text()).get("recipe_hash") == recipe.hash()
    except json.JSONDecodeError:
        return False


# ----------------------------------------------------------------------------- builders


def build_synthetic(recipe: Recipe, folder: Path) -> Path:
    """Procedural sequence from afv_dev.synthetic, rendered by its own rasteriser (no bpy)."""

    kind = recipe.source.split(":", 1)[1]
    if kind not in synthetic.SEQUENCES:
        raise InputError(f"unknown synthetic sequence '{kind}'", f"available: {sorted(synthetic.SEQUENCES)}")
    kwargs = dict(recipe.extra.get("kwargs", {}))
    seq = synthetic.SEQUENCES[kind](n_frames=recipe.n_frames, size=(recipe.size, recipe.size), **kwargs)
    rgba = synthetic.render_sequence(seq)
    return write_sequence(folder, recipe, seq.mesh, seq.positions, seq.camera, rgba, {"generator": f"afv_dev.synthetic.{kind}"})


def build(recipe: Recipe, cache: str | Path, force: bool = False, log=print) -> Path | None:
    """Build (or reuse) one sequence under cache/<recipe.name>; None if its source is absent."""
    folder = Path(cache) / recipe.name
    if not force and is_fresh(folder, recipe):
        return folder
    if recipe.source.startswith("synthetic:"):
        log(f"bench: building {recipe.name} (synthetic)")
        return build_synthetic(recipe, folder)
    if recipe.source.startswith("asset:"):
        from .blender_render import asset_path, build_asset
        from .clips import is_reserved

        rel, _, clip = recipe.source.split(":", 1)[1].partition("#")
        if is_reserved(rel, clip or None):
            raise InputError(f"{recipe.name}: clip '{clip}' of {Path(rel).name} is reserved for held-out evaluation",
                             "never render it into a benchmark sequence")
        path = asset_path(rel)
        if path is None:
            log(f"bench: skipping {recipe.name}: asset {recipe.source} not found (looked in $AFV_DATA/assets and ../shared/data/assets)")
            return None
        log(f"bench: building {recipe.name} (Blender)")
        return build_asset(recipe, folder)
    raise InputError(f"unknown sequence source '{recipe.source}'", "use synthetic:<name> or asset:<file>#<clip>")


# ----------------------------------------------------------------------------- subsets

ASSET_CLIPS = [
    ("fox_walk", "Fox.glb#Walk"),
    ("fox_run", "Fox.glb#Run"),
    ("fox_survey", "Fox.glb#Survey"),
    ("cesiumman", "CesiumMan.glb"),
    ("riggedsimple", "RiggedSimple.glb"),
    ("morphsphere", "AnimatedMorphSphere/AnimatedMorphSphere.gltf"),
    ("robot_walking", "RobotExpressive.glb#Walking"),
    ("robot_wave", "RobotExpressive.glb#Wave"),
    ("robot_dance", "RobotExpressive.glb#Dance"),
]
SYNTHETIC = ["rigid_box", "bending_cylinder", "waving_sheet", "multi_part"]


# the real assets of the `real` subsets: (key, file under assets/); every clip of each is used
REAL_ASSETS = [
    ("fox", "Fox.glb"),
    ("cesiumman", "CesiumMan.glb"),
    ("riggedsimple", "RiggedSimple.glb"),
    ("morphsphere", "AnimatedMorphSphere/AnimatedMorphSphere.gltf"),
    ("robot", "RobotExpressive.glb"),
]
REAL_VIEWS = (("three_quarter", "3q"), ("side", "side"))
REAL_SIZE = 256
REAL_WHOLE_FRAMES = 16  # sampled over the whole clip
REAL_RATE_FRAMES = 48  # consecutive frames at the clip's own keyframe rate (video-like)
REAL_QUICK = ("fox_walk", "fox_run", "cesiumman", "riggedsimple", "morphsphere", "robot_walking", "robot_wave", "robot_dance")


def real_clips(log=print) -> list[tuple[str, str, float]]:
    """(key, source, own rate fps) of every clip of every real asset found, reserved clips left out.

    key: the asset key, plus the clip name for assets with several clips (fox_walk, robot_wave)."""
    from .blender_render import asset_path
    from .clips import is_reserved

    out = []
    for key, rel in REAL_ASSETS:
        path = asset_path(rel)
        if path is None:
            log(f"bench: skipping asset {rel}: not found (looked in $AFV_DATA/assets and ../shared/data/assets)")
            continue
        every = list_animations(path)
        clips = [c for c in every if not is_reserved(rel, c.name)]
        for c in clips:
            if len(clips) == 1 and len(every) == 1:  # the asset's only clip: no name needed
                out.append((key, f"asset:{rel}", c.rate_fps))
            else:
                if c.name is None:
                    raise InputError(f"{rel} has several clips and clip {c.index} has no name", "name the glTF animations")
                out.append((f"{key}_{c.name.lower()}", f"asset:{rel}#{c.name}", c.rate_fps))
    return out


def real_recipes(quick: bool = False, size: int | None = None, log=print) -> list[Recipe]:
    """`real`: every clip x two views x (16 frames over the whole clip, 48 consecutive frames at
    the clip's own rate); `real-quick`: REAL_QUICK clips, 16 frames over the whole clip, 3q view."""
    s = size or REAL_SIZE
    out = []
    for key, src, rate in real_clips(log):
        if quick and key not in REAL_QUICK:
            continue
        for view, tag in REAL_VIEWS[:1] if quick else REAL_VIEWS:
            n = REAL_WHOLE_FRAMES
            out.append(Recipe(f"{key}_{n}w_{tag}", src, n, s, view, rate, ("frames",), sampling="whole"))
            if not quick:
                n = REAL_RATE_FRAMES
                out.append(Recipe(f"{key}_{n}r_{tag}", src, n, s, view, rate, ("frames",), sampling="rate"))
    return out


SUBSETS = ("smoke", "dev", "full", "real", "real-quick")


def subset_recipes(subset: str, lengths: tuple[int, ...] | None = None, size: int | None = None) -> list[Recipe]:
    """smoke: 2 small synthetic; dev: all synthetic + a few assets at 16 frames;
    full: everything, two views per asset, lengths 16/64/240;
    real / real-quick: every clip of every real asset (real_recipes)."""
    if subset in ("real", "real-quick"):
        return real_recipes(quick=subset == "real-quick", size=size)
    if subset == "smoke":
        n, s = (lengths or (8,)), size or 96
        return [Recipe(f"{k}_{t}f_{s}", f"synthetic:{k}", t, s) for k in ("rigid_box", "bending_cylinder") for t in n]
    if subset == "dev":
        n, s = (lengths or (16,)), size or 256
        out = [Recipe(f"{k}_{t}f_{s}", f"synthetic:{k}", t, s) for k in SYNTHETIC for t in n]
        for key, src in ASSET_CLIPS:
            if key in ("fox_walk", "cesiumman", "riggedsimple", "morphsphere", "robot_wave"):
                out += [Recipe(f"{key}_{t}f_{s}_3q", f"asset:{src}", t, s, "three_quarter") for t in n]
        return out
    if subset == "full":
        n, s = (lengths or (16, 64, 240)), size or 320
        out = [Recipe(f"{k}_{t}f_{s}", f"synthetic:{k}", t, s) for k in SYNTHETIC for t in n]
        for key, src in ASSET_CLIPS:
            for view, tag in (("three_quarter", "3q"), ("side", "side")):
                out += [Recipe(f"{key}_{t}f_{s}_{tag}", f"asset:{src}", t, s, view) for t in n]
        return out
    raise InputError(f"unknown subset '{subset}'", f"use one of {', '.join(SUBSETS)}")
