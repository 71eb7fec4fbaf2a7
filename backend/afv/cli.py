"""`afv` command line: animate, and the subcommands later modules register.

Exit codes: 0 ok, 2 bad input (message + hint on stderr), 3 engine failure, 130 cancelled.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .errors import AfvError, Cancelled, InputError
from .progress import CancelToken, Progress, ProgressEvent


class StderrBar:
    """A one-line progress bar on stderr (redrawn at most 10 times a second)."""

    def __init__(self, enabled: bool = True, width: int = 30) -> None:
        self.enabled = enabled and sys.stderr is not None
        self.width = width
        self._last = 0.0

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and ev.stage != "done"):
            return
        self._last = now
        filled = int(self.width * ev.fraction)
        eta = f" eta {ev.eta_s:5.1f}s" if ev.eta_s is not None and ev.stage != "done" else ""
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {100 * ev.fraction:5.1f}% {ev.stage:<12} {ev.elapsed_s:6.1f}s{eta}   "
        sys.stderr.write(line + ("\n" if ev.stage == "done" else ""))
        sys.stderr.flush()


def parse_kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"engine option '{item}' is not key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_animate(args: argparse.Namespace) -> int:
    from .pipeline import animate_to_file
    from .request import check_request, parse_request, probe_inputs

    req = parse_request(
        mesh=args.mesh,
        video=args.video,
        masks=args.masks,
        camera=args.camera,
        frames=args.frames,
        engine=args.engine,
        device=args.device,
        max_size=args.max_size,
        fps=args.fps,
        options=parse_kv(args.option),
        seed=args.seed,
        up_axis=args.up_axis,
        first_pose=args.first_pose,
    )
    probe = probe_inputs(req)
    check_request(req, probe)  # bad input is refused before any heavy work
    token = CancelToken()
    # Ctrl-C sets the token; the engine stops at its next step and nothing is written.
    signal.signal(signal.SIGINT, lambda *_: token.cancel())
    progress = Progress(on_event=StderrBar(not args.quiet), cancel=token)
    tracks = animate_to_file(req, args.out, progress, probe)
    if args.preview:
        from .preview import save_contact_sheet

        save_contact_sheet(req, tracks, args.preview)
    if args.json:
        summary = {
            "out": str(Path(args.out).resolve()),
            "engine": tracks.meta["engine"],
            "frames": tracks.n_frames,
            "vertices": tracks.n_vertices,
            "fps": tracks.fps,
            "max_displacement": float(abs(tracks.displacements).max()),
            "timings_s": tracks.meta["timings_s"],
        }
        if args.preview:
            summary["preview"] = str(Path(args.preview).resolve())
        print(json.dumps(summary))
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    """Write the masks `afv animate` would use, one 0/255 PNG per frame, for inspection and editing."""
    from .masks import frame_names, resolve_masks, write_mask_folder
    from .segment import SegmentOptions
    from .video import list_images, load_video

    token = CancelToken()
    signal.signal(signal.SIGINT, lambda *_: token.cancel())
    progress = Progress({"decode": 0.1, "masks": 0.9}, on_event=StderrBar(not args.quiet), cancel=token)
    video = Path(args.video)
    progress.start("decode")
    clip = load_video(video, args.frames, max_size=args.max_size, on_frame=lambda i, n: progress.update(i / max(n, i)))
    progress.start("masks")
    n_source = len(list_images(video)) if video.is_dir() else None
    res = resolve_masks(args.method, clip, n_source_frames=n_source, progress=progress,
                        segment_options=SegmentOptions(model_every=args.model_every))
    if res.masks is None:
        raise InputError(f"no masks: method '{args.method}' gave none", "; ".join(res.notes) or "try another --method")
    out = write_mask_folder(res.masks, frame_names(video, clip), args.out, size=clip.source_size, overwrite=args.overwrite)
    progress.finish()
    summary = {"out": str(out.resolve()), "method": res.method, "frames": clip.n_frames,
               "size": list(clip.source_size), "empty_frames": res.empty_frames, "notes": res.notes}
    print(json.dumps(summary) if args.json else "\n".join([f"{clip.n_frames} masks ({res.method}) -> {out}", *res.notes]))
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from .engines import DEFAULT_ENGINE, ENGINES, aliases_of

    for name, spec in ENGINES.items():
        notes = ["default"] * (name == DEFAULT_ENGINE) + [f"old name {a!r} runs it" for a in aliases_of(name)]
        flag = f" ({'; '.join(notes)})" if notes else ""
        print(f"{name}{flag}: {spec.summary}; options {spec.options_schema()}")
        if spec.needs_weights:
            ok, why = spec.availability()
            print(f"  licence: {spec.licence}")
            print(f"  weights: {'present: ' + why if ok else 'NOT AVAILABLE: ' + why}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """`afv weights status|fetch|verify` for the learned engine's published weights."""
    from .engines.actionmesh import weights as W

    root = args.dir or None
    if args.action == "fetch":
        got = W.fetch()
        for name, folder in got.items():
            print(f"{name}: {folder}")
        print(f"licence: {W.LICENCE}")
        return 0
    if args.action == "status":
        report = {}
        for name, comp in W.COMPONENTS.items():
            r = W.resolve_component(name, root)
            report[name] = {"repo": comp.repo_id, "present": r is not None,
                            "folder": str(r.folder) if r else None, "source": r.source if r else None}
        if args.json:
            print(json.dumps({"components": report, "licence": W.LICENCE}))
        else:
            for name, r in report.items():
                print(f"{name:12s} {r['repo']:24s} " + (f"present ({r['source']}): {r['folder']}" if r["present"] else "missing"))
            print(f"licence: {W.LICENCE}")
        return 0 if all(r["present"] for r in report.values()) else 1
    # verify: every checkpoint's header against the network its config builds (no tensor is read),
    # DINOv2 through transformers' loader
    from .engines.actionmesh.autoencoder import ActionMeshAutoencoder, AutoencoderConfig
    from .engines.actionmesh.denoiser import ActionMeshDenoiser, DenoiserConfig
    from .engines.actionmesh.vae import TripoSGVAE, VAEConfig

    found = W.resolve_all(root)
    builders = {
        "denoiser": lambda c: (lambda: ActionMeshDenoiser(DenoiserConfig.from_dict(c))),
        "autoencoder": lambda c: (lambda: ActionMeshAutoencoder(AutoencoderConfig.from_dict(c))),
        "vae": lambda c: (lambda: TripoSGVAE(VAEConfig.from_dict(c))),
    }
    for name, res in found.items():
        if name == "dinov2":
            W.load_dinov2(res.folder)
        else:
            W.check_header(res.weights_path, W.expected_shapes(builders[name](res.config())))
        print(f"{name}: ok ({res.weights_path})")
    return 0


