"""``scheduler schedules put | remove | backfill | apply``: change schedules while the service
runs (the list / pause / resume / trigger / next commands are in :mod:`.schedules`).

    scheduler schedules put NAME --task T (--cron EXPR | --every DURATION) [--timezone TZ]
                            [--start-at ISO] [--args JSON] [--set KEY=VALUE ...]
                            [--import MODULE ...]          (aliases: create, update)
    scheduler schedules remove NAME
    scheduler schedules backfill NAME --start ISO --end ISO [--max-jobs N]
    scheduler schedules apply FILE [--dry-run] [--json]

``put`` validates exactly like an item of a schedules file (``--set`` values are read as
YAML scalars, as in the file: ``--set max_attempts=3 --set overlap_policy=skip``); with
``--import``, the task's name and arguments are checked against its handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

import yaml

from .. import schedule_files, schedule_operations, schedules
from ..config import check_schedule, load_config
from ..errors import InvalidArgumentError
from ..limits import check_schedule_name, shown
from ..schedule_control import BACKFILL_MAX_JOBS, BACKFILL_MAX_JOBS_LIMIT
from .common import cell, int_in, settings_from, with_connection
from .enqueue import parse_args_json
from .tasks import import_task_modules


def _option(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE``: VALUE read as a YAML scalar (as the schedules file would)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InvalidArgumentError(f"--set {shown(text)}: write KEY=VALUE, e.g. max_attempts=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise InvalidArgumentError(f"--set {shown(text)}: VALUE is not a YAML scalar") from None
    if isinstance(value, (dict, list)):
        raise InvalidArgumentError(f"--set {shown(text)}: VALUE must be a scalar")
    return key.strip(), value


def _cmd_put(args: argparse.Namespace) -> int:
    import_task_modules(args)  # --import: task name and args are checked when given
    fields: dict[str, Any] = {"name": args.name, "task": args.task}
    for key, value in (("cron", args.cron), ("every", args.every), ("timezone", args.timezone),
                       ("start_at", args.start_at)):  # fmt: skip
        if value is not None:
            fields[key] = value
    if args.args is not None:
        fields["args"] = parse_args_json(args.args)
    for text in args.set or []:
        key, value = _option(text)
        if key in fields:
            raise InvalidArgumentError(f"--set {shown(key)}: given twice (or by its own option)")
        fields[key] = value
    schedule = check_schedule(
        fields, source="scheduler schedules put", import_tasks=bool(args.imports)
    )
    settings = settings_from(args)
    done = with_connection(settings, lambda c, s: schedules.put(c, s, schedule, settings=settings))
    print(f"{done.name}: {done.action}; next fire time {cell(done.next_run_at)}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    name = check_schedule_name(args.name, "schedule NAME")
    if not with_connection(settings_from(args), lambda c, s: schedules.remove(c, s, name)):
        print(f"no schedule named {name!r}", file=sys.stderr)
        return 1
    print(f"{name}: removed (its jobs keep their state and history)")
    return 0


def _instant(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise InvalidArgumentError(
            f"{what} {shown(text)}: give an ISO-8601 instant with its offset, e.g. "
            "2026-11-01T00:00:00+00:00 or 2026-11-01T00:00Z"
        )
    return value


def _cmd_backfill(args: argparse.Namespace) -> int:
    name = check_schedule_name(args.name, "schedule NAME")
    start, end = _instant(args.start, "--start"), _instant(args.end, "--end")
    if end < start:
        raise InvalidArgumentError(f"--end {args.end} is before --start {args.start}")
    done = with_connection(settings_from(args), lambda c, s: schedule_operations.backfill(
        c, s, name, start, end, max_jobs=args.max_jobs))  # fmt: skip
    print(f"{name}: {len(done.enqueued)} job(s) enqueued for {done.fire_times} fire time(s) "
          f"in range; {done.existing} had a job already")  # fmt: skip
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # ConfigError: every issue, exit 1 (see main)
    settings = settings_from(args)
    done = with_connection(settings, lambda c, s: schedule_files.apply(
        c, s, config, settings=settings, dry_run=args.dry_run))  # fmt: skip
    if args.json:
        print(json.dumps({"path": done.path, "config_hash": done.config_hash,
                          "dry_run": done.dry_run, "unchanged": done.unchanged,
                          "queue_limits": done.limits.__dict__ if done.limits else None,
                          "changes": [c.__dict__ for c in done.changes]},
                         default=lambda v: v.isoformat(), indent=2))  # fmt: skip
        return 0
    marks = {"added": "+", "rescheduled": "~", "updated": "~", "removed": "-"}
    for change in done.changes:
        print(f"{marks[change.kind]} {change.name} ({change.kind})")
        if change.kind != "added":
            print(
                f"    before: {', '.join(t.isoformat() for t in change.before) or 'no fire time'}"
            )
        if change.kind != "removed":
            print(f"    after:  {', '.join(t.isoformat() for t in change.after) or 'no fire time'}")
    limits = done.limits
    if limits is not None and (limits.written or limits.removed or limits.overridden):
        print(f"queue limits: written {', '.join(limits.written) or '-'}; removed "
              f"{', '.join(limits.removed) or '-'}; left to SCHEDULER_QUEUE_LIMITS "
              f"{', '.join(limits.overridden) or '-'}")  # fmt: skip
    verb = "would change" if done.dry_run else "changed"
    print(f"{done.path}: {verb} {len(done.changes)} schedule(s), {done.unchanged} unchanged"
          + (" (dry run: nothing written)" if done.dry_run else ""))  # fmt: skip
    return 0


COMMANDS = {"put": _cmd_put, "create": _cmd_put, "update": _cmd_put, "remove": _cmd_remove,
            "backfill": _cmd_backfill, "apply": _cmd_apply}  # fmt: skip


def add_parsers(ssub: Any) -> None:
    """Add put / remove / backfill / apply to the ``schedules`` subparsers."""
    q = ssub.add_parser("put", aliases=["create", "update"],
                        help="create or update a runtime schedule (source api), effective at once")  # fmt: skip
    q.add_argument("name")
    q.add_argument("--task", required=True, help="registered task name")
    q.add_argument("--cron", help="cron expression (or --every)")
    q.add_argument("--every", help="interval, e.g. 90s, 15m, 2h (or --cron)")
    q.add_argument("--timezone", help="IANA zone of --cron (default UTC)")
    q.add_argument("--start-at", help="ISO-8601 instant anchoring --every")
    q.add_argument("--args", help="JSON object of the handler's keyword arguments")
    q.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other schedule field, as in the YAML file (repeatable)")  # fmt: skip
    q.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="import task modules to check the task and its args (repeatable)")  # fmt: skip
    q.set_defaults(config=None)
    q = ssub.add_parser("remove", help="delete a runtime schedule (jobs keep their history)")
    q.add_argument("name")
    q = ssub.add_parser("backfill", help="one job per fire time of NAME in [--start, --end]")
    q.add_argument("name")
    q.add_argument("--start", required=True, help="ISO-8601 instant with offset (included)")
    q.add_argument("--end", required=True, help="ISO-8601 instant with offset (included)")
    q.add_argument("--max-jobs", type=int_in(1, BACKFILL_MAX_JOBS_LIMIT),
                   default=BACKFILL_MAX_JOBS,
                   help=f"refuse a range with more fire times (default {BACKFILL_MAX_JOBS:,})")  # fmt: skip
    q = ssub.add_parser("apply", help="reconcile a schedules file into the database now")
    q.add_argument("config", help="path of the YAML schedules file")
    q.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    q.add_argument("--json", action="store_true", help="JSON output for scripts")
