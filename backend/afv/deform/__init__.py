"""Mesh structure and articulated motion: welding and islands (weld, surface), forward
kinematics and linear blend skinning of a rig (kinematics), the automatic skeleton (skeleton)."""

from .weld import Welded, weld
from .surface import Surface, build_surface

__all__ = ["Welded", "weld", "Surface", "build_surface"]
