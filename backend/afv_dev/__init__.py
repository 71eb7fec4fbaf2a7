"""Development tooling: benchmark, synthetic scenes, the demo sample and the Blender demo driver.

Installed with the repository (`pip install -e .[test]`) but never shipped in the add-on zip;
no product module (afv) imports it. Its `afv` subcommands register through the `afv.commands`
entry-point group.
"""
