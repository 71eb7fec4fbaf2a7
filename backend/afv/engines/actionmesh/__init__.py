"""Engine `actionmesh`: ActionMesh {3D+video} with the published weights (opt-in; see docs/engine_actionmesh.md)."""

from .engine import ActionMeshEngine, ActionMeshOptions
from .weights import LICENCE, availability, warm_up

__all__ = ["ActionMeshEngine", "ActionMeshOptions", "LICENCE", "availability", "warm_up"]
