"""Run `afv` (any subcommand) with a counter on every function that parses a request field.

Each call appends the parser's name to the file named by AFV_PARSE_LOG. Used by
tests/test_request.py to show that camera, frame range, masks, engine options and up axis
are parsed exactly once per request, under the real CLI and the real server process.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

import afv.camera
import afv.cli
import afv.engines.base
import afv.mesh
import afv.pipeline
import afv.request
import afv.server.app
import afv.server.cli
import afv.server.validation
from afv.masks import MaskSource
from afv.video import FrameRange

LOG = os.environ["AFV_PARSE_LOG"]
_lock = threading.Lock()


def _counted(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _lock, open(LOG, "a") as fh:
            fh.write(name + "\n")
        return fn(*args, **kwargs)

    return wrapper


# module functions: replace every binding of the original in every loaded afv module
for name, module, attr in (("camera", afv.camera, "camera_from_dict"), ("options", afv.engines.base, "parse_options"),
                           ("up_axis", afv.mesh, "parse_up_axis")):
    original = getattr(module, attr)
    wrapped = _counted(name, original)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("afv") and getattr(mod, attr, None) is original:
            setattr(mod, attr, wrapped)
# parsers that are static methods of the typed values
FrameRange.parse = staticmethod(_counted("frames", FrameRange.__dict__["parse"].__func__))
MaskSource.parse = staticmethod(_counted("masks", MaskSource.__dict__["parse"].__func__))

if __name__ == "__main__":
    sys.exit(afv.cli.main(sys.argv[1:]))
