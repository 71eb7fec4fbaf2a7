"""The clips never used: held out for evaluation.

RESERVED_CLIPS are held out: no recipe may name them (afv_dev.bench.sequences lists every clip
of an asset with afv.gltf.list_animations and leaves these out), and the Blender builder
refuses them.
"""

from __future__ import annotations

from pathlib import Path

# (asset file name, clip name): held-out evaluation data, never rendered into any subset
RESERVED_CLIPS = frozenset({("RobotExpressive.glb", "Jump")})


def is_reserved(asset: str | Path, clip: str | None) -> bool:
    """True when (asset file name, clip) is held out for evaluation."""
    return clip is not None and (Path(str(asset)).name, clip) in RESERVED_CLIPS
