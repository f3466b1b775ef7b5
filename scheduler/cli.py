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
    scheduler tasks list [--config FILE] [--import MODULE ...] [--json]  (these two: cli_tasks.py)
    scheduler enqueue TASK [--args JSON] [--at ISO8601 | --in DURATION] [--queue Q]
                      [--priority N] [--max-attempts N] [--idempotency-key K]
                      [--config FILE] [--import MODULE ...] [--json]
    scheduler --version

Database: ``SCHEDULER_DATABASE_URL``; when unset, an embedded PostgreSQL is started with its
data under ``SCHEDULER_EMBEDDED_DIR`` (default ``./.scheduler``) and its URL is printed.

Every bad input gets one line on stderr naming the input and the reason, never a traceback:
exit code 2 for bad arguments and settings (:class:`~scheduler.errors.SettingsError`,
:class:`~scheduler.errors.InvalidArgumentError`, argparse), 1 for failures (database
unreachable or not migrated, a job not found...). Operator commands connect with
``SCHEDULER_CONNECT_TIMEOUT_S`` and run their statements under ``SCHEDULER_STATEMENT_TIMEOUT_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import psycopg
from psycopg_pool import PoolTimeout

from . import __version__, embedded, limits, log, operations, schedules
from .config import load_config
from .cron import Cron
from .errors import (
    ConfigError,
    CronError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    SchedulerError,
    SettingsError,
)
from .settings import Settings, load_settings
from .tasks import import_modules

ID_MAX = 2**63 - 1  # jobs.id is a bigint
LIMIT_MAX = 100_000  # rows a list command prints
COUNT_MAX = 1_000  # fire times `schedules next` computes


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``scheduler jobs list: argument --limit: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            shown = limits.shown(text)
            if text.strip().lstrip("+-").isdigit():  # more digits than int() converts
                raise argparse.ArgumentTypeError(
                    f"{shown} is out of range {low:,} .. {high:,}"
                ) from None
            raise argparse.ArgumentTypeError(f"{shown} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range {low:,} .. {high:,}")
        return value

    return parse


