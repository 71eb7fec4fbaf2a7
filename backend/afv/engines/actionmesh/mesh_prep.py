"""The user's mesh on the way in (merge, clean, normalise, sample) and the tracks on the way out.

Like the reference's {3D+video} path: vertices are merged by position (and UV when given, so UV
seams stay split), degenerate and repeated faces dropped, unreferenced vertices removed; a merge
map sends every original vertex to its merged one, so results come back on the user's exact
topology. The merged mesh is centred on its bounding box and scaled so its largest extent is 2.
trimesh does the merging, normals and area-weighted surface sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

SURFACE_POINTS = 16384
SURFACE_SEED = 44


@dataclass
class PreparedMesh:
    mesh: trimesh.Trimesh  # merged and cleaned, normalised into [-1, 1]^3 (float64 vertices)
    merge_map: np.ndarray  # (N_orig,) int64: original vertex -> merged vertex
    center: np.ndarray  # (3,) float64 bounding-box centre of the merged mesh
    scale: float  # its largest extent
    unmatched: int  # original vertices farther than 1e-6 from any merged vertex (unreferenced ones)

    @property
    def n_vertices(self) -> int:
        return int(len(self.mesh.vertices))

    def query_features(self) -> torch.Tensor:
        """(V, 6) float32: normalised xyz and unit, corner-angle-weighted vertex normals."""
        return vertex_features(self.mesh)

    def denormalize(self, normalized: np.ndarray) -> np.ndarray:
        """(..., V, 3) normalised -> mesh coordinates, float64."""
        return np.asarray(normalized, np.float64) * (self.scale / 2.0) + self.center

    def expand(self, normalized_frames: np.ndarray) -> np.ndarray:
        """(T, V, 3) normalised positions -> (T, N_orig, 3) float32 on the original topology."""
        return self.denormalize(normalized_frames)[:, self.merge_map].astype(np.float32)


def vertex_features(mesh: trimesh.Trimesh) -> torch.Tensor:
    """(V, 6) float32 [xyz | unit vertex normal] of a trimesh (normals from its faces)."""
    xyz = torch.from_numpy(np.asarray(mesh.vertices)).float()
    normals = torch.nn.functional.normalize(torch.from_numpy(np.array(mesh.vertex_normals)).float(), dim=-1)
    return torch.cat([xyz, normals], dim=-1)


def prepare_mesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None) -> PreparedMesh:
    """vertices (N, 3), faces (F, 3), optional per-vertex uv (N, 2) -> merged, cleaned, normalised mesh."""
    visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv)) if uv is not None else None
    mesh = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces), visual=visual, process=False)
    original = np.array(mesh.vertices, np.float64)
    mesh.merge_vertices()  # position rounded to 8 decimals (and uv to 4); first occurrence order
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    dist, merge_map = cKDTree(mesh.vertices).query(original)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    center = (lo + hi) / 2.0
    mesh.vertices = mesh.vertices - center
    scale = float((mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)).max())
    if scale > 0:
        mesh.vertices = mesh.vertices * (2.0 / scale)
    return PreparedMesh(mesh, np.asarray(merge_map, np.int64), center, scale, int((dist > 1e-6).sum()))


def surface_sample(mesh: trimesh.Trimesh, count: int = SURFACE_POINTS, seed: int = SURFACE_SEED) -> torch.Tensor:
    """Area-weighted surface points with their face normals: (count, 6) float32."""
    points, face_idx = trimesh.sample.sample_surface(mesh, count=count, seed=seed)
    normals = np.asarray(mesh.face_normals)[face_idx]
    return torch.from_numpy(np.concatenate([points, normals], axis=1)).float()
