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
