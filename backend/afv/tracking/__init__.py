"""Trackers: libraries that follow a mesh through a clip, called by engines (no engine calls
another engine). rigid: one rigid motion per mesh (flow + PnP + direct refinement)."""
