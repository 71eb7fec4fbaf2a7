"""Nearest rotation to a batch of 3x3 matrices (Procrustes / Kabsch) with a safe gradient.

Forward: torch.linalg.svd with the reflection fix (the smallest singular value's sign is
flipped when det(U V^T) < 0). Backward: the analytic derivative of R = U V^T,
dL/dH = U X V^T with X_ij = (M_ij - M_ji) / (s_i + s_j), M = U^T G V, s the signed singular
values. Unlike autograd through the SVD, this has no 1/(s_i - s_j) terms, so repeated singular
values (symmetric landmark layouts) are harmless; s_i + s_j is clamped away from 0 (where the
rotation is genuinely undetermined).
"""

from __future__ import annotations

import torch


class _NearestRotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, H: torch.Tensor) -> torch.Tensor:
        U, S, Vh = torch.linalg.svd(H)
        det = torch.linalg.det(U @ Vh)
        sign = torch.where(det < 0, -1.0, 1.0).to(H.dtype)
        U = torch.cat([U[..., :2], U[..., 2:] * sign[..., None, None]], dim=-1)
        S = torch.cat([S[..., :2], S[..., 2:] * sign[..., None]], dim=-1)
        R = U @ Vh
        ctx.save_for_backward(U, S, Vh)
        return R

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> torch.Tensor:
        U, S, Vh = ctx.saved_tensors
        V = Vh.transpose(-1, -2)
        M = U.transpose(-1, -2) @ G @ V
        denom = S[..., :, None] + S[..., None, :]
        eps = 1e-6 * S[..., :1, None].abs() + 1e-12
        X = (M - M.transpose(-1, -2)) / torch.clamp(denom, min=0.0).clamp_min(eps)
        return U @ X @ Vh


def nearest_rotation(H: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3, 3) rotation R maximising trace(R^T H) (det R = +1).

    For Procrustes with H = sum_l w_l q_l p_l^T (targets x sources, centred) this is the
    optimal rotation mapping p to q. Differentiable with a clamped, well-defined gradient.
    """
    shape = H.shape
    R = _NearestRotation.apply(H.reshape(-1, 3, 3))
    return R.reshape(shape)
