"""Mesh structure and motion models: welding and islands (weld, surface), forward kinematics and
linear blend skinning of a rig (kinematics), the automatic skeleton (skeleton), and geodesic
landmark weights (geodesic, landmarks, skinning: paper App. D), the nodes of the articulated
engine's non-rigid residual."""

from .weld import Welded, weld
from .surface import Surface, build_surface

__all__ = ["Welded", "weld", "Surface", "build_surface"]
