"""The procedurally rigged figure (afv_dev.synthetic.rigged_figure): a real articulated ground truth."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from afv.deform.kinematics import RigTensors, quaternion_to_matrix
from afv_dev import synthetic


def test_rigged_figure_is_one_surface_moved_by_its_rig():
    seq = synthetic.rigged_figure(n_frames=6, size=(96, 96))
    mesh, rig = seq.mesh, seq.mesh.rig
    assert rig is not None and rig.n_bones == 10 and rig.parents[0] == -1
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.volume > 0 and len(tm.split(only_watertight=False)) == 1
    assert seq.positions.shape == (6, mesh.n_vertices, 3)
    assert np.abs(seq.positions[0] - mesh.vertices).max() < 1e-6  # frame 0 = rest
    # every vertex is covered, mostly by one bone, blended near joints
    n_inf = (rig.weights > 0).sum(1)
    assert n_inf.min() >= 1 and 0.05 < (n_inf > 1).mean() < 0.6
    # the stored bone rotations reproduce the positions through LBS (the tracks' convention)
    rt = RigTensors.from_rig(rig, dtype=torch.float64)
    R = quaternion_to_matrix(torch.as_tensor(seq.bone_rotations, dtype=torch.float64))
    pos = rt.pose(torch.as_tensor(mesh.vertices, dtype=torch.float64), R, torch.as_tensor(seq.root_translation, dtype=torch.float64))
    assert np.abs(pos.numpy() - seq.positions).max() < 1e-5
    # it really moves: legs swing by a good fraction of their length
    feet = np.argsort(mesh.vertices[:, 1])[:50]
    assert np.linalg.norm(seq.positions[:, feet] - mesh.vertices[feet], axis=-1).max() > 0.2
    labels = synthetic.figure_limb_labels(mesh.vertices)
    assert set(labels.tolist()) == set(range(len(synthetic.FIGURE_LIMBS)))


def test_rigged_figure_renders_with_texture():
    seq = synthetic.rigged_figure(n_frames=2, size=(96, 96))
    rgba = synthetic.render_sequence(seq)
    cover = (rgba[..., 3] > 0).mean()
    assert 0.1 < cover < 0.6
    assert rgba[0, ..., :3][rgba[0, ..., 3] > 0].std(0).min() > 10  # textured, not flat
