"""Speed benchmark: per-stage timings, scaling over frames and vertices, peak memory.

    python benchmarks/bench_speed.py --engines static,rigid --device cuda --out out/speed
(same as `afv bench --speed ...`). Prints one line per measurement; writes speed.json,
speed.md, speed.png, speed_stages.png into --out.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from afv_dev.bench.speed import run_speed  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--engines", default="static")
    p.add_argument("--frames-list", default="16,64,240")
    p.add_argument("--verts-list", default="1000,6000,25000,100000,200000")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="out/speed")
    a = p.parse_args()
    run_speed(a.engines.split(","), [int(x) for x in a.frames_list.split(",")], [int(x) for x in a.verts_list.split(",")], a.device, Path(a.out))
