"""The layers of the house (docs/architecture.md) hold: import-linter contracts (pyproject.toml),
the add-on apart from the backend, and no function-level project imports beyond the listed ones."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Function-level imports of project modules in the product, each with its reason. Anything else
# must be a top-level import: the graph has no cycles to dodge (contract above).
LAZY_PROJECT_IMPORTS = {
    # entry point: a subcommand's modules load only when that subcommand runs
    ("afv/cli.py", "cmd_animate", ".pipeline"),
    ("afv/cli.py", "cmd_animate", ".preview"),
    ("afv/cli.py", "cmd_animate", ".request"),
    # `afv weights` loads the learned engine's modules (torch, transformers) only when it runs
    ("afv/cli.py", "cmd_weights", ".engines.actionmesh"),
    ("afv/cli.py", "cmd_weights", ".engines.actionmesh.vae"),
    ("afv/cli.py", "cmd_weights", ".engines.actionmesh.autoencoder"),
    ("afv/cli.py", "cmd_weights", ".engines.actionmesh.denoiser"),
    ("afv/cli.py", "cmd_engines", ".engines"),
    ("afv/cli.py", "cmd_masks", ".masks"),
    ("afv/cli.py", "cmd_masks", ".video"),
    ("afv/cli.py", "cmd_masks", ".segment"),
    ("afv/cli.py", "build_parser", ".segment"),  # the --model-every default (cv2, no torch)
    ("afv/cli.py", "_extra_commands", ".server.cli"),
    ("afv/server/cli.py", "cmd_serve", ".app"),
    ("afv/server/cli.py", "cmd_serve", ".connections"),  # uvicorn's protocol classes load only to serve
    # the server answers /health before torch and the engines are loaded (the worker's warm-up loads them)
    ("afv/server/app.py", "engines_info", "..engines"),
    ("afv/server/app.py", "run", "..pipeline"),
    ("afv/server/app.py", "warm_up_engines", "..engines"),
    ("afv/server/app.py", "warm_up_engines", "..pipeline"),
    ("afv/server/config.py", "request_limits", "..request"),  # the request module imports the engine registry (torch)
    # actionmesh's fused norm + rotary kernel needs triton, which only PyTorch's CUDA builds bring
    ("afv/engines/actionmesh/layers.py", "_fused_kernel", "."),
}


def _imports(path: Path):
    """(function name or None, imported module, ast node) for every import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            fn, p = None, parents.get(node)
            while p is not None:
                if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    fn = p.name
                    break
                p = parents.get(p)
            names = ["." * node.level + (node.module or "")] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                yield fn, name, node


def test_import_contracts_hold():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), os.environ.get("PYTHONPATH", "")])}
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "5 kept" in r.stdout, r.stdout


def test_addon_never_imports_the_backend_or_torch():
    bad = []
    for path in sorted((REPO / "blender_addon").rglob("*.py")):
        for fn, name, node in _imports(path):
            if name.split(".")[0] in ("afv", "afv_dev", "torch", "backend"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not bad, bad
    assert len(list((REPO / "blender_addon").rglob("*.py"))) > 5  # the scan saw the add-on


def test_function_level_project_imports_are_only_the_listed_lazy_ones():
    found = set()
    for path in sorted((REPO / "backend" / "afv").rglob("*.py")):
        rel = str(path.relative_to(REPO / "backend"))
        for fn, name, _ in _imports(path):
            if fn is not None and (name.startswith(".") or name.split(".")[0] in ("afv", "afv_dev")):
                found.add((rel, fn, name))
    assert found <= LAZY_PROJECT_IMPORTS, sorted(found - LAZY_PROJECT_IMPORTS)
