"""Engine registry: one entry per engine, imported lazily so `afv --help` stays fast.

To add an engine: write a module with an Engine class and an options dataclass, then add
one EngineSpec below. CLI, server and add-on pick it up from here. A removed engine's name can
stay in ALIASES, mapped to the engine that replaced it, so old scripts, saved add-on
preferences and server clients keep working; requests and tracks then carry the real name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from .base import Engine, EngineInput, EngineOutput, parse_options


@dataclass(frozen=True)
class EngineSpec:
    name: str
    summary: str
    module: str  # "afv.engines.<module>"
    engine_class: str
    options_class: str
    needs_camera: bool  # True: fails without a camera; False: estimates one
    needs_weights: bool = False
    first_pose: bool = False  # honours the request's first_pose (poses frame 0); others keep the rest pose and the job warns
    licence: str = "MIT (this project); no third-party weights"
    devices: tuple[str, ...] = ("cpu", "cuda")

    def options_class_(self) -> type:
        return getattr(importlib.import_module(self.module), self.options_class)

    def parse_options(self, options: dict[str, Any] | None = None) -> Any:
        """User-given option values (strings allowed) -> this engine's options dataclass."""
        return parse_options(self.options_class_(), options)

    def create(self, options: Any = None) -> Engine:
        """The engine, from options already parsed (its options dataclass) or a dict to parse."""
        cls = self.options_class_()
        opts = options if isinstance(options, cls) else parse_options(cls, options)
        return getattr(importlib.import_module(self.module), self.engine_class)(opts)

    def availability(self) -> tuple[bool, str]:
        """(usable on this machine, what is missing). Engines with weights say whether they are present."""
        if not self.needs_weights:
            return True, ""
        try:
            return importlib.import_module(self.module).availability()
        except Exception as exc:  # a module that cannot load is unavailable, with the reason
            return False, f"{type(exc).__name__}: {exc}"

    def warm_up(self) -> bool:
        """Import what this engine's first job would import (for a long-lived server, before any job
        arrives), including the module's own `warm_up()` hook if it has one. False when unavailable."""
        if not self.availability()[0]:
            return False
        hook = getattr(importlib.import_module(self.module), "warm_up", None)
        if hook is not None:
            hook()
        return True

    def options_schema(self) -> dict[str, Any]:
        mod = importlib.import_module(self.module)
        return {f.name: f.default for f in dataclasses.fields(getattr(mod, self.options_class))}


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("static", "zero motion (baseline)", "afv.engines.static", "StaticEngine", "StaticOptions", needs_camera=False),
        EngineSpec("rigid", "whole-object 6-DoF motion: flow tracks + robust PnP, refined on colour and outline", "afv.engines.rigid", "RigidEngine", "RigidOptions", needs_camera=True),
        EngineSpec("articulated", "bone rotations + root translation (the mesh's rig or an automatic skeleton) fitted to flow tracks and silhouettes, self-checked", "afv.engines.articulated", "ArticulatedEngine", "ArticulatedOptions", needs_camera=False, first_pose=True),
        EngineSpec("actionmesh", "learned: ActionMesh {3D+video} (temporal 3D diffusion + temporal autoencoder), published weights, GPU", "afv.engines.actionmesh", "ActionMeshEngine", "ActionMeshOptions", needs_camera=False, needs_weights=True, licence="ActionMesh weights: FAIR Noncommercial Research License v1 (non-commercial use only); TripoSG VAE: MIT; DINOv2: Apache-2.0; weights never bundled"),
    )
}

DEFAULT_ENGINE = "articulated"

# old name -> the registered engine that replaced it (never listed as engines of their own)
ALIASES: dict[str, str] = {
    "fit": "articulated",  # the non-rigid deformation-graph engine, removed in round 3
}


def aliases_of(name: str) -> list[str]:
    """The alias names that resolve to engine `name` (sorted)."""
    return sorted(a for a, target in ALIASES.items() if target == name)


def get_engine_spec(name: str) -> EngineSpec:
    """The engine registered as `name`, or the one an alias `name` maps to."""
    spec = ENGINES.get(ALIASES.get(name, name))
    if spec is None:
        raise InputError(f"unknown engine '{name}'", f"available engines: {sorted(ENGINES)}")
    return spec


__all__ = ["ENGINES", "ALIASES", "DEFAULT_ENGINE", "EngineSpec", "aliases_of", "get_engine_spec", "Engine", "EngineInput", "EngineOutput"]
