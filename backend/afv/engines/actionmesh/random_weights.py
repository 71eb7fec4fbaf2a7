"""Random weights with the published key names and shapes, laid out like the published repos.

For tests and timing where the real weights are absent: `write_weights(root, ...)` creates
`root/ActionMesh/{denoiser,autoencoder}`, `root/TripoSG/vae` and `root/dinov2`, each with a
config.json and a safetensors file, which `weights.resolve_all(root)` then finds. Initialisation
follows the fixtures' scheme (2-D weights N(0,1)/sqrt(fan_in), biases 0.1 N(0,1), norm gains
1 + 0.2 N(0,1)) so activations keep a sane scale through deep stacks. Never a substitute for the
real weights: results are meaningless motion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .autoencoder import ActionMeshAutoencoder, AutoencoderConfig
from .denoiser import ActionMeshDenoiser, DenoiserConfig
from .vae import TripoSGVAE, VAEConfig


@dataclass(frozen=True)
class DinoSize:
    hidden_size: int = 1024  # dinov2-large
    num_hidden_layers: int = 24
    num_attention_heads: int = 16


@torch.no_grad()
def init_like_fixtures(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter in named_parameters() order from one seeded generator on its device."""
    params = list(module.named_parameters())
    gen = torch.Generator(device=params[0][1].device).manual_seed(seed)
    for name, p in params:
        r = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
        if p.ndim >= 2:
            p.copy_(r / math.sqrt(math.prod(p.shape[1:])))
        elif name.endswith("bias"):
            p.copy_(0.1 * r)
        else:
            p.copy_(1 + 0.2 * r)
    return module


def _save(module: nn.Module, folder: Path, filename: str, config: dict, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(folder / filename), metadata={"format": "pt"})


def write_weights(root: str | Path, denoiser: DenoiserConfig | None = None, autoencoder: AutoencoderConfig | None = None,
                  vae: VAEConfig | None = None, dino: DinoSize | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Write a full weights folder (published sizes by default) and return its root."""
    from transformers import Dinov2Config, Dinov2Model

    root = Path(root)
    den_cfg = denoiser or DenoiserConfig()
    with torch.device(device):
        m = init_like_fixtures(ActionMeshDenoiser(den_cfg), seed)
    _save(m, root / "ActionMesh" / "denoiser", "model.safetensors", den_cfg.to_dict(), dtype)
    del m
    ae_cfg = autoencoder or AutoencoderConfig()
    with torch.device(device):
        m = init_like_fixtures(ActionMeshAutoencoder(ae_cfg), seed + 1)
    _save(m, root / "ActionMesh" / "autoencoder", "model.safetensors", ae_cfg.to_dict(), dtype)
    del m
    vae_cfg = vae or VAEConfig()
    with torch.device(device):
        m = init_like_fixtures(TripoSGVAE(vae_cfg), seed + 2)
    _save(m, root / "TripoSG" / "vae", "diffusion_pytorch_model.safetensors",
          {"_class_name": "TripoSGVAEModel", **vae_cfg.to_dict()}, dtype)
    del m
    size = dino or DinoSize(hidden_size=den_cfg.cross_attention_dim)
    dcfg = Dinov2Config(hidden_size=size.hidden_size, num_hidden_layers=size.num_hidden_layers,
                        num_attention_heads=size.num_attention_heads, image_size=518, patch_size=14,
                        layerscale_value=1.0, mlp_ratio=4, qkv_bias=True, layer_norm_eps=1e-6)
    with torch.device(device):
        m = init_like_fixtures(Dinov2Model(dcfg), seed + 3)
    m.save_pretrained(str(root / "dinov2"), safe_serialization=True)  # transformers' own layout
    return root
