"""Shared helpers for the actionmesh tests: the conformance fixtures, read at run time from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "actionmesh"


def fixtures_dir() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.skip(f"ActionMesh conformance fixtures not found at {FIXTURES} (they live beside the repo, never in it)")
    return FIXTURES


def load(name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(fixtures_dir() / name))


def config(name: str) -> dict:
    return json.loads((fixtures_dir() / name / "config.json").read_text())


def max_abs(a, b) -> float:
    import torch

    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def tiny_weights(root: Path) -> Path:
    """A weights folder laid out like the published repos, holding the fixtures' tiny networks
    (denoiser, autoencoder, VAE: the reference's own saves) and a tiny random DINOv2 whose width
    matches the tiny denoiser's context (48)."""
    import shutil

    from afv.engines.actionmesh.random_weights import DinoSize, write_weights
    from afv.engines.actionmesh.denoiser import DenoiserConfig

    fx = fixtures_dir()
    if (root / "dinov2" / "config.json").is_file():
        return root
    write_weights(root, DenoiserConfig.from_dict(config("denoiser_tiny")), dino=DinoSize(48, 2, 2),
                  **_tiny_other_configs())
    for src, dst in (("denoiser_tiny", "ActionMesh/denoiser"), ("autoencoder_tiny", "ActionMesh/autoencoder"),
                     ("triposg_vae_tiny", "TripoSG/vae")):
        for f in (fx / src).iterdir():  # the reference's weights replace the random ones
            shutil.copyfile(f, root / dst / f.name)
    return root


def _tiny_other_configs() -> dict:
    from afv.engines.actionmesh.autoencoder import AutoencoderConfig
    from afv.engines.actionmesh.vae import VAEConfig

    return {"autoencoder": AutoencoderConfig.from_dict(config("autoencoder_tiny")),
            "vae": VAEConfig.from_dict(config("triposg_vae_tiny"))}
