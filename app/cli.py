"""The ``triplet-embed`` command: ``serve`` plus the ML core's ``train``, ``eval``, ``embed``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import CheckpointError
from model.cli import add_subcommands, configure_logging
from model.data import DatasetError


def run_serve(args: argparse.Namespace) -> int:
    from app.observability import configure_json_logging
    from app.server import serve

    configure_json_logging(args.log_level)
    serve(args.host, args.port, args.log_level, args.workers)
    return 0


def run_openapi(args: argparse.Namespace) -> int:
    from app.main import create_app

    text = json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triplet-embed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (more than one needs EMBED_DATABASE_URL)",
    )
    serve.set_defaults(handler=run_serve)
    spec = sub.add_parser("openapi", help="print the service's OpenAPI schema")
    spec.add_argument("--out", type=Path, help="write it to this file")
    spec.set_defaults(handler=run_openapi)
    add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        configure_logging()
    try:
        return int(args.handler(args))
    except (CheckpointError, DatasetError) as exc:  # a user's mistake: no traceback
        print(f"triplet-embed {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
