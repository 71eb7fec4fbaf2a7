"""Engine `actionmesh`: ActionMesh {3D+video} with the published weights (opt-in; see docs/engine_actionmesh.md)."""
