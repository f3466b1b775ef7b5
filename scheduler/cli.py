"""The ``scheduler`` command: thin argparse commands over the service modules.

    scheduler migrate
    scheduler check CONFIG
    scheduler run [--config CONFIG] [--import MODULE ...] [--queues Q1,Q2] [--concurrency N]
    scheduler schedules list [--json] | pause NAME | resume NAME | trigger NAME
    scheduler schedules next (--cron EXPR [--timezone TZ] | NAME --config FILE)
                             [--after ISO8601] [--count N]
    scheduler status [--json]
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

from . import embedded, log, operations, schedules
from .config import load_config
from .cron import Cron
from .errors import ConfigError, MigrationPrivilegeError
from .jobs import JobState
from .settings import Settings
from .store import Store
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
    try:
        applied = asyncio.run(migrate(_database_url(settings), settings))
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
    try:
        asyncio.run(run_replica(_database_url(settings), settings, config))
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


def _with_connection(settings: Settings, action: Callable[..., Awaitable[Any]]) -> Any:
    async def run() -> Any:
        url = _database_url(settings)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await action(conn, Store(settings.schema_name))

    return asyncio.run(run())


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def cmd_schedules(args: argparse.Namespace) -> int:
    settings = _settings(args)
    action = args.action
    if action == "next":
        return _cmd_next(args)
    if action == "list":
        rows = _with_connection(settings, schedules.list_schedules)
        if args.json:
            print(json.dumps(rows, default=_cell, indent=2))
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
            print(_table(rows, columns))
        return 0
    operation = {"pause": schedules.pause, "resume": schedules.resume, "trigger": schedules.trigger}
    try:
        result = _with_connection(
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


JOB_COLUMNS = ["id", "state", "queue", "task", "schedule_name", "attempt", "max_attempts",
               "run_at", "finished_at", "last_error"]  # fmt: skip


def _print_jobs(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, default=_cell, indent=2))
    else:
        for r in rows:
            r["last_error"] = (r["last_error"] or "")[:60] or None
        print(_table(rows, JOB_COLUMNS))


def _show(job: dict[str, Any]) -> str:
    lines = [f"{k:<20} {_cell(v)}" for k, v in job.items() if k not in ("runs", "events")]
    for run in job["runs"]:
        lines.append(
            f"\nattempt {run['attempt']}: {run['outcome']} on {_cell(run['worker_id'])}, "
            f"{_cell(run['started_at'])} -> {_cell(run['finished_at'])}"
        )
        if run["error"]:
            lines.append(f"  error: {run['error']}")
        if run["traceback"]:
            lines.append("  " + run["traceback"].rstrip().replace("\n", "\n  "))
    for event in job["events"]:
        lines.append(f"\n{_cell(event['at'])} {event['event']} {event['detail'] or ''}".rstrip())
    return "\n".join(lines)


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "list":
        rows = _with_connection(
            settings,
            lambda conn, store: operations.list_jobs(
                conn,
                store,
                state=args.state,
                queue=args.queue,
                task=args.task,
                schedule=args.schedule,
                limit=args.limit,
            ),
        )
        _print_jobs(rows, args.json)
        return 0
    if args.action == "show":
        job = _with_connection(settings, lambda c, st: operations.show_job(c, st, args.id))
        if job is None:
            print(f"no job {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(job, default=_cell, indent=2) if args.json else _show(job))
        return 0
    if args.action == "retry":
        done = _with_connection(settings, lambda c, st: operations.retry(c, st, ids=[args.id]))
        if not done:
            print(f"job {args.id}: not retried: no such job, or it is not dead or cancelled",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"job {args.id}: back to pending with a renewed attempt budget")
        return 0
    event = _with_connection(settings, lambda c, st: operations.cancel(c, st, args.id))
    if event is None:
        print(f"job {args.id}: not cancelled: no such job, or it has finished", file=sys.stderr)
        return 1
    print(
        f"job {args.id}: cancelled"
        if event == "cancelled"
        else f"job {args.id}: running; its handler is asked to stop"
    )
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "list":
        rows = _with_connection(
            settings,
            lambda c, st: operations.list_jobs(
                c, st, state="dead", task=args.task, limit=args.limit
            ),
        )
        _print_jobs(rows, args.json)
        return 0
    if args.action == "retry":
        done = _with_connection(
            settings, lambda c, st: operations.retry(c, st, state="dead", task=args.task)
        )
        print(f"{len(done)} dead letter(s) back to pending")
        return 0
    try:
        older_than_s = operations.parse_duration(args.older_than)
    except ValueError as exc:
        print(f"--older-than: {exc}", file=sys.stderr)
        return 2
    n = _with_connection(
        settings,
        lambda c, st: operations.purge_dead_letters(
            c, st, older_than_s=older_than_s, task=args.task
        ),
    )
    print(f"{n} dead letter(s) purged")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    report = _with_connection(_settings(args), operations.status)
    if args.json:
        print(json.dumps(report, default=_cell, indent=2))
        return 0
    leader = report["leader"]
    print(
        f"leader: {leader['holder']}, term {leader['term']}, since {_cell(leader['elected_at'])}"
        f", heartbeat {_cell(leader['heartbeat_at'])}"
        if leader
        else "leader: none elected yet"
    )
    sections = [
        ("replicas", ["id", "version", "queues", "concurrency", "started_at",
                      "heartbeat_age_s", "leader"]),
        ("queues", ["queue", "due", "scheduled", "running", "dead", "lag_s"]),
        ("schedules_in_trouble", ["name", "problem", "fire_time", "detail"]),
    ]  # fmt: skip
    for key, columns in sections:
        rows = report[key]
        print(f"\n{key.replace('_', ' ')}:")
        print(_table(rows, columns) if rows else "  (none)")
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

    p = sub.add_parser(
        "status", help="leader, live replicas, queue depths and lag, schedules in trouble"
    )
    p.add_argument("--json", action="store_true", help="JSON output for scripts")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", help="list, show, retry or cancel jobs")
    jsub = p.add_subparsers(dest="action", required=True)
    q = jsub.add_parser("list", help="jobs, newest first")
    q.add_argument("--state", choices=[s.value for s in JobState])
    q.add_argument("--queue")
    q.add_argument("--task")
    q.add_argument("--schedule", help="jobs of this schedule")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    q = jsub.add_parser("show", help="one job with every attempt, error and traceback")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    q = jsub.add_parser("retry", help="a dead or cancelled job back to pending, budget renewed")
    q.add_argument("id", type=int)
    q = jsub.add_parser("cancel", help="cancel a pending job, or ask a running one to stop")
    q.add_argument("id", type=int)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("dead-letters", help="list, retry or purge dead jobs")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="dead jobs, newest first")
    q.add_argument("--task")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    q = dsub.add_parser("retry", help="every dead job (of --task) back to pending")
    q.add_argument("--all", action="store_true", required=True, help="required: all of them")
    q.add_argument("--task")
    q = dsub.add_parser("purge", help="delete dead jobs finished before a cut-off")
    q.add_argument("--older-than", required=True, help="e.g. 30d, 12h, 90s, P7D")
    q.add_argument("--task")
    p.set_defaults(func=cmd_dead_letters)
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
