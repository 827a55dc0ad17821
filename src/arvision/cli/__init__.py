"""``arvision`` command line: thin wrappers over the Python API, one module per command."""

from __future__ import annotations

import argparse
import os
import sys

from arvision import __version__
from arvision.errors import ArvisionError


def build_parser() -> argparse.ArgumentParser:
    from arvision.cli import bench, convert, demo, edit, eval, generate, models, reconstruct, serve, train, tune

    parser = argparse.ArgumentParser(
        prog="arvision",
        description="Autoregressive visual generation: tokenizers, generation orders, samplers.",
        epilog="Run `arvision COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"arvision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench.register(sub)
    convert.register(sub)
    demo.register(sub)
    edit.register(sub)
    eval.register(sub)
    generate.register(sub)
    models.register(sub)
    reconstruct.register(sub)
    serve.register(sub)
    train.register(sub)
    tune.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # every command with --device: a clear error before loading
            from arvision.devices import check_device

            check_device(args.device)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into a reader that stopped (`arvision info X | head`)
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):
            pass
        return 0
    except (ArvisionError, ValueError, TypeError, OSError, FloatingPointError) as e:  # OSError: a name too long, no space left...
        if os.environ.get("ARVISION_DEBUG"):
            raise
        print(f"arvision {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
