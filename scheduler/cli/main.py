"""The ``scheduler`` command: thin argparse commands over the service modules.

    scheduler migrate
    scheduler check CONFIG
    scheduler run [--config CONFIG] [--import MODULE ...] [--queues Q1,Q2] [--concurrency N]
    scheduler schedules list [--json] | pause NAME | resume NAME | trigger NAME | remove NAME
    scheduler schedules put NAME --task T (--cron EXPR | --every DURATION) [--timezone TZ]
                            [--start-at ISO] [--args JSON] [--set KEY=VALUE ...]
    scheduler schedules backfill NAME --start ISO --end ISO [--max-jobs N]
    scheduler schedules apply FILE [--dry-run] [--json]    (these three: cli/schedule_changes.py)
    scheduler schedules next (--cron EXPR [--timezone TZ] | NAME --config FILE)
                             [--after ISO8601] [--count N]
    scheduler status [--json]                                   (these three: cli/jobs.py)
    scheduler queues [--json]                                   (cli/queues.py)
    scheduler jobs list [--state S] [--queue Q] [--task T] [--schedule NAME] [--limit N] [--json]
    scheduler jobs show ID [--json] | retry ID | cancel ID
    scheduler dead-letters list [--task T] [--limit N] [--json]
    scheduler dead-letters retry --all [--task T] | purge --older-than DURATION [--task T]
    scheduler tasks list [--config FILE] [--import MODULE ...] [--json]  (these two: cli/tasks.py)
    scheduler enqueue TASK [--args JSON] [--at ISO8601 | --in DURATION] [--queue Q]
                      [--priority N] [--max-attempts N] [--idempotency-key K]
                      [--config FILE] [--import MODULE ...] [--json]
    scheduler dashboard [--host H] [--port P] [--read-only]   (cli/dashboard.py)
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
import os
import sys
import threading
import traceback

import psycopg
from psycopg_pool import PoolTimeout

from .. import __version__, embedded, limits, log, operations
from ..config import load_config
from ..errors import (
    ConfigError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    InvalidScheduleError,
    SchedulerError,
    SettingsError,
)
from ..tasks import import_modules
from . import dashboard as dashboard_commands
from . import enqueue as enqueue_commands
from . import jobs as jobs_commands
from . import queues as queues_commands
from . import schedules as schedules_commands
from . import tasks as tasks_commands
from .common import Parser, one_line, resolve_database_url, settings_from


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..service import migrate

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
    queues = f" and {len(config.queues)} queue limit(s)" if config.queues else ""
    print(f"{args.config}: {len(config.schedules)} schedule(s){queues} OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..service import run_replica

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

    schedules_commands.add_parsers(sub)

    jobs_commands.add_parsers(sub)
    tasks_commands.add_parsers(sub)
    enqueue_commands.add_parsers(sub)
    queues_commands.add_parsers(sub)
    dashboard_commands.add_parsers(sub)
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
    except InvalidScheduleError as exc:  # a schedule given on the command line: every issue
        for issue in exc.issues:
            print(issue, file=sys.stderr)
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
