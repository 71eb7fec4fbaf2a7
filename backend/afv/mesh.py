"""Mesh input: vertices and triangle faces with the user's vertex order preserved.

Output index i is always input vertex i: loaders never merge, reorder or drop vertices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .gltf import read_gltf
from .npz import read_npz
from .rig import Rig, rig_from_npz

MAX_VERTICES_DEFAULT = 2_000_000


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (N, 3) float32, the mesh's own (object) coordinates
    faces: np.ndarray  # (F, 3) int32, indices into vertices
    rig: Rig | None = None  # the mesh's own rig, when it came with one (afv.rig)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def bbox_diagonal(self) -> float:
        return float(np.linalg.norm(self.vertices.max(0) - self.vertices.min(0)))


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, max_vertices: int = MAX_VERTICES_DEFAULT) -> Mesh:
    """Check shapes, dtypes, finiteness and index ranges; return a normalised Mesh."""
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"mesh vertices must have shape (N, 3), got {v.shape}")
    if v.shape[0] < 3:
        raise InputError(f"mesh has {v.shape[0]} vertices; at least 3 are needed")
    if v.shape[0] > max_vertices:
        raise InputError(f"mesh has {v.shape[0]} vertices, over the limit of {max_vertices}")
    if not np.issubdtype(v.dtype, np.floating) and not np.issubdtype(v.dtype, np.integer):
        raise InputError(f"mesh vertices must be numeric, got dtype {v.dtype}")
    v = v.astype(np.float32)
    if not np.isfinite(v).all():
        raise InputError("mesh vertices contain NaN or infinite values")
    if f.size == 0:
        raise InputError("mesh has no faces", "the backend needs a triangle surface, not a point cloud")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"mesh faces must have shape (F, 3) (triangles), got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"mesh faces must be integers, got dtype {f.dtype}")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InputError(f"mesh faces index vertices outside [0, {v.shape[0]})")
    if float(np.ptp(v, axis=0).max()) <= 0:
        raise InputError("mesh is degenerate: all vertices coincide")
    return Mesh(np.ascontiguousarray(v), np.ascontiguousarray(f.astype(np.int32)))


def load_mesh(path: str | Path, max_vertices: int = MAX_VERTICES_DEFAULT) -> Mesh:
    """Load `.npz` (vertices, faces, optional rig), `.glb`/`.gltf` (with its skin, afv.gltf) or any
    mesh file trimesh reads, keeping vertex order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mesh file not found: {path}")
    if path.suffix.lower() == ".npz":
        data = read_npz(path)
        missing = {"vertices", "faces"} - set(data)
        if missing:
            raise InputError(f"{path.name} lacks arrays {sorted(missing)}", "an npz mesh holds 'vertices' (N,3) and 'faces' (F,3)")
        mesh = validate_mesh(data["vertices"], data["faces"], max_vertices)
        rig = rig_from_npz(data, mesh.n_vertices)
        return mesh if rig is None else Mesh(mesh.vertices, mesh.faces, rig)
    if path.suffix.lower() in (".glb", ".gltf"):
        # our own reader: the skin comes with it, and the vertex order is defined (afv.gltf)
        scene = read_gltf(path)
        mesh = validate_mesh(scene.vertices, scene.faces, max_vertices)
        return mesh if scene.rig is None else Mesh(mesh.vertices, mesh.faces, scene.rig)
    import trimesh  # imported lazily: only file formats other than npz need it

    try:
        # process=False keeps vertices exactly as stored (no merge, no reorder).
        loaded = trimesh.load(path, process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for bad files
        raise InputError(f"could not read mesh {path.name}: {exc}") from None
    if not hasattr(loaded, "faces") or len(loaded.faces) == 0:
        raise InputError(f"{path.name} has no triangle faces")
    return validate_mesh(np.asarray(loaded.vertices), np.asarray(loaded.faces), max_vertices)


def save_mesh_npz(mesh: Mesh, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, vertices=mesh.vertices, faces=mesh.faces, **(mesh.rig.to_npz_arrays() if mesh.rig else {}))


AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}


def parse_up_axis(value: str | None) -> np.ndarray | None:
    """The mesh's up direction as a (3,) unit float32 vector, from "+z" style names or "x,y,z".

    None or "" means unknown. Blender objects are Z-up, so the add-on sends the object's world Z
    expressed in object coordinates.
    """
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text in AXES:
        return np.asarray(AXES[text], np.float32)
    if text in ("x", "y", "z"):
        return np.asarray(AXES["+" + text], np.float32)
    try:
        vec = np.asarray([float(x) for x in text.split(",")], np.float64)
    except ValueError:
        vec = np.zeros(0)
    if vec.shape != (3,) or not np.isfinite(vec).all() or np.linalg.norm(vec) < 1e-9:
        raise InputError(f"up_axis {value!r} is not an axis", "use +x, -x, +y, -y, +z, -z or three numbers 'x,y,z'")
    return (vec / np.linalg.norm(vec)).astype(np.float32)
