"""Articulated deformation model: a rig (bones + skin weights) posed by per-frame bone rotations
and a root translation (docs/contracts.md "Rig"), evaluated on surface points.

Surface points (face + barycentrics) are a fixed linear map of the bone transforms G_b(x) =
A_b x + t_b: p = sum_c beta_c sum_k w_ck G_{j_ck}(v_c) = sum_b A_b u_pb + s_pb t_b, with
u_pb = sum_c beta_c w_cb v_c and s_pb = sum_c beta_c w_cb stored densely. One einsum per
evaluation, batched over frames: no gathers or per-point loops in the optimiser's inner loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...deform.kinematics import RigTensors, axis_angle_to_matrix, bone_transforms, fk
from ...mesh import Mesh
from ...rig import Rig


@dataclass
class PointMap:
    """Surface points as a linear function of the bone transforms."""

    U: torch.Tensor  # (P, B, 3) u_pb
    S: torch.Tensor  # (P, B) s_pb

    @staticmethod
    def make(rig: Rig, verts: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray, device: torch.device) -> "PointMap":
        """face: (P,) int, bary: (P, 3) -> the map of those surface points."""
        W = rig.dense_weights()  # (N, B)
        c = faces[face]  # (P, 3)
        S = (W[c] * bary[:, :, None]).sum(1)  # (P, B)
        U = (W[c][..., None] * verts[c][:, :, None, :] * bary[:, :, None, None]).sum(1)  # (P, B, 3)
        return PointMap(torch.as_tensor(U, dtype=torch.float32, device=device), torch.as_tensor(S, dtype=torch.float32, device=device))

    def cat(self, other: "PointMap") -> "PointMap":
        return PointMap(torch.cat([self.U, other.U]), torch.cat([self.S, other.S]))

    def __len__(self) -> int:
        return int(self.S.shape[0])


def pose_rig(rt: RigTensors, rotvec: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rotvec: (T, B, 3) local axis-angle; root: (T, 3) -> bone transforms A (T, B, 3, 3), t (T, B, 3)."""
    Q, P = fk(rt.parents, rt.heads, axis_angle_to_matrix(rotvec), root)
    return bone_transforms(rt.heads, Q, P)


def points(pm: PointMap, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Posed surface points (T, P, 3) from bone transforms A (T, B, 3, 3), t (T, B, 3)."""
    return torch.einsum("tbac,pbc->tpa", A, pm.U) + torch.einsum("tba,pb->tpa", t, pm.S)


def single_bone_rig(mesh: Mesh) -> Rig:
    """One root bone at the bounding-box centre carrying every vertex: rigid motion only
    (used when the mesh has no rig and no automatic skeleton is available)."""
    c = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    d = mesh.bbox_diagonal()
    n = mesh.n_vertices
    return Rig(("root",), np.array([-1], np.int32), c[None].astype(np.float32), (c + [0, 0.25 * d, 0])[None].astype(np.float32),
               np.zeros((n, 1), np.int32), np.ones((n, 1), np.float32))