def one_line(exc: BaseException | str, limit: int = 500) -> str:
    """``exc``'s message on one line (libpq's are several), at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with ``--queues`` / ``--concurrency`` overriding them.

    Raises:
        SettingsError: a setting or one of those options is invalid (named in the message).
    """
    overrides, options = {}, {}
    for field, option in (("queues", "--queues"), ("concurrency", "--concurrency")):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
            options[field] = option
    return load_settings(overrides, options=options)


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
    url = resolve_database_url(settings)

    async def run() -> list[str]:
        await operations.check_connection(url, settings)
        return await migrate(url, settings)

    try:
        applied = asyncio.run(run())
    except psycopg.Error as exc:
        raise operations.database_error(exc, url, settings) from None
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
    for module in args.imports or []:
        try:
            import_modules([module])
        except Exception as exc:  # noqa: BLE001 - any error of a user's module, on one line
            what = "cannot import it" if isinstance(exc, ImportError) else "importing it raised"
            print(
                f"--import {limits.shown(module)}: {what} {type(exc).__name__}: {one_line(exc)}",
                file=sys.stderr,
            )
            return 1
    config = None
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            return 1
    url = resolve_database_url(settings)

    async def run() -> None:
        await operations.check_connection(url, settings)
        await run_replica(url, settings, config)

    try:
        asyncio.run(run())
    except psycopg.Error as exc:  # at start-up; later outages are retried inside the loops
        raise operations.database_error(exc, url, settings) from None
    except PoolTimeout as exc:
        raise DatabaseUnavailableError(
            f"cannot open connections to the database {log.redact_url(url)}: {one_line(exc)}"
        ) from None
    if any(t.name.startswith("scheduler-job") and t.is_alive() for t in threading.enumerate()):
        # Sync handlers cut off by the shutdown were released to pending (they will run
        # again); their threads cannot be stopped, so leave without waiting for them.
        if not settings.database_url:
            embedded.stop(settings.embedded_dir)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def with_connection(
    settings: Settings, action: Callable[..., Awaitable[Any]], *, transaction: bool = True
) -> Any:
    """Run ``action(conn, store)`` for an operator command in
    :func:`scheduler.operations.session` (bounded connect and statements, schema checked)
    and return its result. Raises the errors of ``session``: ``DatabaseUnavailableError``,
    ``SchemaNotMigratedError``, ``DatabaseError``."""
    # psycopg's warning about a cancelled query would add a second line to our message
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    url = resolve_database_url(settings)
    return asyncio.run(operations.session(url, settings, action, transaction=transaction))


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
    action = args.action
    if action == "next":
        return _cmd_next(args)
    settings = settings_from(args)
    if action != "list":
        limits.check_schedule_name(args.name, "schedule NAME")
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
    if args.cron:
        try:
            cron = Cron(args.cron, args.timezone or "UTC")
        except CronError as exc:
            print(one_line(exc), file=sys.stderr)  # names the expression or the zone
            return 2
    else:
        if not (args.name and args.config):
            print("give --cron EXPR, or a schedule NAME with --config FILE", file=sys.stderr)
            return 2
        config = load_config(args.config)  # ConfigError: every issue, exit 1 (see main)
        match = [s for s in config.schedules if s.name == args.name]
        if not match:
            print(f"no schedule named {limits.shown(args.name)} in {args.config}", file=sys.stderr)
            return 1
        cron = match[0].cron_obj()
    after = datetime.now(UTC)
    if args.after:
        try:
            after = datetime.fromisoformat(args.after)
        except ValueError:
            print(
                f"--after {limits.shown(args.after)}: not an ISO-8601 instant (e.g. "
                "2030-01-01T09:00, a wall time in the zone, or 2030-01-01T09:00:00+02:00)",
                file=sys.stderr,
            )
            return 2
        if after.tzinfo is None:  # a wall time in the schedule's zone
            after = after.replace(tzinfo=cron.timezone)
    try:
        fire_times = schedules.preview(cron, after, args.count)
    except (OverflowError, ValueError):  # past year 9999 (or before year 1 in UTC)
        print(
            f"--after {limits.shown(args.after)}: fewer than {args.count} fire times between it "
            "and the end of year 9999, the last date that can be computed",
            file=sys.stderr,
        )
        return 2
    for fire_time in fire_times:
        print(fire_time.isoformat())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="scheduler", description="Cron and delayed jobs on a PostgreSQL jobs table."
    )
    parser.add_argument("-V", "--version", action="version", version=f"scheduler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply the schema migrations (idempotent)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("check", help="validate a schedules file; exit 1 with every error")
    p.add_argument("config", help="path of the YAML schedules file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run one replica: leader candidate + workers")
    p.add_argument("--config", help="YAML schedules file (omit for a worker-only replica)")
    p.add_argument("--queues", help="comma-separated queues to work (default: default)")
    p.add_argument("--concurrency", type=int, help="jobs run at once, 1-1000 (default 100)")
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
    q.add_argument(
        "--count",
        type=int_in(1, COUNT_MAX),
        default=10,
        help=f"how many fire times, 1-{COUNT_MAX} (default 10)",
    )
    p.set_defaults(func=cmd_schedules)

    from . import cli_jobs  # here, not at the top: cli_jobs imports this module's helpers

    cli_jobs.add_parsers(sub)
    from . import cli_tasks  # likewise

    cli_tasks.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Task modules (`imports:`, --import) are found from the working directory, as with
    # `python -m`, also when started through the `scheduler` console script.
    with contextlib.suppress(OSError):  # a working directory that was deleted
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except InvalidArgumentError as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    except SchedulerError as exc:  # the database tree: unavailable, not migrated, privileges
        print(one_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback only on demand
        if os.environ.get("SCHEDULER_LOG_LEVEL", "").strip().lower() == "debug":
            traceback.print_exc()
        print(
            f"unexpected error: {type(exc).__name__}: {log.redact_url(one_line(exc))} (set "
            "SCHEDULER_LOG_LEVEL=debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
