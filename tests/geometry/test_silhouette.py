"""IoU by hand, silhouettes of a known square, one resolution policy for camera-vs-mask checks."""

from __future__ import annotations

import numpy as np
import torch

from afv.camera import intrinsics
from afv.geometry.silhouette import camera_mask_iou, downscale_mask, mask_iou, silhouette


def test_iou_hand_case_batched_and_single():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    b[0, 1:3] = True
    assert np.allclose(mask_iou(a, b), [4 / 12, 1.0])  # both empty: they agree
    single = mask_iou(a[0], b[0])
    assert isinstance(single, float) and abs(single - 1 / 3) < 1e-12


def _square():
    v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    return v, f


def test_silhouette_of_a_square_is_its_projection():
    v, f = _square()
    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    sil = silhouette(torch.as_tensor(v + [0, 0, 2], dtype=torch.float32), torch.as_tensor(f), K, (100, 80))
    assert sil.shape == (80, 100) and sil.dtype == bool
    want = np.zeros((80, 100), bool)
    want[25:75, 25:75] = True
    assert np.array_equal(sil, want)


def test_downscale_keeps_coverage_and_scales_K():
    mask = np.zeros((480, 640), bool)
    mask[100:300, 200:400] = True
    K = intrinsics(640, 480, 50)
    small, Ks = downscale_mask(mask, K, 192)
    assert small.shape == (144, 192)
    assert np.allclose(Ks[:2], K[:2] * 0.3)
    assert abs(small.mean() - mask.mean()) < 0.01
    same, K2 = downscale_mask(mask[:100, :100], K, 192)
    assert same.shape == (100, 100) and K2 is K


def test_camera_mask_iou_true_and_shifted_masks():
    v, f = _square()
    W, H = 400, 300
    K = intrinsics(W, H, 40)
    pose = np.eye(4)
    pose[2, 3] = 3.0
    full = silhouette(torch.as_tensor(v @ pose[:3, :3].T + pose[:3, 3], dtype=torch.float32), torch.as_tensor(f), K, (W, H))
    assert camera_mask_iou(v, f, K, pose, full) > 0.97
    # the square is ~130 px wide: shifted by half its width the IoU is 1/3
    shifted = np.roll(full, int(full.any(0).sum() // 2), axis=1)
    assert abs(camera_mask_iou(v, f, K, pose, shifted) - 1 / 3) < 0.03
