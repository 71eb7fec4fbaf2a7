"""First-frame placement (afv.fitting.placement) on a rendered box with a known pose."""

from __future__ import annotations

import numpy as np
import torch

from afv_dev import synthetic
from afv.fitting.placement import axis_rotations, estimate_pose


def test_axis_rotations_are_the_24_proper_ones():
    R = axis_rotations()
    assert R.shape == (24, 3, 3)
    assert np.allclose(np.linalg.det(R), 1)
    assert len({r.tobytes() for r in R}) == 24


def test_pose_estimation_from_first_mask():
    seq = synthetic.rigid_sequence(n_frames=1, size=(128, 128))
    mask = synthetic.render_sequence(seq)[0, ..., 3] > 0
    al = estimate_pose(seq.mesh, mask, 40.0, torch.device("cpu"))
    assert al.iou > 0.85
    # the box's silhouette is symmetric under 180-degree turns about its axes; compare up to those
    Rg = seq.camera.mesh_to_camera[0][:3, :3]
    sym = [np.diag(d) for d in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])]
    ang = min(np.degrees(np.arccos(np.clip((np.trace(al.pose[:3, :3].T @ Rg @ S) - 1) / 2, -1, 1))) for S in sym)
    assert ang < 25, f"rotation error {ang:.1f} deg"
