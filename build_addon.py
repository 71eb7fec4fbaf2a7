#!/usr/bin/env python3
"""Build the installable Blender extension zip and validate it with Blender's own validator.

    python build_addon.py [--out dist/]     -> prints the zip's path

The zip holds blender_addon/ plus a copy of the backend package (backend/afv) under
backend_src/, so the add-on launches a backend of its own version with just an interpreter
that has the dependencies installed. Blender's `blender_ext.py` (shipped with the bpy module or
Blender) builds and validates it, the same code as `blender --command extension build/validate`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent
ADDON = REPO / "blender_addon"
BACKEND = REPO / "backend" / "afv"
REQUIRED = ("__init__.py", "blender_manifest.toml", "backend_client.py")


def find_blender_ext(blender: str | None = None) -> Path:
    """Path of Blender's extension CLI script, from the bpy module or a Blender install."""
    candidates = []
    spec = importlib.util.find_spec("bpy")
    if spec and spec.origin:  # without importing bpy (slow, heavy)
        candidates += sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if blender:
        candidates += sorted(Path(blender).resolve().parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not candidates:
        sys.exit("error: Blender's extension tool was not found; install the bpy module (pip install bpy) "
                 "or pass --blender /path/to/blender")
    return candidates[-1]


def stage(dst: Path) -> None:
    """Copy the add-on and the backend package into `dst` (no caches)."""
    missing = [f for f in REQUIRED if not (ADDON / f).is_file()]
    if missing:
        sys.exit(f"error: blender_addon/ lacks {missing}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.zip", ".pytest_cache")
    shutil.copytree(ADDON, dst, ignore=ignore)
    shutil.copytree(BACKEND, dst / "backend_src" / "afv", ignore=ignore)


def run_tool(tool: Path, *args: str) -> None:
    # The tool is plain Python 3.11+ (tomllib); run it with this interpreter.
    r = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: blender_ext {args[0]} failed:\n{r.stdout}{r.stderr}")


def build(out_dir: str | os.PathLike = REPO / "dist", blender: str | None = None) -> Path:
    """Build and validate; returns the zip path (dist/animate_from_video-<version>.zip)."""
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tool = find_blender_ext(blender)
    with tempfile.TemporaryDirectory(prefix="afv-addon-") as tmp:
        src = Path(tmp) / manifest["id"]
        stage(src)
        tmp_zip = Path(tmp) / out.name
        run_tool(tool, "build", "--source-dir", str(src), "--output-filepath", str(tmp_zip))
        run_tool(tool, "validate", str(tmp_zip))
        os.replace(tmp_zip, out) if tmp_zip.stat().st_dev == out_dir.stat().st_dev else shutil.move(tmp_zip, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "dist"), help="output folder (default: dist/)")
    ap.add_argument("--blender", default=None, help="a Blender executable, when the bpy module is not installed")
    args = ap.parse_args()
    print(build(args.out, args.blender))


if __name__ == "__main__":
    main()
