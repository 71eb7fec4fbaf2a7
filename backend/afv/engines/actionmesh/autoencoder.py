"""Stage II: the temporal autoencoder, decoding absolute vertex positions for every target time.

The T*N latent tokens (post_quant) plus T copies of an alpha token (source and target normalised
times) go through a self-attention stack with rotary encoding on the frame index; the anchor
mesh's vertices (point embedding + normal) query that memory in one cross-attention block.
Output: positions in [-1, 1], normalised like the anchor mesh ("direct" mode).
Key names and config fields match the published checkpoint (`autoencoder/model.safetensors`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.nn as nn

from .layers import Attention, FeedForward, LayerNorm32, point_embedding, rope_tables, sinusoid


@dataclass(frozen=True)
class AutoencoderConfig:
    width: int = 1024
    num_layers: int = 16
    num_attention_heads: int = 8
    latent_channels: int = 64
    in_channels: int = 3
    in_extra_channels: int = 3
    out_dim: int = 3
    embed_frequency: int = 8
    embed_include_pi: bool = False
    prediction_mode: str = "direct"
    temporal_context_size: int = 16

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoencoderConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        if cfg.prediction_mode != "direct" or cfg.embed_include_pi or cfg.in_channels != 3:
            raise ValueError("only the published autoencoder variant is supported: direct mode, xyz queries, no pi")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SelfBlock(nn.Module):
    def __init__(self, W: int, H: int) -> None:
        super().__init__()
        self.norm_s_attn = LayerNorm32(W, eps=1e-5)
        self.s_attn = Attention(W, H)
        self.norm_ff = LayerNorm32(W, eps=1e-5)
        self.ff = FeedForward(W)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = h + self.s_attn(self.norm_s_attn(h), rope=rope)
        return h + self.ff(self.norm_ff(h))


class CrossBlock(nn.Module):
    def __init__(self, W: int, H: int) -> None:
        super().__init__()
        self.norm_x_attn = LayerNorm32(W, eps=1e-5)
        self.x_attn = Attention(W, H, cross_dim=W, norm_cross=True)
        self.norm_ff = LayerNorm32(W, eps=1e-5)
        self.ff = FeedForward(W)

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = q + self.x_attn(self.norm_x_attn(q), context=memory)
        return q + self.ff(self.norm_ff(q))


class ActionMeshAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AutoencoderConfig()
        W, H = cfg.width, cfg.num_attention_heads
        self.blocks = nn.ModuleList([SelfBlock(W, H) for _ in range(cfg.num_layers)] + [CrossBlock(W, H)])
        self.proj_query = nn.Linear(3 * (2 * cfg.embed_frequency + 1) + cfg.in_extra_channels, W)
        self.norm_out = LayerNorm32(W)
        self.proj_out = nn.Linear(W, cfg.out_dim)
        self.post_quant = nn.Linear(cfg.latent_channels, W)

    def alpha_tokens(self, source_alpha: torch.Tensor, target_alphas: torch.Tensor) -> torch.Tensor:
        """source_alpha: (B,), target_alphas: (B, To) -> (B, To, W): [cos|sin](a_s) ++ [cos|sin](a_t)."""
        half = self.cfg.width // 2
        src = source_alpha[:, None].expand_as(target_alphas)
        return torch.cat([sinusoid(src, half, cos_first=True), sinusoid(target_alphas, half, cos_first=True)], dim=-1)

    def query_embedding(self, query: torch.Tensor) -> torch.Tensor:
        """query: (B, V, 3 + extra) xyz (+ unit normal) -> (B, V, 51 + extra) float32."""
        return torch.cat([point_embedding(query[..., :3], self.cfg.embed_frequency), query[..., 3:].float()], dim=-1)

    def memory(self, latent_tokens: torch.Tensor, alpha: torch.Tensor,
               rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """latent_tokens: (B, T*N, W) post_quant output; alpha: (B, W) one target's token -> (B, T*N+T, W)."""
        T = rope[0].shape[1] - latent_tokens.shape[1]
        h = torch.cat([latent_tokens, alpha[:, None].expand(-1, T, -1).to(latent_tokens.dtype)], dim=1)
        for block in self.blocks[:-1]:
            h = block(h, rope)
        return h

    def decode_queries(self, memory: torch.Tensor, query_embed: torch.Tensor) -> torch.Tensor:
        """Cross block + head in the cross block's dtype. -> raw output (B, V, 3), before the sigmoid."""
        cross = self.blocks[-1]
        dtype = self.proj_query.weight.dtype
        h = cross(self.proj_query(query_embed.to(dtype)), memory.to(dtype))
        return -self.proj_out(self.norm_out(h))

    def forward(self, latents: torch.Tensor, framestep: torch.Tensor, source_alpha: torch.Tensor,
                target_alphas: torch.Tensor, query: torch.Tensor,
                on_target: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Positions of the query vertices at each target time.

        latents: (B, T, N, C); framestep: (B, T); source_alpha: (B,); target_alphas: (B, To);
        query: (B, V, 6) normalised xyz + unit normal -> (B, To, V, 3) in [-1, 1].
        `on_target(i, To)` is called before each target (progress, cancel).
        """
        B, T, N, _ = latents.shape
        To, V = target_alphas.shape[1], query.shape[1]
        dtype = self.post_quant.weight.dtype
        tokens = self.post_quant(latents.to(dtype)).reshape(B, T * N, -1)
        pos = (framestep - framestep.min(dim=1, keepdim=True).values)  # (B, T)
        cos, sin = rope_tables(pos.reshape(-1), self.cfg.width // self.cfg.num_attention_heads)
        cos, sin = cos.reshape(B, T, -1), sin.reshape(B, T, -1)
        rope = (torch.cat([cos.repeat_interleave(N, dim=1), cos], dim=1),
                torch.cat([sin.repeat_interleave(N, dim=1), sin], dim=1))  # (B, T*N+T, d)
        alphas = self.alpha_tokens(source_alpha, target_alphas)
        q_embed = self.query_embedding(query)
        out = torch.empty(B, To, V, self.cfg.out_dim, dtype=torch.float32, device=latents.device)
        for i in range(To):
            if on_target is not None:
                on_target(i, To)
            out[:, i] = self.decode_queries(self.memory(tokens, alphas[:, i], rope), q_embed).float()
        return (2 * torch.sigmoid(out) - 1).clamp(-1.0, 1.0)
