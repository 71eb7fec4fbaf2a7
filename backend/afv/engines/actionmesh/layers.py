"""Building blocks shared by the denoiser, the temporal autoencoder and the TripoSG VAE.

Module and parameter names follow the published checkpoints (diffusers' Attention/FeedForward
naming: `to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`, `norm_k`, `norm_cross`, `ff.net.0.proj`,
`ff.net.2`) so the real state dicts load strictly.

Head layout (the reference's fused-qkv convention, not the textbook one):
- self-attention: [q | k | v] (width 3W) is viewed as H groups of 3d; head h takes q, k, v as the
  first, second and third d channels of group h;
- cross-attention: the query uses the plain split; [k | v] (2W) is viewed as H groups of 2d.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' and input's dtype (the reference's FP32LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and all(p is None or p.dtype == x.dtype for p in (self.weight, self.bias)):
            # PyTorch's layer_norm kernels compute half inputs in float32 (statistics and affine) and round
            # once at the end: the same function as the float32 path below, in one pass over x instead of three
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension with gains (d,) shared by all heads: x * w / sqrt(mean(x^2) + eps)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d) in x's dtype; the statistics are float32."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for integer-or-float positions.

    positions: (S,) -> cos, sin: (S, d) float32, each angle repeated for its adjacent pair:
    theta_i = pos * 10000^(-2i/d), channels (2i, 2i+1) share theta_i.
    """
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    phases = torch.outer(positions.float(), inv_freq)
    return phases.cos().repeat_interleave(2, dim=1), phases.sin().repeat_interleave(2, dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs. x: (B, H, S, d); cos/sin: (B, S, d) float32 -> (B, H, S, d) in x's dtype."""
    return _rope32(x.float(), cos, sin).to(x.dtype)


def _rope32(xf: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rope on a float32 tensor, returning float32."""
    return xf * cos[:, None] + _rotate_pairs(xf) * sin[:, None]


_FUSED: Any = None  # the Triton kernel's module once imported; False where Triton is not installed


def _fused_kernel() -> Any:
    """norm_rope_cuda (one Triton kernel for CUDA half-precision tensors), or False without Triton."""
    global _FUSED
    if _FUSED is None:
        try:
            from . import norm_rope_cuda  # needs triton, which ships with PyTorch's CUDA builds only
        except ImportError:
            norm_rope_cuda = False
        _FUSED = norm_rope_cuda
    return _FUSED


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d): (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...), the rotary 90-degree turn."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def norm_rope(x: torch.Tensor, norm: "HeadRMSNorm | None", rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Optional per-head RMSNorm then optional rotary encoding, computed in float32, rounded once to x's dtype.

    x: (B, H, S, d); rope: cos/sin (B, S, d) float32 -> (B, H, S, d) in x's dtype, laid out (B, S, H, d) in
    memory (the layout attention kernels read and write fastest, so the output reshape is free).

    With s = 1/rms(x) per head and token, w the gains, R the pair rotation (R(y)_2i = -y_2i+1,
    R(y)_2i+1 = y_2i) and P the pair swap (P(x)_2i = x_2i+1): RoPE(s x w) = s (x (w cos) + P(x) (R(w) sin)).
    The small (B, S, d) factors are formed first, so the full-size tensor is read as x (half precision)
    and passes through float32 only twice: a few passes instead of a dozen (this runs on q and k in
    every attention layer, at 2 x 16 x 2049 x 2048 elements in the denoiser). On CUDA in half precision,
    where Triton is installed, one fused kernel does the same in a single read and write (norm_rope_cuda).
    """
    if norm is None and rope is None:
        return x
    global _FUSED
    fused = _fused_kernel()
    if fused and fused.supported(x) and not (x.requires_grad or (norm is not None and norm.weight.requires_grad)):
        try:
            return fused.norm_rope_cuda(x, norm.weight if norm is not None else None, norm.eps if norm is not None else 0.0, rope)
        except Exception as exc:  # Triton present but unusable here (no compiler, old GPU): same result below
            warnings.warn(f"fused norm/rotary kernel unavailable ({type(exc).__name__}: {exc}); using PyTorch ops")
            _FUSED = False
    B, H, S, d = x.shape
    out = torch.empty(B, S, H, d, dtype=x.dtype, device=x.device).transpose(1, 2)
    w = norm.weight.float() if norm is not None else torch.ones(d, device=x.device)
    if rope is None:
        t = x * w  # float32
    else:
        cos, sin = rope
        t = x * (cos * w)[:, None]
        t.addcmul_(x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2), (sin * _rotate_pairs(w))[:, None])
    if norm is None:
        return out.copy_(t)
    scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_().div_(d).add_(norm.eps).rsqrt_()
    if t.requires_grad:  # autograd cannot record out= (the engine runs under inference_mode; tests may not)
        return (t * scale).to(x.dtype)
    return torch.mul(t, scale, out=out)


class Attention(nn.Module):
    """Multi-head attention with the reference's fused head layout.

    Self-attention when `cross_dim` is None. Optional per-head RMSNorm on q and k (`qk_norm`), an
    optional LayerNorm on the key/value input (`norm_cross`, TripoSG / autoencoder cross blocks) and
    rotary encoding passed at call time (self-attention only).
    """

    def __init__(self, dim: int, heads: int, cross_dim: int | None = None, qk_norm: bool = False,
                 norm_cross: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.is_cross = cross_dim is not None
        kv_dim = cross_dim if cross_dim is not None else dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=True)])
        if qk_norm:
            self.norm_q = HeadRMSNorm(self.head_dim)
            self.norm_k = HeadRMSNorm(self.head_dim)
        else:
            self.norm_q = self.norm_k = None
        self.norm_cross = LayerNorm32(kv_dim) if norm_cross else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, Sq, W); context: (B, Sk, Wc) for cross-attention; rope: cos/sin (B, Sq, d) -> (B, Sq, W)."""
        B, Sq, _ = x.shape
        H, d = self.heads, self.head_dim
        # one matmul for the fused projections (the weights stay separate, as in the checkpoints)
        if self.is_cross:
            assert context is not None
            kv_in = self.norm_cross(context) if self.norm_cross is not None else context
            q = self.to_q(x).view(B, Sq, H, d)
            kv = F.linear(kv_in, torch.cat([self.to_k.weight, self.to_v.weight])).view(B, kv_in.shape[1], H, 2, d)
            k, v = kv.unbind(3)
        else:
            w = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            q, k, v = F.linear(x, w).view(B, Sq, H, 3, d).unbind(3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, d) views
        q = norm_rope(q, self.norm_q, rope)
        k = norm_rope(k, self.norm_k, rope)
        out = attention(q, k, v)  # (B, H, Sq, d)
        return self.to_out[0](out.transpose(1, 2).reshape(B, Sq, H * d))


class GELUProj(nn.Module):
    """Linear then exact (erf) GELU, named `proj` like diffusers' GELU block."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """`net.0.proj` (W -> inner, GELU), `net.1` (dropout slot, no weights), `net.2` (inner -> W)."""

    def __init__(self, dim: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or 4 * dim
        self.net = nn.ModuleList([GELUProj(dim, inner), nn.Identity(), nn.Linear(inner, dim, bias=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def point_embedding(xyz: torch.Tensor, num_freqs: int = 8) -> torch.Tensor:
    """[xyz, sin(xyz 2^k), cos(xyz 2^k)], k = 0..num_freqs-1, coordinate-major (no pi).

    xyz: (..., 3) -> (..., 3 + 6 num_freqs), computed in float32.
    """
    xyz = xyz.float()
    freqs = 2.0 ** torch.arange(num_freqs, dtype=torch.float32, device=xyz.device)
    ang = (xyz[..., None] * freqs).flatten(-2)
    return torch.cat([xyz, ang.sin(), ang.cos()], dim=-1)


def sinusoid(t: torch.Tensor, dim: int, cos_first: bool = False) -> torch.Tensor:
    """Sinusoidal embedding with omega_k = exp(-ln(1e4) k / (dim/2)). t: (...,) -> (..., dim) float32.

    Order [sin | cos] (the denoiser's time token) or [cos | sin] (`cos_first`, the autoencoder's alpha).
    """
    half = dim // 2
    omega = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t.float()[..., None] * omega
    parts = [ang.cos(), ang.sin()] if cos_first else [ang.sin(), ang.cos()]
    return torch.cat(parts, dim=-1)
