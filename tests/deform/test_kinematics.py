"""Rotations, forward kinematics and LBS (afv.deform.kinematics) against constructed ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from afv.deform.kinematics import (
    RigTensors,
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    fk,
    global_to_local,
    lbs,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_multiply,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    rotation_6d_to_matrix,
)
from afv.rig import validate_rig

D = torch.float64


def _random_rotvecs(n, seed=0, max_angle=math.pi):
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=D)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    ang = torch.rand(n, 1, generator=g, dtype=D) * max_angle
    return axis * ang


# ---------------------------------------------------------------- rotations


def test_axis_angle_matches_scipy_and_is_exact_at_identity():
    r = _random_rotvecs(500, max_angle=math.pi * 0.999)
    r[:3] = torch.tensor([[0.0, 0, 0], [1e-9, 0, 0], [0, -3e-5, 2e-5]], dtype=D)
    R = axis_angle_to_matrix(r)
    ref = torch.as_tensor(Rotation.from_rotvec(r.numpy()).as_matrix())
    assert (R - ref).abs().max() < 1e-12
    assert torch.equal(axis_angle_to_matrix(torch.zeros(2, 4, 3)), torch.eye(3).expand(2, 4, 3, 3))


def test_quaternion_conventions_match_scipy():
    r = _random_rotvecs(300, seed=1)
    q = axis_angle_to_quaternion(r)
    ref = Rotation.from_rotvec(r.numpy()).as_quat()  # scipy: (x, y, z, w)
    ref = torch.as_tensor(np.concatenate([ref[:, 3:], ref[:, :3]], 1))
    assert torch.minimum((q - ref).abs().amax(-1), (q + ref).abs().amax(-1)).max() < 1e-12
    assert (quaternion_to_matrix(q) - axis_angle_to_matrix(r)).abs().max() < 1e-12
    # quaternion product composes rotations like matrix product
    q2 = axis_angle_to_quaternion(_random_rotvecs(300, seed=2))
    lhs = quaternion_to_matrix(quaternion_multiply(q, q2))
    assert (lhs - quaternion_to_matrix(q) @ quaternion_to_matrix(q2)).abs().max() < 1e-12
    # unnormalised quaternions describe the same rotation
    assert (quaternion_to_matrix(3.5 * q) - quaternion_to_matrix(q)).abs().max() < 1e-12


def test_round_trips_including_180_degrees_and_identity():
    r = _random_rotvecs(1000, seed=3, max_angle=math.pi * 0.9999)
    special = torch.tensor([[math.pi, 0, 0], [0, math.pi, 0], [0, 0, math.pi], [0, 0, 0],
                            [math.pi / math.sqrt(2), -math.pi / math.sqrt(2), 0], [1e-7, 0, 0]], dtype=D)
    r = torch.cat([r, special])
    R = axis_angle_to_matrix(r)
    q = matrix_to_quaternion(R)
    assert (q[:, 0] >= 0).all()
    assert ((q.norm(dim=-1) - 1).abs() < 1e-12).all()
    assert (quaternion_to_matrix(q) - R).abs().max() < 1e-12
    R2 = axis_angle_to_matrix(matrix_to_axis_angle(R))
    assert (R2 - R).abs().max() < 1e-9
    # axis-angle itself comes back (angles < pi are unique)
    assert (matrix_to_axis_angle(R[:1000]) - r[:1000]).abs().max() < 1e-8
    assert (quaternion_to_axis_angle(q[:1000]) - r[:1000]).abs().max() < 1e-8
    # 6D
    assert (rotation_6d_to_matrix(matrix_to_rotation_6d(R)) - R).abs().max() < 1e-12
    d6 = torch.randn(50, 6, dtype=D)
    R6 = rotation_6d_to_matrix(d6)
    assert (R6 @ R6.transpose(-1, -2) - torch.eye(3, dtype=D)).abs().max() < 1e-12
    assert (torch.linalg.det(R6) - 1).abs().max() < 1e-12


def test_float32_batched_shapes():
    r = _random_rotvecs(24, seed=4).float().reshape(2, 3, 4, 3)
    R = axis_angle_to_matrix(r)
    assert R.shape == (2, 3, 4, 3, 3) and R.dtype == torch.float32
    assert matrix_to_quaternion(R).shape == (2, 3, 4, 4)
    assert (quaternion_to_matrix(matrix_to_quaternion(R)) - R).abs().max() < 1e-5


def test_rotation_gradients():
    r = (_random_rotvecs(6, seed=5) * 0.8).requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (r,))
    assert torch.autograd.gradcheck(axis_angle_to_quaternion, (r,))
    # at (and next to) the identity, where every optimiser starts
    r0 = torch.tensor([[0.0, 0, 0], [1e-6, -2e-6, 0]], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (r0,), atol=1e-7)
    g = torch.autograd.grad(axis_angle_to_matrix(r0)[0].sum(), r0)[0]
    assert torch.isfinite(g).all()
    q = axis_angle_to_quaternion(_random_rotvecs(6, seed=6)).detach().requires_grad_()
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))
    assert torch.autograd.gradcheck(quaternion_to_axis_angle, (q,))
    # each of Shepperd's four branches (w, x, y, z largest) away from their switch points
    R = axis_angle_to_matrix(torch.tensor([[0.3, 0.2, -0.1], [2.9, 0.2, 0.1], [0.1, 2.8, -0.3], [0.2, -0.1, 3.0]], dtype=D))
    assert set(matrix_to_quaternion(R).abs().argmax(-1).tolist()) == {0, 1, 2, 3}
    assert torch.autograd.gradcheck(matrix_to_quaternion, (R.clone().requires_grad_(),))
    d6 = torch.randn(5, 6, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (d6,))


# ---------------------------------------------------------------- forward kinematics / LBS


def _chain():
    """Two bones along +x: b0 from (0,0,0) to (1,0,0), b1 from (1,0,0) to (2,0,0); points on them."""
    parents = [-1, 0]
    heads = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=D)
    verts = torch.tensor([[0.5, 0, 0], [1.5, 0, 0], [2.0, 0, 0], [1.5, 0.2, 0]], dtype=D)
    joints = torch.tensor([[0, 1], [1, 0], [1, 0], [1, 0]])
    weights = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]], dtype=D)
    return parents, heads, verts, joints, weights


def _rz(deg):
    return axis_angle_to_matrix(torch.tensor([0, 0, math.radians(deg)], dtype=D))


def test_two_bone_chain_rotated_90_degrees_lands_where_geometry_says():
    parents, heads, verts, joints, weights = _chain()
    # the elbow bends 90 degrees about +z: the forearm points along +y from (1, 0, 0)
    rot = torch.stack([torch.eye(3, dtype=D), _rz(90)])
    Q, P = fk(parents, heads, rot)
    assert torch.allclose(P, heads)
    v = lbs(verts, joints, weights, heads, Q, P)
    want = torch.tensor([[0.5, 0, 0], [1, 0.5, 0], [1, 1, 0], [0.8, 0.5, 0]], dtype=D)
    assert (v - want).abs().max() < 1e-12
    # now the shoulder turns 90 degrees too (about +z) and everything moves by u
    u = torch.tensor([0.1, -0.2, 0.3], dtype=D)
    rot = torch.stack([_rz(90), _rz(90)])
    Q, P = fk(parents, heads, rot, u)
    assert (P[1] - (torch.tensor([0, 1.0, 0], dtype=D) + u)).abs().max() < 1e-12
    assert (Q[1] - _rz(180)).abs().max() < 1e-12
    v = lbs(verts, joints, weights, heads, Q, P)
    want = torch.tensor([[0, 0.5, 0], [-0.5, 1, 0], [-1, 1, 0], [-0.5, 0.8, 0]], dtype=D) + u
    assert (v - want).abs().max() < 1e-12
    # a vertex split 50/50 between the bones lands halfway between its two rigid images
    w2 = torch.tensor([[0.5, 0.5]], dtype=D)
    vj = lbs(torch.tensor([[1.0, 0, 0]], dtype=D), torch.tensor([[0, 1]]), w2, heads, Q, P)
    assert (vj[0] - (torch.tensor([0, 1.0, 0], dtype=D) + u)).abs().max() < 1e-12


def _random_tree(B, seed):
    rng = np.random.default_rng(seed)
    parents = [-1] + [int(rng.integers(0, b)) for b in range(1, B)]
    parents[B // 2] = -1  # a second root: roots share the translation
    heads = torch.as_tensor(rng.normal(size=(B, 3)), dtype=D)
    return parents, heads


def _fk_reference(parents, heads, rot, u):
    """Bone-by-bone FK written straight from docs/contracts.md, one frame."""
    B = len(parents)
    Q, P = [None] * B, [None] * B
    for b, p in enumerate(parents):
        if p < 0:
            Q[b], P[b] = rot[b], heads[b] + u
        else:
            Q[b] = Q[p] @ rot[b]
            P[b] = P[p] + Q[p] @ (heads[b] - heads[p])
    return torch.stack(Q), torch.stack(P)


def test_fk_lbs_batched_equals_looped_and_reference():
    B, N, K, T = 9, 60, 3, 5
    parents, heads = _random_tree(B, 7)
    rng = np.random.default_rng(8)
    rot = axis_angle_to_matrix(torch.as_tensor(rng.normal(size=(T, B, 3)) * 0.7, dtype=D))
    u = torch.as_tensor(rng.normal(size=(T, 3)), dtype=D)
    verts = torch.as_tensor(rng.normal(size=(N, 3)), dtype=D)
    joints = torch.as_tensor(rng.integers(0, B, size=(N, K)))
    weights = torch.as_tensor(rng.random((N, K)), dtype=D)
    weights = weights / weights.sum(1, keepdim=True)
    Q, P = fk(parents, heads, rot, u)
    V = lbs(verts, joints, weights, heads, Q, P)
    assert Q.shape == (T, B, 3, 3) and P.shape == (T, B, 3) and V.shape == (T, N, 3)
    for t in range(T):
        Qr, Pr = _fk_reference(parents, heads, rot[t], u[t])
        assert (Q[t] - Qr).abs().max() < 1e-12 and (P[t] - Pr).abs().max() < 1e-12
        Qt, Pt = fk(parents, heads, rot[t], u[t])
        assert (lbs(verts, joints, weights, heads, Qt, Pt) - V[t]).abs().max() < 1e-12
        # LBS straight from the definition: sum_k w_k (Q_j (v - h_j) + P_j)
        ref = sum(weights[:, k, None] * ((Qr[joints[:, k]] @ (verts - heads[joints[:, k]])[..., None]).squeeze(-1)
                                         + Pr[joints[:, k]]) for k in range(K))
        assert (V[t] - ref).abs().max() < 1e-12
    # extra leading dims
    V2 = lbs(verts, joints, weights, heads, *fk(parents, heads, rot.reshape(1, T, B, 3, 3), u.reshape(1, T, 3)))
    assert (V2[0] - V).abs().max() < 1e-12
    # global -> local inverts fk's rotation part
    assert (global_to_local(parents, Q) - rot).abs().max() < 1e-12


def test_rest_pose_leaves_vertices_unchanged_and_bones_keep_their_length():
    B, N = 12, 40
    parents, heads = _random_tree(B, 11)
    rng = np.random.default_rng(12)
    verts = torch.as_tensor(rng.normal(size=(N, 3)), dtype=torch.float32)
    joints = torch.as_tensor(rng.integers(0, B, size=(N, 4)))
    weights = torch.as_tensor(rng.dirichlet(np.ones(4), size=N), dtype=torch.float32)
    h = heads.float()
    Q, P = fk(parents, h, torch.eye(3).expand(3, B, 3, 3).clone(), torch.zeros(3, 3))
    # float32: only the rounding of the weight sum remains
    assert (lbs(verts, joints, weights, h, Q, P) - verts).abs().max() < 1e-6
    # any pose keeps every head-to-parent-head distance (bone lengths are rigid)
    rot = axis_angle_to_matrix(torch.as_tensor(rng.normal(size=(B, 3)), dtype=D))
    _, P = fk(parents, heads, rot, torch.as_tensor(rng.normal(size=3), dtype=D))
    child = [b for b in range(B) if parents[b] >= 0]
    par = [parents[b] for b in child]
    assert ((P[child] - P[par]).norm(dim=-1) - (heads[child] - heads[par]).norm(dim=-1)).abs().max() < 1e-12


def test_fk_lbs_gradcheck():
    parents, heads = _random_tree(5, 13)
    rng = np.random.default_rng(14)
    verts = torch.as_tensor(rng.normal(size=(7, 3)), dtype=D)
    joints = torch.as_tensor(rng.integers(0, 5, size=(7, 2)))
    weights = torch.as_tensor(rng.dirichlet(np.ones(2), size=7), dtype=D)
    r = torch.as_tensor(rng.normal(size=(2, 5, 3)) * 0.5, dtype=D).requires_grad_()
    u = torch.as_tensor(rng.normal(size=(2, 3)), dtype=D).requires_grad_()
    h = heads.clone().requires_grad_()

    def f(r, u, h):
        Q, P = fk(parents, h, axis_angle_to_matrix(r), u)
        return lbs(verts, joints, weights, h, Q, P)

    assert torch.autograd.gradcheck(f, (r, u, h))


def test_rig_tensors_pose_from_a_validated_rig():
    parents, heads, verts, joints, weights = _chain()
    rig = validate_rig(["upper", "lower"], np.array(parents), heads.numpy(), heads.numpy() + [1, 0, 0],
                       joints.numpy(), weights.numpy(), n_vertices=4)
    rt = RigTensors.from_rig(rig, dtype=D)
    v = rt.pose(verts, torch.stack([torch.eye(3, dtype=D), _rz(90)]))
    assert (v[2] - torch.tensor([1.0, 1, 0], dtype=D)).abs().max() < 1e-6


def test_fk_refuses_children_before_parents():
    with pytest.raises(ValueError, match="parent-first"):
        fk([1, -1], torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    B, N, T = 30, 5000, 16
    parents, heads = _random_tree(B, 21)
    rng = np.random.default_rng(22)
    rot = axis_angle_to_matrix(torch.as_tensor(rng.normal(size=(T, B, 3)), dtype=torch.float32))
    u = torch.as_tensor(rng.normal(size=(T, 3)), dtype=torch.float32)
    verts = torch.as_tensor(rng.normal(size=(N, 3)), dtype=torch.float32)
    joints = torch.as_tensor(rng.integers(0, B, size=(N, 4)))
    weights = torch.as_tensor(rng.dirichlet(np.ones(4), size=N), dtype=torch.float32)
    h = heads.float()
    ref = lbs(verts, joints, weights, h, *fk(parents, h, rot, u))
    dev = torch.device("cuda")
    out = lbs(verts.to(dev), joints.to(dev), weights.to(dev), h.to(dev), *fk(parents, h.to(dev), rot.to(dev), u.to(dev)))
    assert (out.cpu() - ref).abs().max() < 1e-4
