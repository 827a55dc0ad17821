"""``arvision serve [MODEL ...] --host 127.0.0.1 --port 8000``: a web page and JSON API for generation."""

from __future__ import annotations

import argparse
import sys
import time

from arvision.cli.generate import add_precision_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a web page (and JSON API) to generate images with one or more models",
                       description="Serve a page where a person picks a model, classes and settings and watches the images "
                                   "appear; requests from several clients are queued and batched per model. See docs/serve.md.")  # fmt: skip
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="generator directories or shipped names (default: every shipped generator, see `arvision models`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--device", default="cpu", help="device the models run on (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=64, help="most images one request may ask for (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most images decoded together in one batch, merged from several requests (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64, help="most requests waiting per model; more get 429 (default: %(default)s)")
    add_precision_arg(p)
    p.add_argument("--quiet", action="store_true", help="do not print a line per request")
    p.set_defaults(func=run)


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def run(args: argparse.Namespace) -> int:
    from arvision.serve import GenerationServer, load_pipelines

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    pipelines = load_pipelines(args.models or None, device=args.device)
    try:
        server = GenerationServer(pipelines, host=args.host, port=args.port, max_images=args.max_images, max_batch=args.max_batch,
                                  max_queue=args.max_queue, precision=args.precision, log=(lambda _: None) if args.quiet else _log)  # fmt: skip
    except OSError as e:  # port taken, address not on this machine, no permission
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}): pick another --port (0 = any free one)") from None
    print(f"arvision serve: {len(pipelines)} model(s) ({', '.join(pipelines)}) on {server.url}  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        server.close()
    return 0
