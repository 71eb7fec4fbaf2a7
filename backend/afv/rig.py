"""A mesh's own rig (optional input): bones in their rest pose and per-vertex skin weights.

Contract (docs/contracts.md, "Rig"): bones are listed parent-first (parents[b] < b, -1 for a
root), heads/tails are rest positions in the mesh's own coordinates, and every vertex has K
(bone, weight) influences whose weights sum to 1. Skinning is linear blend skinning with the
forward kinematics documented there; `afv.deform.kinematics` computes it.

npz keys (next to `vertices`/`faces` in a mesh npz; strings as a unicode array, no pickles):
  bone_names (B,) str, bone_parents (B,) int32, bone_heads (B,3) float32, bone_tails (B,3) float32,
  skin_joints (N,K) int32, skin_weights (N,K) float32
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

MAX_BONES = 1024
RIG_KEYS = ("bone_names", "bone_parents", "bone_heads", "bone_tails", "skin_joints", "skin_weights")


@dataclass(frozen=True)
class Rig:
    names: tuple[str, ...]  # B bone names (unique)
    parents: np.ndarray  # (B,) int32, -1 for roots, parents[b] < b
    heads: np.ndarray  # (B, 3) float32 rest head positions, mesh coordinates
    tails: np.ndarray  # (B, 3) float32 rest tail positions, mesh coordinates
    joints: np.ndarray  # (N, K) int32 bone index of each vertex influence
    weights: np.ndarray  # (N, K) float32, >= 0, rows sum to 1

    @property
    def n_bones(self) -> int:
        return len(self.names)

    def dense_weights(self) -> np.ndarray:
        """(N, B) float32 skin weights."""
        n = self.joints.shape[0]
        w = np.zeros((n, self.n_bones), np.float32)
        np.add.at(w, (np.repeat(np.arange(n), self.joints.shape[1]), self.joints.ravel()), self.weights.ravel())
        return w

    def to_npz_arrays(self) -> dict[str, np.ndarray]:
        return {
            "bone_names": np.array(self.names, dtype=str),
            "bone_parents": self.parents.astype(np.int32),
            "bone_heads": self.heads.astype(np.float32),
            "bone_tails": self.tails.astype(np.float32),
            "skin_joints": self.joints.astype(np.int32),
            "skin_weights": self.weights.astype(np.float32),
        }


def validate_rig(names, parents, heads, tails, joints, weights, n_vertices: int) -> Rig:
    """Check shapes, order, finiteness and index ranges; normalise weight rows to sum 1."""
    names = tuple(str(n) for n in np.asarray(names).reshape(-1))
    B = len(names)
    if B == 0 or B > MAX_BONES:
        raise InputError(f"rig has {B} bones; 1 to {MAX_BONES} are supported")
    if len(set(names)) != B:
        raise InputError("rig bone names are not unique")
    parents = np.asarray(parents)
    heads = np.asarray(heads, np.float32)
    tails = np.asarray(tails, np.float32)
    joints = np.asarray(joints)
    weights = np.asarray(weights, np.float32)
    if parents.shape != (B,) or not np.issubdtype(parents.dtype, np.integer):
        raise InputError(f"bone_parents must be ({B},) integers, got {parents.shape} {parents.dtype}")
    if heads.shape != (B, 3) or tails.shape != (B, 3):
        raise InputError(f"bone_heads and bone_tails must be ({B}, 3), got {heads.shape} and {tails.shape}")
    if not (np.isfinite(heads).all() and np.isfinite(tails).all()):
        raise InputError("bone heads or tails contain NaN or infinite values")
    if np.any(parents >= np.arange(B)) or np.any(parents < -1):
        raise InputError("bones must be listed parent-first (bone_parents[b] < b, -1 for a root)",
                         "sort the bones so every parent comes before its children")
    if joints.ndim != 2 or joints.shape[0] != n_vertices or weights.shape != joints.shape:
        raise InputError(f"skin_joints and skin_weights must both be ({n_vertices}, K), got {joints.shape} and {weights.shape}")
    if not np.issubdtype(joints.dtype, np.integer) or joints.min() < 0 or joints.max() >= B:
        raise InputError(f"skin_joints must be integers in [0, {B})")
    if not np.isfinite(weights).all() or weights.min() < 0:
        raise InputError("skin_weights must be finite and non-negative")
    total = weights.sum(1, keepdims=True)
    if np.any(total <= 0):
        raise InputError(f"{int((total <= 0).sum())} vertices have no skin weight", "every vertex needs at least one bone influence")
    return Rig(names, parents.astype(np.int32), heads, tails, joints.astype(np.int32), (weights / total).astype(np.float32))


def rig_from_npz(data: dict[str, np.ndarray], n_vertices: int) -> Rig | None:
    """The rig stored in a mesh npz, None when it has none; a partial rig is an InputError."""
    present = [k for k in RIG_KEYS if k in data]
    if not present:
        return None
    missing = [k for k in RIG_KEYS if k not in data]
    if missing:
        raise InputError(f"mesh npz has a partial rig: missing {missing}", f"a rig needs all of {list(RIG_KEYS)}")
    return validate_rig(*(data[k] for k in RIG_KEYS), n_vertices=n_vertices)


def transfer_rig(rig: Rig, src_vertices: np.ndarray, dst_vertices: np.ndarray, rotation: np.ndarray | None = None) -> Rig:
    """The same rig on another copy of the mesh (other vertex order, merged seams, or axes).

    rotation: (3, 3) taking the rig's coordinates to the destination's (e.g. glTF +Y up to
    Blender +Z up: afv.gltf.GLTF_TO_BLENDER), applied to heads, tails and src_vertices. Each
    destination vertex takes the influences of the nearest source vertex, so this is exact when
    the destination's vertices are the source's (in any order, duplicates merged or not).
    """
    from scipy.spatial import cKDTree

    R = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    src = np.asarray(src_vertices, np.float64) @ R.T
    dst = np.asarray(dst_vertices, np.float64)
    _, nearest = cKDTree(src).query(dst)
    return validate_rig(rig.names, rig.parents, rig.heads @ R.T, rig.tails @ R.T, rig.joints[nearest], rig.weights[nearest],
                        n_vertices=len(dst))
