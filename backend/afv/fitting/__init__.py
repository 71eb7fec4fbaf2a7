"""Pieces shared by the optimising engines (fit, articulated): silhouette and track energies,
first-frame placement (camera/pose search), silhouette targets, CPU thread policy. Engines import
this layer; it imports only the core."""
