"""`afv bench`: build/reuse sequences, run engines, write results.json + report.md + plots;
`afv bench --speed`: the speed benchmark (per-stage timings, scaling, peak memory)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AFV_BENCH_CACHE"  # default sequence cache (helpers share /work/bench_cache)


def register(subparsers) -> None:
    b = subparsers.add_parser("bench", help="accuracy benchmark against ground-truth vertex motion (and --speed)")
    b.add_argument("--sequences", nargs="*", help="sequence folders (or folders of them); default: build the --subset")
    b.add_argument("--subset", default="smoke", choices=["smoke", "dev", "full", "real", "real-quick"],
                   help="built-in sequence set (default smoke); real: every clip of every real asset, two views, "
                        "16 frames over the whole clip and 48 at the clip's own rate; real-quick: 8 of them, 16 frames, 3q view")
    b.add_argument("--lengths", help="comma-separated frame counts for the built-in set, e.g. 16,64,240")
    b.add_argument("--size", type=int, help="image side in pixels for the built-in set")
    b.add_argument("--cache", default=os.environ.get(CACHE_ENV, ".bench_cache"),
                   help=f"where built sequences are kept (rebuilt when their recipe changes; default ${CACHE_ENV} or .bench_cache)")
    b.add_argument("--engines", default="static", help="comma-separated engine names (default static)")
    b.add_argument("--camera", default="known", help="known | estimated | known,estimated")
    b.add_argument("--variants", default="frames", help="frames (RGBA) | plain | clutter, comma-separated")
    b.add_argument("--rig", default="none", help="none | given | none,given: strip the asset's own rig from the mesh, or give it "
                   "to the engine (sequences without a rig are skipped for 'given')")
    b.add_argument("--oracle", action="store_true", help="diagnosis: give engines the ground-truth 2D tracks of every vertex "
                   "(EngineInput.oracle_tracks) and the GT masks")
    b.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process and one torch thread each (default 1)")
    b.add_argument("--masks", default="auto", help="mask source for inputs without alpha (see afv animate --masks)")
    b.add_argument("--actionbench", default="fast", choices=["off", "fast", "exact"], help="ActionBench CD metrics: exact = 24 ICP inits, 10k/100k points")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda")
    b.add_argument("--option", "-o", action="append", default=[], help="engine option engine.key=value (repeatable)")
    b.add_argument("--out", default="out/bench", help="output folder (results.json, report.md, plots/)")
    b.add_argument("--report-only", action="store_true", help="re-write report.md from an existing results.json")
    b.add_argument("--speed", action="store_true", help="run the speed benchmark instead (see --frames-list, --verts-list)")
    b.add_argument("--frames-list", default="16,64,240", help="--speed: clip lengths")
    b.add_argument("--verts-list", default="1000,6000,25000,100000,200000", help="--speed: mesh sizes")
    b.set_defaults(func=cmd_bench)


def parse_engine_options(items: list[str]) -> dict:
    """["engine.key=value", ...] -> {engine: {key: value}} (bench --option)."""
    from afv.errors import InputError

    out: dict = {}
    for it in items:
        key, sep, value = it.partition("=")
        eng, dot, k = key.partition(".")
        if not sep or not dot:
            raise InputError(f"bench option '{it}' is not engine.key=value")
        out.setdefault(eng, {})[k] = value
    return out


def _choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    from afv.errors import InputError

    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise InputError(f"{flag} {value!r} is not valid", f"use one or more of {', '.join(allowed)}, comma-separated")
    return items


def cmd_bench(args) -> int:
    from .report import load_results, write_report

    out = Path(args.out)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.speed:
        from .speed import run_speed

        run_speed(engines, [int(x) for x in args.frames_list.split(",")], [int(x) for x in args.verts_list.split(",")], args.device, out)
        return 0
    if args.report_only:
        print(write_report(load_results(out), out))
        return 0
    from afv.engines import get_engine_spec
    from .runner import RunConfig, run
    from .sequences import build, find_sequences, subset_recipes

    for e in engines:
        get_engine_spec(e)  # unknown names fail before any work
    if args.sequences:
        dirs = [d for s in args.sequences for d in find_sequences(s)]
    else:
        lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else None
        dirs = [d for r in subset_recipes(args.subset, lengths, args.size) if (d := build(r, args.cache)) is not None]
    if not dirs:
        from afv.errors import InputError

        raise InputError("no benchmark sequences found", "pass --sequences DIR or a --subset")
    cfg = RunConfig(
        engines=engines,
        cameras=_choices(args.camera, ("known", "estimated"), "--camera"),
        variants=[v.strip() for v in args.variants.split(",")],
        rigs=_choices(args.rig, ("none", "given"), "--rig"),
        oracle=args.oracle,
        jobs=max(1, args.jobs),
        masks=args.masks,
        device=args.device,
        actionbench=args.actionbench,
        options=parse_engine_options(args.option),
    )
    import sys

    doc = run(dirs, cfg, out, command="afv " + " ".join(sys.argv[1:]))
    print(f"bench: wrote {out / 'results.json'} and {write_report(doc, out)}")
    return 0
