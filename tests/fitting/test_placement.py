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


def test_an_off_centre_object_far_smaller_than_the_first_guess_is_found():
    """A long body seen nearly head on, small and in a corner of the image: the first depth guess
    (from the mesh's radius) is several times too far, so the placement moves much nearer; the
    sideways offset must follow the depth along the ray through the mask (it once stayed put and
    threw the mesh off the image: the DAVIS dog's Fox, IoU 0.44 -> 0.66)."""
    import trimesh

    from afv.camera import intrinsics, look_at
    from afv.geometry.silhouette import mask_iou, silhouette
    from afv.mesh import Mesh

    box = trimesh.creation.box(extents=(0.3, 0.6, 3.0))
    v = np.asarray(box.vertices, np.float64)
    W, H = 256, 144
    K = intrinsics(W, H, 50.0)
    M = look_at(np.array([0.3, 0.8, 5.0]), np.array([1.3, 0.2, 0.0]))  # looking along the body, aimed off it
    faces = torch.as_tensor(np.asarray(box.faces), dtype=torch.long)
    mask = silhouette(torch.as_tensor(v @ M[:3, :3].T + M[:3, 3], dtype=torch.float32), faces, K, (W, H))
    ys, xs = np.nonzero(mask)
    assert 0.01 < mask.mean() < 0.1 and xs.mean() < 0.4 * W  # construction: small, off centre
    al = estimate_pose(Mesh(v.astype(np.float32), np.asarray(box.faces, np.int32)), mask, 50.0, torch.device("cpu"),
                       up_vector=np.array([0.0, 1.0, 0.0]))
    assert al.iou > 0.8, al.iou  # 0.27 before the fix
    centre = np.array([0.0, 0.0, 0.0]) @ al.pose[:3, :3].T + al.pose[:3, 3]
    true = M[:3, 3]
    assert abs(centre[2] / true[2] - 1) < 0.25
