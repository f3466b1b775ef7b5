"""The ``scheduler`` command: thin argparse commands over the service modules.

    scheduler migrate
    scheduler check CONFIG
    scheduler run [--config CONFIG] [--import MODULE ...] [--queues Q1,Q2] [--concurrency N]

Database: ``SCHEDULER_DATABASE_URL``; when unset, an embedded PostgreSQL is started with its
data under ``SCHEDULER_EMBEDDED_DIR`` (default ``./.scheduler``) and its URL is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pydantic import ValidationError

from . import embedded, log
from .config import load_config
from .errors import ConfigError
from .settings import Settings
from .tasks import import_modules


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "queues", None):
        overrides["queues"] = args.queues
    if getattr(args, "concurrency", None):
        overrides["concurrency"] = args.concurrency
    return Settings(**overrides)


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    url = embedded.start(settings.embedded_dir)
    # Handlers and child processes find the database the usual way.
    os.environ["SCHEDULER_DATABASE_URL"] = url
    print(f"embedded PostgreSQL: {url}", file=sys.stderr)
    print(f"  query it: {embedded.psql_path()} '{url}'", file=sys.stderr)
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from .service import migrate

    settings = _settings(args)
    log.configure(settings.log_format, settings.log_level)
    applied = asyncio.run(migrate(_database_url(settings), settings))
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} error(s) in {args.config}", file=sys.stderr)
        return 1
    print(f"{args.config}: {len(config.schedules)} schedule(s) OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .service import run_replica

    settings = _settings(args)
    log.configure(settings.log_format, settings.log_level)
    try:
        import_modules(args.imports or [])
    except ImportError as exc:
        print(f"cannot import task module: {exc}", file=sys.stderr)
        return 1
    config = None
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            return 1
    asyncio.run(run_replica(_database_url(settings), settings, config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scheduler", description="Cron and delayed jobs on a PostgreSQL jobs table."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply the schema migrations (idempotent)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("check", help="validate a schedules file; exit 1 with every error")
    p.add_argument("config", help="path of the YAML schedules file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run one replica: leader candidate + workers")
    p.add_argument("--config", help="YAML schedules file (omit for a worker-only replica)")
    p.add_argument("--queues", help="comma-separated queues to work (default: default)")
    p.add_argument("--concurrency", type=int, help="jobs run at once (default 10)")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE so its @task functions register (repeatable; the config's "
        "`imports` are imported too)",
    )
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Task modules (`imports:`, --import) are found from the working directory, as with
    # `python -m`, also when started through the `scheduler` console script.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
