"""Animate from Video backend: animate a given mesh from a video.

The package turns (mesh, video) into per-vertex displacement tracks (T, N, 3) on the
mesh's own topology. See docs/contracts.md for every data format crossing a boundary.
"""

__version__ = "0.1.0"
