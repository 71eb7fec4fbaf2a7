"""Pieces of the optimising engine (articulated): silhouette energies and robust costs,
first-frame placement (camera/pose search), silhouette targets, CPU thread policy. Engines import
this layer; it imports only the core."""
