"""Read a Blender mesh object's base geometry for the backend (object space, vertex order kept)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class MeshData:
    vertices: np.ndarray  # (N, 3) float32 object-space base positions (the Basis when shape keys exist)
    faces: np.ndarray  # (F, 3) int32 triangles (loop triangulation), indices into vertices
    warnings: list[str]
    extra: dict = field(default_factory=dict)  # more npz arrays, e.g. the rig (rig_io.RigData.npz_arrays)

    def to_npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, vertices=self.vertices, faces=self.faces, **self.extra)
        return buf.getvalue()


def base_vertices(mesh) -> np.ndarray:
    """(N, 3) float32: the reference (Basis) shape key when there is one, else the vertex coordinates.

    Reading the reference key explicitly keeps an existing Basis authoritative even when the
    object is shown with other keys active.
    """
    n = len(mesh.vertices)
    co = np.empty(n * 3, dtype=np.float32)
    keys = mesh.shape_keys
    if keys is not None and keys.reference_key is not None:
        keys.reference_key.data.foreach_get("co", co)
    else:
        mesh.vertices.foreach_get("co", co)
    return co.reshape(n, 3)


def extract_mesh(obj, depsgraph=None) -> MeshData:
    """Base vertices and triangles of a mesh object, in object space.

    depsgraph (optional) lets us warn when modifiers change the topology: the shape keys are
    written on the base mesh, so such modifiers are re-applied on top of the animation.
    """
    if obj is None or obj.type != "MESH":
        raise ValueError("select a mesh object (the active object is not a mesh)")
    mesh = obj.data
    if len(mesh.vertices) < 3:
        raise ValueError(f"mesh '{mesh.name}' has {len(mesh.vertices)} vertices; at least 3 are needed")
    mesh.calc_loop_triangles()
    nt = len(mesh.loop_triangles)
    if nt == 0:
        raise ValueError(f"mesh '{mesh.name}' has no faces; the backend needs a surface, not a point cloud")
    tris = np.empty(nt * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("vertices", tris)
    warnings: list[str] = []
    if obj.mode == "EDIT":
        warnings.append("the object is in Edit Mode; unsaved edits are not included (switch to Object Mode)")
    if depsgraph is not None and any(m.show_viewport for m in obj.modifiers):
        ev = obj.evaluated_get(depsgraph)
        em = ev.to_mesh()
        try:
            if len(em.vertices) != len(mesh.vertices):
                names = ", ".join(m.name for m in obj.modifiers if m.show_viewport)
                warnings.append(
                    f"modifiers ({names}) change the vertex count ({len(mesh.vertices)} -> {len(em.vertices)}); "
                    "motion is computed on the base mesh and the modifiers are applied on top"
                )
        finally:
            ev.to_mesh_clear()
    return MeshData(base_vertices(mesh), tris.reshape(nt, 3), warnings)
