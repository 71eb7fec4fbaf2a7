"""Geometric primitives, each written once: import them from their module.

projection   transform_points, project_points       (numpy or torch, batched)
raster       Raster, rasterize, interpolate, visible_vertices
rotation     axis_angle_to_matrix
silhouette   mask_iou, silhouette, downscale_mask, camera_mask_iou
surface      sample_surface, surface_points, vertex_normals
"""
