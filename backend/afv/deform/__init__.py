"""Dense-motion core: lift sparse landmark tracks to every vertex (paper Sec. 4.2, App. D).

weld -> geodesic distances per island -> landmarks (FPS + curvature boost) ->
temporal smoothing of landmark displacements -> geodesic rigid skinning (weighted Procrustes).
"""

from .weld import Welded, weld
from .surface import Surface, build_surface
from .geodesic import GeodesicSolver, geodesic_from
from .landmarks import sample_landmarks, vertex_curvature
from .smoothing import smooth_landmark_tracks
from .rotation import nearest_rotation
from .skinning import SkinningWeights, build_skinning, skin

__all__ = [
    "Welded", "weld", "Surface", "build_surface", "GeodesicSolver", "geodesic_from",
    "sample_landmarks", "vertex_curvature", "smooth_landmark_tracks", "nearest_rotation",
    "SkinningWeights", "build_skinning", "skin",
]
