"""The TripoSG shape VAE: its encoder turns a surface point cloud into the anchor latent (M, C).

Encoder: embedded sampled points (queries) cross-attend to all embedded surface points, then
self-attention blocks, LayerNorm, `quant` to mean and log-variance. The decoder (occupancy logits
at query points) is kept for conformance checks; the engine uses the encoder only.
Key names match diffusers' layout of `VAST-AI/TripoSG` (`vae/diffusion_pytorch_model.safetensors`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .layers import Attention, FeedForward, LayerNorm32, point_embedding


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    latent_channels: int = 64
    num_attention_heads: int = 8
    width_encoder: int = 512
    width_decoder: int = 1024
    num_layers_encoder: int = 8
    num_layers_decoder: int = 16
    embedding_type: str = "frequency"
    embed_frequency: int = 8
    embed_include_pi: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VAEConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        if cfg.embedding_type != "frequency" or cfg.embed_include_pi or cfg.in_channels != 3:
            raise ValueError("only the published TripoSG VAE variant is supported: frequency embedding, no pi, xyz")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiTSelfBlock(nn.Module):
    def __init__(self, W: int, H: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(W, eps=1e-5)
        self.attn1 = Attention(W, H)
        self.norm3 = LayerNorm32(W, eps=1e-5)
        self.ff = FeedForward(W)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn1(self.norm1(h))
        return h + self.ff(self.norm3(h))


class DiTCrossBlock(nn.Module):
    def __init__(self, W: int, H: int) -> None:
        super().__init__()
        self.norm2 = LayerNorm32(W, eps=1e-5)
        self.attn2 = Attention(W, H, cross_dim=W, norm_cross=True)
        self.norm3 = LayerNorm32(W, eps=1e-5)
        self.ff = FeedForward(W)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = h + self.attn2(self.norm2(h), context=context)
        return h + self.ff(self.norm3(h))


class TripoSGEncoder(nn.Module):
    def __init__(self, in_dim: int, W: int, H: int, layers: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_dim, W)
        self.blocks = nn.ModuleList([DiTCrossBlock(W, H)] + [DiTSelfBlock(W, H) for _ in range(layers)])
        self.norm_out = LayerNorm32(W)

    def forward(self, queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """queries: (B, M, D), points: (B, P, D), both embedded -> (B, M, W)."""
        h = self.proj_in(queries)
        ctx = self.proj_in(points)
        h = self.blocks[0](h, ctx)
        for block in self.blocks[1:]:
            h = block(h)
        return self.norm_out(h)


class TripoSGDecoder(nn.Module):
    def __init__(self, in_dim: int, W: int, H: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([DiTSelfBlock(W, H) for _ in range(layers)] + [DiTCrossBlock(W, H)])
        self.proj_query = nn.Linear(in_dim, W)
        self.norm_out = LayerNorm32(W)
        self.proj_out = nn.Linear(W, 1)

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """tokens: (B, M, W) post_quant output; queries: (B, Q, 51) embedded -> logits (B, Q, 1)."""
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        h = self.blocks[-1](self.proj_query(queries), tokens)
        return -self.proj_out(self.norm_out(h))


@dataclass
class Posterior:
    mean: torch.Tensor  # (B, M, C)
    logvar: torch.Tensor  # (B, M, C), clamped to [-30, 20]

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise.to(self.mean)


def farthest_point_sampling(xyz: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """Plain FPS: xyz (P, 3) -> (n,) int64 indices; first pick `start`, ties take the first argmax."""
    P = xyz.shape[0]
    idx = torch.empty(n, dtype=torch.long, device=xyz.device)
    dist = torch.full((P,), float("inf"), dtype=torch.float32, device=xyz.device)
    cur = torch.tensor(start, device=xyz.device)
    pts = xyz.float()
    for i in range(n):
        idx[i] = cur
        dist = torch.minimum(dist, (pts - pts[cur]).pow(2).sum(-1))
        cur = torch.argmax(dist)
    return idx


class TripoSGVAE(nn.Module):
    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VAEConfig()
        emb = 3 * (2 * cfg.embed_frequency + 1)
        H = cfg.num_attention_heads
        self.encoder = TripoSGEncoder(emb + 3, cfg.width_encoder, H, cfg.num_layers_encoder)
        self.decoder = TripoSGDecoder(emb, cfg.width_decoder, H, cfg.num_layers_decoder)
        self.quant = nn.Linear(cfg.width_encoder, 2 * cfg.latent_channels)
        self.post_quant = nn.Linear(cfg.latent_channels, cfg.width_decoder)

    def embed(self, surface: torch.Tensor) -> torch.Tensor:
        """surface: (..., 6) xyz + normal -> (..., 54) [point embedding | normal] in float32."""
        return torch.cat([point_embedding(surface[..., :3], self.cfg.embed_frequency), surface[..., 3:].float()], -1)

    def encode(self, surface: torch.Tensor, sampled: torch.Tensor) -> Posterior:
        """surface: (B, P, 6) all points (keys/values); sampled: (B, M, 6) the query points -> posterior (B, M, C)."""
        dtype = self.quant.weight.dtype
        h = self.encoder(self.embed(sampled).to(dtype), self.embed(surface).to(dtype))
        params = self.quant(h).float()
        C = self.cfg.latent_channels
        return Posterior(params[..., :C], params[..., C:].clamp(-30.0, 20.0))

    def decode(self, latent: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """latent: (B, M, C); points: (B, Q, 3) -> occupancy logits (B, Q, 1)."""
        dtype = self.post_quant.weight.dtype
        q = point_embedding(points, self.cfg.embed_frequency).to(dtype)
        return self.decoder(self.post_quant(latent.to(dtype)), q).float()


def sample_query_points(surface: torch.Tensor, num_tokens: int, rng: np.random.Generator) -> torch.Tensor:
    """The reference's two-stage choice of encoder queries: 4M random points, then M by FPS.

    surface: (P, 6) -> (M, 6). With replacement only when P < 4M; FPS starts at a random point of
    the subsample (the reference's start is random too), drawn from `rng`.
    """
    P = surface.shape[0]
    sub = rng.choice(P, 4 * num_tokens, replace=4 * num_tokens > P)
    pts = surface[torch.as_tensor(sub, device=surface.device)]
    start = int(rng.integers(pts.shape[0]))
    return pts[farthest_point_sampling(pts[:, :3], num_tokens, start)]
