"""The ``scheduler`` command: thin argparse commands over the service modules.

    scheduler migrate
    scheduler check CONFIG
    scheduler run [--config CONFIG] [--import MODULE ...] [--queues Q1,Q2] [--concurrency N]
    scheduler schedules list [--json] | pause NAME | resume NAME | trigger NAME
    scheduler schedules next (--cron EXPR [--timezone TZ] | NAME --config FILE)
                             [--after ISO8601] [--count N]
    scheduler status [--json]                                   (these three: cli_jobs.py)
    scheduler jobs list [--state S] [--queue Q] [--task T] [--schedule NAME] [--limit N] [--json]
    scheduler jobs show ID [--json] | retry ID | cancel ID
    scheduler dead-letters list [--task T] [--limit N] [--json]
    scheduler dead-letters retry --all [--task T] | purge --older-than DURATION [--task T]

Database: ``SCHEDULER_DATABASE_URL``; when unset, an embedded PostgreSQL is started with its
data under ``SCHEDULER_EMBEDDED_DIR`` (default ``./.scheduler``) and its URL is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from pydantic import ValidationError

from . import embedded, log, schedules
from .config import load_config
from .cron import Cron
from .errors import ConfigError, MigrationPrivilegeError
from .settings import Settings
from .store import Store
from .tasks import import_modules


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "queues", None):
        overrides["queues"] = args.queues
    if getattr(args, "concurrency", None):
        overrides["concurrency"] = args.concurrency
    return Settings(**overrides)


def resolve_database_url(settings: Settings) -> str:
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

    settings = settings_from(args)
    log.configure(settings.log_format, settings.log_level)
    try:
        applied = asyncio.run(migrate(resolve_database_url(settings), settings))
    except MigrationPrivilegeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
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

    settings = settings_from(args)
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
    try:
        asyncio.run(run_replica(resolve_database_url(settings), settings, config))
    except MigrationPrivilegeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if any(t.name.startswith("scheduler-job") and t.is_alive() for t in threading.enumerate()):
        # Sync handlers cut off by the shutdown were released to pending (they will run
        # again); their threads cannot be stopped, so leave without waiting for them.
        if not settings.database_url:
            embedded.stop(settings.embedded_dir)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def with_connection(settings: Settings, action: Callable[..., Awaitable[Any]]) -> Any:
    async def run() -> Any:
        url = resolve_database_url(settings)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await action(conn, Store(settings.schema_name))

    return asyncio.run(run())


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def cmd_schedules(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    action = args.action
    if action == "next":
        return _cmd_next(args)
    if action == "list":
        rows = with_connection(settings, schedules.list_schedules)
        if args.json:
            print(json.dumps(rows, default=cell, indent=2))
        else:
            for r in rows:
                r["state"] = (
                    "paused" if r["paused_at"] else ("enabled" if r["enabled"] else "disabled")
                )
            columns = [
                "name",
                "cron",
                "timezone",
                "task",
                "state",
                "next_run_at",
                "last_fire_at",
                "misfire_policy",
                "overlap_policy",
            ]
            print(table(rows, columns))
        return 0
    operation = {"pause": schedules.pause, "resume": schedules.resume, "trigger": schedules.trigger}
    try:
        result = with_connection(
            settings, lambda conn, store: operation[action](conn, store, args.name)
        )
    except LookupError as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    if action == "trigger":
        if result is None:
            print(
                f"{args.name}: not triggered: a job of it is pending or running and its "
                "overlap_policy is skip",
                file=sys.stderr,
            )
            return 1
        print(f"{args.name}: job {result} enqueued")
        return 0
    if not result:
        print(f"no schedule named {args.name!r}", file=sys.stderr)
        return 1
    print(f"{args.name}: {action}d")
    return 0


def _cmd_next(args: argparse.Namespace) -> int:
    try:
        if args.cron:
            cron = Cron(args.cron, args.timezone or "UTC")
        else:
            if not (args.name and args.config):
                print("give --cron EXPR, or a schedule NAME with --config FILE", file=sys.stderr)
                return 2
            config = load_config(args.config)
            match = [s for s in config.schedules if s.name == args.name]
            if not match:
                print(f"no schedule named {args.name!r} in {args.config}", file=sys.stderr)
                return 1
            cron = match[0].cron_obj()
        after = datetime.now(UTC)
        if args.after:
            after = datetime.fromisoformat(args.after)
            if after.tzinfo is None:  # a wall time in the schedule's zone
                after = after.replace(tzinfo=cron.timezone)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ValueError as exc:  # CronError is a ValueError; so is a bad --after
        print(str(exc), file=sys.stderr)
        return 1
    for fire_time in schedules.preview(cron, after, args.count):
        print(fire_time.isoformat())
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

    p = sub.add_parser("schedules", help="list, pause, resume, trigger or preview schedules")
    ssub = p.add_subparsers(dest="action", required=True)
    q = ssub.add_parser("list", help="every schedule with its state and next fire time (UTC)")
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    for action, text in [
        ("pause", "stop materialising NAME (survives restarts and reconciliation)"),
        ("resume", "resume NAME; what was missed goes through its misfire policy"),
        ("trigger", "run NAME now, without moving its next fire time"),
    ]:
        q = ssub.add_parser(action, help=text)
        q.add_argument("name")
    q = ssub.add_parser("next", help="print the next fire times, one ISO-8601 instant per line")
    q.add_argument("name", nargs="?", help="a schedule of --config FILE")
    q.add_argument("--config", help="YAML schedules file declaring NAME")
    q.add_argument("--cron", help="a cron expression to preview")
    q.add_argument("--timezone", help="IANA zone for --cron (default UTC)")
    q.add_argument("--after", help="ISO-8601 instant (default now; no offset = in the zone)")
    q.add_argument("--count", type=int, default=10, help="how many fire times (default 10)")
    p.set_defaults(func=cmd_schedules)

    from . import cli_jobs  # here, not at the top: cli_jobs imports this module's helpers

    cli_jobs.add_parsers(sub)
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