# Subcommands defined here. Parsing one of them skips importing the others' modules (the server,
# the dev tools, torch through the engine registry): `afv masks` starts in ~0.4 s instead of ~3 s.
CORE_COMMANDS = ("animate", "masks", "engines", "weights")


def build_parser(extra: bool = True) -> argparse.ArgumentParser:
    """The `afv` parser; extra: also the subcommands living in other modules (_extra_commands)."""
    from .segment import SegmentOptions

    p = argparse.ArgumentParser(prog="afv", description="Animate a mesh from a video.")
    p.add_argument("--version", action="version", version=f"afv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("animate", help="compute per-vertex displacement tracks for a mesh from a video")
    a.add_argument("--mesh", required=True, help="mesh .npz (vertices, faces) or any file trimesh reads")
    a.add_argument("--video", required=True, help="video file (mp4/mov/avi/mkv) or a folder of images")
    a.add_argument("--masks", default="auto", help="auto | none | alpha | chroma | median | PATH (folder or mask video)")
    a.add_argument("--camera", help="camera JSON (image_size, K, mesh_to_camera; OpenCV convention)")
    a.add_argument("--frames", help="frame selection start:end:step (end exclusive)")
    a.add_argument("--engine", help="engine name (default: the one `afv engines` marks default)")
    a.add_argument("--device", default="auto", help="auto | cpu | cuda")
    a.add_argument("--max-size", type=int, default=512, help="working resolution: long side in pixels")
    a.add_argument("--fps", type=float, help="frame rate (overrides the container's; image folders default to 24)")
    a.add_argument("--option", "-o", action="append", help="engine option key=value (repeatable)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--up-axis", help="the mesh's up direction: +x -x +y -y +z -z or 'x,y,z' (mesh coordinates)")
    a.add_argument("--first-pose", action="store_true",
                   help="pose the mesh to the video's first frame (retargeting): frame 0 then carries the rest-to-first-pose displacement")
    a.add_argument("--out", required=True, help="output tracks .npz")
    a.add_argument("--preview", help="also write a contact-sheet PNG of the animated mesh over the video")
    a.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_animate)

    m = sub.add_parser("masks", help="write the object masks a clip would get, one 0/255 PNG per frame")
    m.add_argument("--video", required=True, help="video file or a folder of images")
    m.add_argument("--out", required=True, help="output folder (created; written atomically)")
    m.add_argument("--method", default="auto", help="auto | alpha | chroma | median | saliency | PATH (see docs/masks.md)")
    m.add_argument("--frames", help="frame selection start:end:step (end exclusive)")
    m.add_argument("--max-size", type=int, default=1280, help="working resolution (long side); masks are written at the video's size")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    m.add_argument("--model-every", type=int, default=SegmentOptions.model_every, metavar="K",
                   help="saliency: run the network on every K-th frame only, carried along the flow between "
                        f"(default {SegmentOptions.model_every}; 1 = every frame, slower)")
    m.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_masks)

    e = sub.add_parser("engines", help="list the registered engines and their options")
    e.set_defaults(func=cmd_engines)

    w = sub.add_parser("weights", help="the learned engine's published weights: status, fetch, verify")
    w.add_argument("action", choices=("status", "fetch", "verify"))
    w.add_argument("--dir", help="local weights folder (default $AFV_ACTIONMESH_WEIGHTS, then the Hugging Face cache)")
    w.add_argument("--json", action="store_true", help="status as JSON")
    w.set_defaults(func=cmd_weights)

    if extra:
        for register in _extra_commands():
            register(sub)
    return p


