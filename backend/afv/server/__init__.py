"""`afv serve`: the local HTTP backend the Blender add-on talks to (see docs/server.md).

config.py    ServerConfig / Limits (what the command line sets)
security.py  ASGI middleware: browser-origin refusal, Host check, bearer token, body size
validation.py checks and stores client inputs (mesh, video, masks, camera, params)
jobs.py      job records (persisted JSON) and the single GPU worker thread
app.py       FastAPI routes under /v1
cli.py       the `serve` subcommand: bind, ready line, parent watchdog, signals
"""
