"""Benchmark: accuracy against ground-truth vertex motion on rendered sequences, and speed.

sequences.py (folder format, builders, cache), blender_render.py (real assets through bpy),
metrics.py, runner.py, report.py, speed.py, cli.py (`afv bench`).
"""
