"""Benchmark: accuracy against ground-truth vertex motion on rendered sequences, and speed.

sequences.py (folder format, builders, cache), blender_render.py (launches the bpy subprocess), blender_scene.py (real assets inside bpy),
metrics.py, runner.py, report.py, speed.py, cli.py (`afv bench`).
"""
