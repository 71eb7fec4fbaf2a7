"""Animate from Video backend: animate a given mesh from a video.

The package turns (mesh, video) into per-vertex displacement tracks (T, N, 3) on the
mesh's own topology. See docs/contracts.md for every data format crossing a boundary.
"""

import os

__version__ = "0.1.0"

# Idle OpenMP workers must sleep, not spin: the backend shares the machine with Blender's UI
# (and, in tests, with other processes); spinning made 2-thread torch 10x slower under load.
# Set before torch is imported; a user's explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
