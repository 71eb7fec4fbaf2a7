"""The selected mesh's rig (Armature modifier) as the mesh-npz rig arrays of docs/contracts.md.

bone_names / bone_parents (parent-first) / bone_heads / bone_tails in the mesh object's own
coordinates, skin_joints / skin_weights (N, K) from vertex groups named like deform bones,
K = the most influences any vertex has. The Armature modifier maps mesh coordinates to
armature space with  inverse(armature world) @ object world; that map is kept so bone keys
can be written back in armature space (bone_keys.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RigData:
    armature_name: str
    names: list[str]  # B, parent-first
    parents: np.ndarray  # (B,) int32
    heads: np.ndarray  # (B, 3) float32, mesh coordinates
    tails: np.ndarray  # (B, 3) float32, mesh coordinates
    joints: np.ndarray  # (N, K) int32
    weights: np.ndarray  # (N, K) float32, rows sum to 1
    mesh_to_armature: np.ndarray  # (4, 4) float64
    rest_orientations: np.ndarray  # (B, 3, 3) float64 bone rest orientation M_b in armature space
    notes: list[str] = field(default_factory=list)

    def npz_arrays(self) -> dict[str, np.ndarray]:
        return {
            "bone_names": np.array(self.names, dtype=str),
            "bone_parents": self.parents.astype(np.int32),
            "bone_heads": self.heads.astype(np.float32),
            "bone_tails": self.tails.astype(np.float32),
            "skin_joints": self.joints.astype(np.int32),
            "skin_weights": self.weights.astype(np.float32),
        }


def armature_modifier(obj):
    """The first Armature modifier of `obj` that is shown and has an armature, or None."""
    for m in getattr(obj, "modifiers", []):
        if m.type == "ARMATURE" and m.object is not None and m.object.type == "ARMATURE" and m.show_viewport:
            return m
    return None


def parent_first(bones) -> list:
    """Bones ordered so every parent comes before its children (depth-first from the roots)."""
    out = []

    def visit(b):
        out.append(b)
        for c in b.children:
            visit(c)

    for b in bones:
        if b.parent is None:
            visit(b)
    return out


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:3, :3].T + M[:3, 3]


def extract_rig(obj) -> RigData | None:
    """The rig of mesh object `obj`, None when it has no Armature modifier.

    Raises ValueError when the rig cannot be expressed in the contract (a vertex with no
    deform-bone weight: Blender leaves it still, the contract needs every vertex skinned).
    """
    mod = armature_modifier(obj)
    if mod is None:
        return None
    arm = mod.object
    notes: list[str] = []
    bones = parent_first(list(arm.data.bones))
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    parents = np.array([index[b.parent.name] if b.parent else -1 for b in bones], np.int32)
    mesh_to_arm = np.linalg.inv(np.array(arm.matrix_world, np.float64)) @ np.array(obj.matrix_world, np.float64)
    arm_to_mesh = np.linalg.inv(mesh_to_arm)
    heads = _apply(arm_to_mesh, np.array([b.head_local for b in bones], np.float64))
    tails = _apply(arm_to_mesh, np.array([b.tail_local for b in bones], np.float64))
    rest = np.array([np.array(b.matrix_local, np.float64)[:3, :3] for b in bones])

    # vertex group index -> bone index, for groups named like deform bones (what the modifier uses)
    deform = {b.name for b in bones if b.use_deform}
    group_bone = {g.index: index[g.name] for g in obj.vertex_groups if g.name in deform}
    if not mod.use_vertex_groups or not group_bone:
        raise ValueError(f"the Armature modifier '{mod.name}' has no vertex groups named like bones; "
                         "only vertex-group skinning can be sent (envelopes are not supported)")
    if mod.use_bone_envelopes:
        notes.append(f"the Armature modifier '{mod.name}' also uses bone envelopes; only vertex-group weights are sent")
    if mod.use_deform_preserve_volume:
        notes.append(f"the Armature modifier '{mod.name}' preserves volume (dual quaternions); "
                     "bone keys are computed for linear blend skinning and may differ slightly")
    n = len(obj.data.vertices)
    rows: list[list[tuple[int, float]]] = []
    for v in obj.data.vertices:
        acc: dict[int, float] = {}
        for g in v.groups:
            b = group_bone.get(g.group)
            if b is not None and g.weight > 0:
                acc[b] = acc.get(b, 0.0) + g.weight
        rows.append(sorted(acc.items(), key=lambda kv: -kv[1]))
    unweighted = sum(1 for r in rows if not r)
    if unweighted:
        raise ValueError(f"{unweighted} of {n} vertices have no weight on a deform bone of '{arm.name}'; "
                         "weight them (Weight Paint, Normalize All) so every vertex follows the rig")
    K = max(len(r) for r in rows)
    joints = np.zeros((n, K), np.int32)
    weights = np.zeros((n, K), np.float32)
    for i, r in enumerate(rows):
        for k, (b, w) in enumerate(r):
            joints[i, k], weights[i, k] = b, w
    weights /= weights.sum(1, keepdims=True)  # the Armature modifier normalises by the total weight too
    return RigData(arm.name, names, parents, heads.astype(np.float32), tails.astype(np.float32), joints, weights,
                   mesh_to_arm, rest, notes)
