"""The fused RMSNorm + rotary Triton kernel (actionmesh, CUDA only) computes `layers.norm_rope`'s function.

Runs where CUDA and Triton are present (the GPU machine); skipped elsewhere, where `norm_rope` never
takes the kernel. Every case draws fresh random inputs and compares with a float64 evaluation of the
definition: the kernel's error must be that of one rounding to the output dtype, like the eager path's.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from afv.engines.actionmesh import layers

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference(x: torch.Tensor, w: torch.Tensor | None, eps: float, rope) -> torch.Tensor:
    """The definition in float64: RMSNorm over d with gains, then RoPE on adjacent channel pairs."""
    y = x.double()
    if w is not None:
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    if rope is not None:
        cos, sin = (r.double()[:, None] for r in rope)
        pairs = y.unflatten(-1, (-1, 2))
        rot = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        y = y * cos + rot * sin
    return y


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["self_norm_rope", "cross_q_norm", "cross_k_norm", "rope_only", "expanded_rope"])
def test_fused_kernel_matches_definition(dtype, case):
    kernel = pytest.importorskip("afv.engines.actionmesh.norm_rope_cuda")
    g = torch.Generator(device="cuda").manual_seed(zlib.crc32(f"{case}{dtype}".encode()))
    B, S, H, d = 2, 515, 4, 128
    S = 37 if case == "cross_k_norm" else S
    qkv = 3 * torch.randn(B, S, H, 3, d, generator=g, device="cuda").to(dtype)  # the fused-qkv layout
    x = qkv[..., 1, :].transpose(1, 2)  # (B, H, S, d) strided view, as the attention layer passes it
    w = None if case == "rope_only" else 1 + 0.2 * torch.randn(d, generator=g, device="cuda")
    rope = None
    if case in ("self_norm_rope", "rope_only", "expanded_rope"):
        pos = torch.randint(0, 16, (S,), generator=g, device="cuda").float()
        cos, sin = layers.rope_tables(pos, d)
        if case == "expanded_rope":  # one table row per frame, broadcast over tokens (stride 0)
            cos, sin = cos[:1, None].expand(B, S, d), sin[:1, None].expand(B, S, d)
        else:
            cos, sin = cos[None].expand(B, S, d).contiguous(), sin[None].expand(B, S, d).contiguous()
        rope = (cos, sin)
    assert kernel.supported(x)
    out = kernel.norm_rope_cuda(x, w, 1e-6, rope)
    ref = _reference(x, w, 1e-6, rope)
    norm = layers.HeadRMSNorm(d).cuda().requires_grad_(False)
    if w is not None:
        norm.weight.copy_(w)
    layers._FUSED = False  # the eager passes, for the same inputs
    try:
        eager = layers.norm_rope(x, norm if w is not None else None, rope)
    finally:
        layers._FUSED = None
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    err = (out.double() - ref).abs()
    ulp = ref.abs() * (2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11)  # one rounding (half an ulp, doubled)
    assert (err <= ulp + 1e-6).float().mean() > 0.999, float((err / (ulp + 1e-6)).max())
    assert float(err.max()) <= 2 * float((eager.double() - ref).abs().max()) + 1e-6
    assert float((out.double() - eager.double()).norm() / ref.norm()) < 2e-3
    # the layer's own entry point takes the kernel for these inputs
    got = layers.norm_rope(x, norm if w is not None else None, rope)
    assert torch.equal(got, out)
