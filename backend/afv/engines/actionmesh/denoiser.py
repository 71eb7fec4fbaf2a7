"""Stage I: the temporal 3D denoiser (flow-matching transformer over T frames of N latent tokens).

Per frame: proj_in on the N latent tokens, a time token prepended at index 0, then L blocks of
[self-attention (inflated: all T frames of a sample in one sequence) -> cross-attention to that
frame's image tokens -> FFN], U-Net-style skips (blocks i < L//2 push, i > L//2 pop), LayerNorm,
drop the time token, proj_out. Rotary encoding on the frame index (framestep - min over the window).
Key names and config fields match the published checkpoint (`denoiser/model.safetensors`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Attention, FeedForward, LayerNorm32, rope_tables, sinusoid


@dataclass(frozen=True)
class DenoiserConfig:
    width: int = 2048
    num_layers: int = 21
    num_attention_heads: int = 16
    in_channels: int = 64
    cross_attention_dim: int = 1024
    mlp_ratio: float = 4.0
    inflated_layers: tuple[int, ...] = field(default_factory=lambda: tuple(range(21)))
    num_tokens_nominal: int = 2048  # latent tokens per frame (N); no weights depend on it
    temporal_context_size: int = 16  # frames the model was trained on (window length)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DenoiserConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "inflated_layers" in kw:
            kw["inflated_layers"] = tuple(int(i) for i in kw["inflated_layers"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inflated_layers"] = list(self.inflated_layers)
        return d


class TimeProj(nn.Module):
    """linear_1 (W -> 4W) -> exact GELU -> linear_2 (4W -> W)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(width, 4 * width)
        self.linear_2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


class DenoiserBlock(nn.Module):
    def __init__(self, cfg: DenoiserConfig, layer: int) -> None:
        super().__init__()
        W, H = cfg.width, cfg.num_attention_heads
        self.inflated = layer in cfg.inflated_layers
        self.has_skip = layer > cfg.num_layers // 2
        self.norm_s_attn = LayerNorm32(W, eps=1e-5)
        self.s_attn = Attention(W, H, qk_norm=True)
        self.norm_x_attn = LayerNorm32(W, eps=1e-5)
        self.x_attn = Attention(W, H, cross_dim=cfg.cross_attention_dim, qk_norm=True)
        self.norm_ff = LayerNorm32(W, eps=1e-5)
        self.ff = FeedForward(W, int(W * cfg.mlp_ratio))
        if self.has_skip:
            self.norm_skip = LayerNorm32(W, eps=1e-5)
            self.linear_skip = nn.Linear(2 * W, W)

    def forward(self, h: torch.Tensor, context: torch.Tensor, n_frames: int, rope: tuple[torch.Tensor, torch.Tensor],
                rope_seq: tuple[torch.Tensor, torch.Tensor], skip: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B*T, N+1, W); context: (B*T, S, Wc); rope cos/sin per frame (B*T, N+1, d) and for the
        inflated sequence (B, T*(N+1), d) -> (B*T, N+1, W)."""
        if self.has_skip:
            h = self.norm_skip(self.linear_skip(torch.cat([skip, h], dim=-1)))
        x = self.norm_s_attn(h)
        if self.inflated:  # all frames of a sample form one sequence, frame by frame
            BT, S, W = x.shape
            a = self.s_attn(x.reshape(BT // n_frames, n_frames * S, W), rope=rope_seq).reshape(BT, S, W)
        else:
            a = self.s_attn(x, rope=rope)
        h = h + a
        h = h + self.x_attn(self.norm_x_attn(h), context=context)
        return h + self.ff(self.norm_ff(h))


class ActionMeshDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DenoiserConfig()
        W = cfg.width
        self.time_proj = TimeProj(W)
        self.proj_in = nn.Linear(cfg.in_channels, W)
        self.blocks = nn.ModuleList([DenoiserBlock(cfg, i) for i in range(cfg.num_layers)])
        self.norm_out = LayerNorm32(W, eps=1e-5)
        self.proj_out = nn.Linear(W, cfg.in_channels)

    def time_token(self, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """t: (B,) flow time on 0..1000; mask: (B, T), 1 = known frame -> (B*T, W): tau = t (1 - mask)."""
        tau = (t[:, None].float() * (1.0 - mask.float())).reshape(-1)
        emb = sinusoid(tau, self.cfg.width).to(self.proj_in.weight.dtype)
        return self.time_proj(emb)

    def rope(self, framestep: torch.Tensor, tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        """framestep: (B, T) -> cos/sin (B*T, tokens_per_frame, d) float32, position = framestep - min."""
        pos = (framestep - framestep.min(dim=1, keepdim=True).values).reshape(-1)
        cos, sin = rope_tables(pos, self.cfg.width // self.cfg.num_attention_heads)
        return (cos[:, None].expand(-1, tokens_per_frame, -1), sin[:, None].expand(-1, tokens_per_frame, -1))

    def forward(self, latents: torch.Tensor, context: torch.Tensor, framestep: torch.Tensor,
                t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Velocity for every frame.

        latents: (B, T, N, C); context: (B, T, S, Wc) image tokens; framestep: (B, T) frame indices;
        t: (B,) or () flow time on the 0..1000 scale; mask: (B, T), 1 = known (anchor) frame -> (B, T, N, C).
        """
        B, T, N, C = latents.shape
        dtype = self.proj_in.weight.dtype
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t.reshape(B)
        h = self.proj_in(latents.reshape(B * T, N, C).to(dtype))
        h = torch.cat([self.time_token(t, mask)[:, None], h], dim=1)  # (B*T, N+1, W)
        rope = self.rope(framestep, N + 1)
        rope_seq = tuple(r.reshape(B, T * (N + 1), -1) for r in rope)  # built once, not per layer
        ctx = context.reshape(B * T, *context.shape[2:]).to(dtype)
        L = self.cfg.num_layers
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            h = block(h, ctx, T, rope, rope_seq, skip=skips.pop() if i > L // 2 else None)
            if i < L // 2:
                skips.append(h)
        h = self.proj_out(self.norm_out(h)[:, 1:])
        return h.reshape(B, T, N, C)
