"""``scheduler schedules list | pause | resume | trigger | next`` (put, remove, backfill and
apply: :mod:`.schedule_changes`)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from .. import limits, schedule_operations
from ..config import load_config
from ..cron import Cron
from ..cron_count import FireTimes
from ..errors import (
    CronError,
)
from . import schedule_changes
from .common import COUNT_MAX, cell, int_in, one_line, settings_from, table, with_connection


def cmd_schedules(args: argparse.Namespace) -> int:
    action = args.action
    if action == "next":
        return _cmd_next(args)
    if action in schedule_changes.COMMANDS:
        return schedule_changes.COMMANDS[action](args)
    settings = settings_from(args)
    if action != "list":
        limits.check_schedule_name(args.name, "schedule NAME")
    if action == "list":
        rows = with_connection(settings, schedule_operations.list_schedules)
        if args.json:
            print(json.dumps(rows, default=cell, indent=2))
        else:
            for r in rows:
                r["state"] = (
                    "paused" if r["paused_at"] else ("enabled" if r["enabled"] else "disabled")
                )
                if r.get("every_s") is not None:  # an interval schedule: shown where cron is
                    r["cron"] = f"every {r['every_s']:g}s"
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
                "source",
            ]
            print(table(rows, columns))
        return 0
    operation = {
        "pause": schedule_operations.pause,
        "resume": schedule_operations.resume,
        "trigger": schedule_operations.trigger,
    }
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
                f"{args.name}: not triggered: its overlap_policy refuses another job now "
                "(skip: a job of it is pending or running; buffer_one: one is already waiting)",
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
    cron: Cron | FireTimes
    schedule = None
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
        schedule = match[0]
        cron = schedule.fire_times(datetime.now(UTC))
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
    if schedule is not None and schedule.every is not None and schedule.start_at is None:
        cron = schedule.fire_times(after)  # no start_at: as if it were stored at --after
    try:
        fire_times = schedule_operations.preview(cron, after, args.count)
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


def add_parsers(sub: Any) -> None:
    """Add ``schedules`` to the ``scheduler`` command's subparsers."""
    p = sub.add_parser(
        "schedules",
        help="list, create, remove, pause, resume, trigger, backfill, apply or preview schedules",
    )
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
    schedule_changes.add_parsers(ssub)
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
