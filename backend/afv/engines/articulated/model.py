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
from ...deform.landmarks import sample_landmarks
from ...deform.skinning import build_skinning
from ...mesh import Mesh
from ...rig import Rig


@dataclass
class PointMap:
    """Surface points as a linear function of the bone transforms."""

    U: torch.Tensor  # (P, B, 3) u_pb
    S: torch.Tensor  # (P, B) s_pb
    O: torch.Tensor | None = None  # (P, K) weights of the residual's nodes at each point (None: no residual)

    @staticmethod
    def make(rig: Rig, verts: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray, device: torch.device,
             node_weights: np.ndarray | None = None) -> "PointMap":
        """face: (P,) int, bary: (P, 3) -> the map of those surface points; node_weights (N, K)
        dense per-vertex weights of the residual's nodes, or None."""
        W = rig.dense_weights()  # (N, B)
        c = faces[face]  # (P, 3)
        S = (W[c] * bary[:, :, None]).sum(1)  # (P, B)
        U = (W[c][..., None] * verts[c][:, :, None, :] * bary[:, :, None, None]).sum(1)  # (P, B, 3)
        f32 = dict(dtype=torch.float32, device=device)
        O = None if node_weights is None else torch.as_tensor((node_weights[c] * bary[:, :, None]).sum(1), **f32)
        return PointMap(torch.as_tensor(U, **f32), torch.as_tensor(S, **f32), O)

    def cat(self, other: "PointMap") -> "PointMap":
        O = None if self.O is None or other.O is None else torch.cat([self.O, other.O])
        return PointMap(torch.cat([self.U, other.U]), torch.cat([self.S, other.S]), O)

    def __len__(self) -> int:
        return int(self.S.shape[0])


def pose_rig(rt: RigTensors, rotvec: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rotvec: (T, B, 3) local axis-angle; root: (T, 3) -> bone transforms A (T, B, 3, 3), t (T, B, 3)."""
    Q, P = fk(rt.parents, rt.heads, axis_angle_to_matrix(rotvec), root)
    return bone_transforms(rt.heads, Q, P)


def points(pm: PointMap, A: torch.Tensor, t: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Posed surface points (T, P, 3) from bone transforms A (T, B, 3, 3), t (T, B, 3).

    residual: (T, K, 3) rest-space offsets of the residual's nodes (mesh units), or None. A point
    moves by its blend of them before skinning: p = sum_b A_b (u_pb + s_pb r_p) + s_pb t_b,
    r_p = sum_k O_pk residual_k."""
    p = torch.einsum("tbac,pbc->tpa", A, pm.U) + torch.einsum("tba,pb->tpa", t, pm.S)
    if residual is None or pm.O is None:
        return p
    r = torch.einsum("pk,tkc->tpc", pm.O, residual)  # (T, P, 3) rest-space offsets
    return p + torch.einsum("tbac,pb,tpc->tpa", A, pm.S, r)


def node_weights(mesh: Mesh, n_nodes: int, seed: int = 0, k_nn: int = 4) -> np.ndarray:
    """(N, K) dense weights of K residual nodes (farthest-point landmarks) at every vertex:
    the deformation core's geodesic Gaussian skinning (afv.deform.skinning), rows sum to 1.
    Geodesic, so a node on one limb does not drag the neighbouring limb."""
    lm = sample_landmarks(mesh, n_nodes, seed=seed)
    sw = build_skinning(mesh, lm, k_nn=k_nn)
    W = np.zeros((mesh.n_vertices, len(lm)), np.float32)
    np.add.at(W, (np.arange(mesh.n_vertices)[:, None], sw.idx), sw.weights)  # add: padding entries (weight 0) may repeat an index
    return W


def single_bone_rig(mesh: Mesh) -> Rig:
    """One root bone at the bounding-box centre carrying every vertex: rigid motion only
    (used when the mesh has no rig and no automatic skeleton is available)."""
    c = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    d = mesh.bbox_diagonal()
    n = mesh.n_vertices
    return Rig(("root",), np.array([-1], np.int32), c[None].astype(np.float32), (c + [0, 0.25 * d, 0])[None].astype(np.float32),
               np.zeros((n, 1), np.int32), np.ones((n, 1), np.float32))
