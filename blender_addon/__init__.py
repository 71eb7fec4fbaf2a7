"""Animate from Video: a Blender extension that animates the active mesh from a video.

The heavy lifting happens in a separate backend process (torch); this add-on only uses
Blender, numpy and the standard library.
"""

from __future__ import annotations

from . import operators, panel, preferences, properties, runtime

_MODULES = (preferences, properties, operators, panel)


def register():
    for m in _MODULES:
        m.register()


def unregister():
    runtime.shutdown()
    for m in reversed(_MODULES):
        m.unregister()
