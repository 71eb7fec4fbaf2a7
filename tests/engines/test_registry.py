"""The engine registry (afv.engines): names, the alias of a removed engine, what is listed.

`fit` was removed in round 3; its name stays an alias of `articulated` so old scripts, saved
add-on preferences and server clients keep working. Ground truth: a rendered clip of known
rigid motion (afv_dev.synthetic), run once through the old name and once through the new.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from afv.engines import ALIASES, DEFAULT_ENGINE, ENGINES, get_engine_spec
from afv.errors import InputError
from afv.pipeline import animate
from afv.request import parse_request
from afv.server.app import engines_info
from afv_dev import synthetic

REPO = Path(__file__).resolve().parents[2]
FAST = {"iters": 20, "root_iters": 20, "n_tracks": 200, "n_surface": 400}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    seq = synthetic.rigid_sequence(6, (96, 96), subdivisions=1)
    synthetic.write_png_folder(synthetic.render_sequence(seq, background=(0.25, 0.3, 0.35)), root / "clip")
    return root, seq


def test_every_alias_names_a_registered_engine_and_is_no_engine_itself():
    assert ALIASES["fit"] == "articulated" == DEFAULT_ENGINE
    assert "fit" not in ENGINES and all(target in ENGINES for target in ALIASES.values())
    assert get_engine_spec("fit") is get_engine_spec("articulated")
    with pytest.raises(InputError, match="unknown engine 'fitt'"):
        get_engine_spec("fitt")


def test_old_name_fit_runs_articulated_and_records_the_real_name(clip):
    root, seq = clip
    tracks = {}
    for name in ("fit", "articulated"):
        req = parse_request(mesh=seq.mesh, video=root / "clip", camera=seq.camera.to_json(), masks="alpha",
                            engine=name, options=FAST, device="cpu")
        assert req.engine == "articulated" and type(req.options).__name__ == "ArticulatedOptions"
        tracks[name] = animate(req)
    old, new = tracks["fit"], tracks["articulated"]
    assert old.meta["engine"] == "articulated" and old.meta["options"]["iters"] == FAST["iters"]
    np.testing.assert_array_equal(old.displacements, new.displacements)  # the same engine, same seed
    diag = seq.mesh.bbox_diagonal()
    err = np.linalg.norm(old.displacements - seq.displacements, axis=-1).mean() / diag * 100
    still = np.linalg.norm(seq.displacements, axis=-1).mean() / diag * 100
    # measured 2.72 % vs still 16.30 % (6 frames, 96 px, 20 steps)
    assert err < 0.4 * still, f"articulated via 'fit': {err:.2f}% vs still {still:.2f}%"


def test_options_only_the_removed_engine_had_are_refused_clearly(clip):
    root, seq = clip
    with pytest.raises(InputError) as ei:
        parse_request(mesh=seq.mesh, video=root / "clip", engine="fit", options={"nodes": 64})
    msg = str(ei.value)
    assert "nodes" in msg and "replaced by 'articulated'" in msg and "iters" in msg, msg
    with pytest.raises(InputError) as ei:  # the engine's own name: the plain message
        parse_request(mesh=seq.mesh, video=root / "clip", engine="articulated", options={"nodes": 64})
    assert "nodes" in str(ei.value) and "replaced" not in str(ei.value)


def test_lists_show_engines_only_with_their_old_names():
    info = {e["name"]: e for e in engines_info()}
    assert "fit" not in info and info["articulated"]["aliases"] == ["fit"] and info["rigid"]["aliases"] == []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "afv", "engines"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith(" ")]
    names = [ln.split(" ")[0].rstrip(":") for ln in lines]
    assert "fit" not in names and {"articulated", "rigid", "static"} <= set(names)
    art = next(ln for ln in lines if ln.startswith("articulated"))
    assert "default" in art and "'fit'" in art, art
