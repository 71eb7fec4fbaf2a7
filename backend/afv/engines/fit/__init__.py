"""`fit`: non-rigid template tracking from optical-flow tracks, silhouettes and an
embedded deformation graph (see docs/engine_fit.md)."""

from .engine import FitEngine, FitOptions

__all__ = ["FitEngine", "FitOptions"]