def _extra_commands():
    """Subcommands living in their own modules, imported lazily: the server (product) and, through
    the `afv.commands` entry-point group, development tools (sample, demo, bench from afv_dev),
    which the product never imports and the add-on zip does not carry."""
    from importlib.metadata import entry_points

    from .server.cli import register as register_serve

    yield register_serve
    for ep in sorted(entry_points(group="afv.commands"), key=lambda e: e.name):
        try:
            yield ep.load()
        except ModuleNotFoundError as exc:
            if (exc.name or "").startswith("afv_dev"):
                continue  # declared by the install but absent from this copy (the add-on's bundled backend)
            raise


def main(argv: list[str] | None = None) -> int:
    own = argv is None
    words = sys.argv[1:] if own else list(argv)
    command = next((a for a in words if not a.startswith("-")), None)  # the top level has options only before it
    args = build_parser(extra=command not in CORE_COMMANDS).parse_args(words)
    try:
        return _run_command(args)
    finally:
        if own:  # the process's own command: what it made dies with the process, so Python's
            gc.freeze()  # shutdown need not collect it (with torch and transformers loaded that took 1.5 s)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except Cancelled:
        print("\nafv: cancelled; nothing was written", file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"\nafv: error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    except AfvError as exc:
        print(f"\nafv: failed: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
