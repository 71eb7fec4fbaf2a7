"""The add-on offers only engines the backend can run: with no actionmesh weights, the engine list
(from the backend's real /v1/info engine listing) leaves it out and the status line says why."""

from __future__ import annotations

import pytest

import bpy  # noqa: F401  (the test extra installs it)

from addon_support import install_addon, module


@pytest.fixture()
def runtime(tmp_path):
    install_addon(tmp_path / "dist")
    rt = module("runtime")
    yield rt
    rt.STATE.info = {}


def test_engine_list_hides_unavailable_actionmesh(runtime, tmp_path, monkeypatch):
    from afv.server.app import engines_info

    monkeypatch.delenv("AFV_ACTIONMESH_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    runtime.STATE.info = {"version": "x", "device": "cpu", "engines": engines_info()}
    assert "actionmesh" not in runtime.known_engines()
    assert {"articulated", "rigid", "static"} <= set(runtime.known_engines())
    assert "fit" not in runtime.known_engines()  # an old name the backend still accepts, never offered
    line = runtime.status_line(runtime.STATE.info)
    assert "not available here: actionmesh" in line and "afv weights status" in line


def test_engine_list_offers_actionmesh_when_weights_are_present(runtime, tmp_path, monkeypatch):
    from actionmesh_support import tiny_weights
    from afv.server.app import engines_info

    monkeypatch.setenv("AFV_ACTIONMESH_WEIGHTS", str(tiny_weights(tmp_path / "w")))
    runtime.STATE.info = {"version": "x", "device": "cpu", "engines": engines_info()}
    assert "actionmesh" in runtime.known_engines()
    assert "not available" not in runtime.status_line(runtime.STATE.info)
