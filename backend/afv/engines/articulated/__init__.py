"""`articulated`: bone rotations + root translation fitted to flow tracks and silhouettes."""

from .engine import ArticulatedEngine, ArticulatedOptions

__all__ = ["ArticulatedEngine", "ArticulatedOptions"]
