"""Operator commands over :mod:`scheduler.operations` (thin: parse, call, print).

    scheduler status [--json]
    scheduler jobs list [--state S] [--queue Q] [--task T] [--schedule NAME] [--limit N] [--json]
    scheduler jobs show ID [--json] | retry ID | cancel ID
    scheduler dead-letters list [--task T] [--limit N] [--json]
    scheduler dead-letters retry --all [--task T] | purge --older-than DURATION [--task T]

Output is a table by default and JSON with ``--json``; errors go to stderr with exit code 1
(2 for bad arguments). ``dead-letters retry --all`` retries what it can and prints one line
per job it skipped, with the reason (exit 0); ``jobs retry ID`` says why it could not.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import actions, job_changes, limits, operations
from ..jobs import JobState
from ..settings import Settings
from .common import ID_MAX, LIMIT_MAX, cell, int_in, settings_from, table, with_connection

JOB_COLUMNS = ["id", "state", "queue", "task", "schedule_name", "attempt", "max_attempts",
               "run_at", "finished_at", "last_error"]  # fmt: skip


def _print_jobs(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, default=cell, indent=2))
    else:
        for r in rows:
            r["last_error"] = (r["last_error"] or "")[:60] or None
        print(table(rows, JOB_COLUMNS))


def _show(job: dict[str, Any]) -> str:
    lines = [  # result: the handler's return value, as JSON ("-": none)
        f"{k:<20} {json.dumps(v) if k == 'result' and v is not None else cell(v)}"
        for k, v in job.items()
        if k not in ("runs", "events")
    ]
    for run in job["runs"]:
        lines.append(
            f"\nattempt {run['attempt']}: {run['outcome']} on {cell(run['worker_id'])}, "
            f"{cell(run['started_at'])} -> {cell(run['finished_at'])}"
        )
        if run["error"]:
            lines.append(f"  error: {run['error']}")
        if run["traceback"]:
            lines.append("  " + run["traceback"].rstrip().replace("\n", "\n  "))
    for event in job["events"]:
        lines.append(f"\n{cell(event['at'])} {event['event']} {event['detail'] or ''}".rstrip())
    return "\n".join(lines)


def _check_filters(args: argparse.Namespace) -> None:
    """Refuse hostile --queue / --task / --schedule values before any SQL (exit 2)."""
    if getattr(args, "queue", None) is not None:
        limits.check_queue(args.queue, "--queue")
    if getattr(args, "task", None) is not None:
        limits.check_task_name(args.task, "--task")
    if getattr(args, "schedule", None) is not None:
        limits.check_schedule_name(args.schedule, "--schedule")


def cmd_jobs(args: argparse.Namespace) -> int:
    _check_filters(args)
    settings = settings_from(args)
    if args.action == "list":
        rows = with_connection(
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
        job = with_connection(settings, lambda c, st: operations.show_job(c, st, args.id))
        if job is None:
            print(f"no job {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(job, default=cell, indent=2) if args.json else _show(job))
        return 0
    if args.action == "retry":
        result = with_connection(
            settings,
            lambda c, st: job_changes.retry(c, st, ids=[args.id], actor=actions.cli_actor()),
        )
        if args.id in result.skipped:
            print(f"job {args.id}: not retried: {result.skipped[args.id]}", file=sys.stderr)
            return 1
        if not result.retried:
            print(f"job {args.id}: not retried: no such job, or it is not dead or cancelled",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"job {args.id}: back to pending with a renewed attempt budget")
        return 0
    event = with_connection(
        settings, lambda c, st: job_changes.cancel(c, st, args.id, actions.cli_actor())
    )
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
    _check_filters(args)
    settings = settings_from(args)
    if args.action == "list":
        rows = with_connection(
            settings,
            lambda c, st: operations.list_jobs(
                c, st, state="dead", task=args.task, limit=args.limit
            ),
        )
        _print_jobs(rows, args.json)
        return 0
    if args.action == "retry":
        result = with_connection(
            settings,
            lambda c, st: job_changes.retry(
                c, st, state="dead", task=args.task, actor=actions.cli_actor()
            ),
        )
        print(f"{len(result.retried)} dead letter(s) back to pending")
        for job_id, reason in result.skipped.items():
            print(f"job {job_id}: not retried: {reason}", file=sys.stderr)
        if result.skipped:
            print(f"{len(result.skipped)} dead letter(s) skipped", file=sys.stderr)
        return 0
    try:
        older_than_s = operations.parse_duration(args.older_than)
    except ValueError as exc:
        print(f"--older-than: {exc}", file=sys.stderr)
        return 2
    n = with_connection(
        settings,
        lambda c, st: job_changes.purge_dead_letters(
            c,
            st,
            older_than_s=older_than_s,
            task=args.task,
            statement_timeout_s=settings.statement_timeout_s,
        ),
        transaction=False,
    )
    print(f"{n} dead letter(s) purged")
    return 0


def _leader_line(leader: dict[str, Any] | None) -> str:
    if leader is None:
        return "leader: none elected yet"
    line = (
        f"leader: {leader['holder']}, term {leader['term']}, since {cell(leader['elected_at'])}"
        f", heartbeat {cell(leader['heartbeat_at'])} ({cell(leader['heartbeat_age_s'])} s ago)"
    )
    if leader["stale"]:
        line += f"\n  STALE: {leader['stale_reason']}; no replica is leading"
    return line


def status_report(settings: Settings) -> dict[str, Any]:
    """The ``scheduler status`` report (:func:`scheduler.operations.status`), with the
    staleness thresholds taken from ``settings``: the leader is stale when its heartbeat is
    older than twice ``leader_session_timeout_s`` (its lock session would have ended), a
    replica when it is silent for 3 x ``replica_heartbeat_s`` (when the leader deletes it)."""
    report: dict[str, Any] = with_connection(
        settings,
        lambda c, st: operations.status(
            c,
            st,
            leader_stale_s=2 * settings.leader_session_timeout_s,
            replica_stale_s=3 * settings.replica_heartbeat_s,
        ),
    )
    return report


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(settings_from(args))
    if args.json:
        print(json.dumps(report, default=cell, indent=2))
        return 0
    print(_leader_line(report["leader"]))
    for row in report["schedules_in_trouble"] + report["incidents"]:
        row["detail"] = " ".join(str(row["detail"] or "").split())[:80] or None
    sections = [
        ("replicas", ["id", "version", "queues", "concurrency", "started_at",
                      "heartbeat_age_s", "stale", "stuck_threads", "leader"]),
        ("queues", ["queue", "due", "scheduled", "running", "dead", "lag_s"]),
        ("queue_limits", ["queue", "concurrency", "rate", "per_s", "key_concurrency", "source",
                          "running", "window_starts"]),
        ("schedules_in_trouble", ["name", "problem", "fire_time", "at", "detail"]),
        ("incidents", ["id", "schedule", "kind", "opened_at", "since", "detail"]),
    ]  # fmt: skip
    for key, columns in sections:
        rows = report[key]
        print(f"\n{key.replace('_', ' ')}:")
        print(table(rows, columns) if rows else "  (none)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``status``, ``jobs`` and ``dead-letters`` on the ``scheduler`` parser."""
    limit, job_id = int_in(1, LIMIT_MAX), int_in(1, ID_MAX)
    limit_help = f"at most this many, 1-{LIMIT_MAX:,} (default 50)"
    p = sub.add_parser(
        "status",
        help="leader, live replicas, queue depths and lag, schedules in trouble, "
        "open alert incidents",
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
    q.add_argument("--limit", type=limit, default=50, help=limit_help)
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    q = jsub.add_parser("show", help="one job with every attempt, error and traceback")
    q.add_argument("id", type=job_id)
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    q = jsub.add_parser("retry", help="a dead or cancelled job back to pending, budget renewed")
    q.add_argument("id", type=job_id)
    q = jsub.add_parser("cancel", help="cancel a pending job, or ask a running one to stop")
    q.add_argument("id", type=job_id)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("dead-letters", help="list, retry or purge dead jobs")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="dead jobs, newest first")
    q.add_argument("--task")
    q.add_argument("--limit", type=limit, default=50, help=limit_help)
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
    q = dsub.add_parser("retry", help="every dead job (of --task) back to pending")
    q.add_argument("--all", action="store_true", required=True, help="required: all of them")
    q.add_argument("--task")
    q = dsub.add_parser("purge", help="delete dead jobs finished before a cut-off")
    q.add_argument("--older-than", required=True, help="e.g. 30d, 12h, 90s, P7D")
    q.add_argument("--task")
    p.set_defaults(func=cmd_dead_letters)
