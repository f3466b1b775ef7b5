"""``scheduler queues [--json]``: each queue's flow-control limits and how close it is to them.

One row per queue that has limits or pending or running jobs (:func:`scheduler.flow.
queue_overview`): the limits (``-``: not limited that way) and where they came from
(``source``: ``api`` = ``set_queue_limits``, ``settings`` = ``SCHEDULER_QUEUE_LIMITS``,
``config`` = the schedules file's ``queues:``), the running and pending jobs, the starts in
the rate window ending now (as the claim counts them) and the running jobs of the busiest
``concurrency_key``, and whether it is paused. ``--json`` prints the same rows as a JSON list.

``scheduler queues pause QUEUE`` / ``resume QUEUE``: every replica stops (starts again)
claiming the queue's jobs (:mod:`scheduler.actions`), recorded with ``cli:<user>@<host>``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import actions, flow
from ..limits import check_queue
from .common import cell, settings_from, table, with_connection

COLUMNS = ["queue", "paused", "concurrency", "rate", "per_s", "key_concurrency", "source",
           "running", "pending", "window_starts", "busiest_key_running"]  # fmt: skip


def cmd_queues(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = with_connection(settings_from(args), flow.queue_overview)
    if args.json:
        print(json.dumps(rows, default=cell, indent=2))
    elif rows:
        for row in rows:
            if row["per_s"] is not None:
                row["per_s"] = f"{row['per_s']:g}"
        print(table(rows, COLUMNS))
    else:
        print("no queue has limits or pending or running jobs")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    queue, actor = check_queue(args.queue), actions.cli_actor()
    done = with_connection(settings_from(args),
                           lambda c, st: actions.pause_queue(c, st, queue, actor))  # fmt: skip
    print(f"paused queue {queue}" if done else f"queue {queue} was already paused")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    queue, actor = check_queue(args.queue), actions.cli_actor()
    done = with_connection(settings_from(args),
                           lambda c, st: actions.resume_queue(c, st, queue, actor))  # fmt: skip
    print(f"resumed queue {queue}" if done else f"queue {queue} was not paused")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``queues`` on the ``scheduler`` parser."""
    p = sub.add_parser(
        "queues", help="queues with their limits, running and pending jobs, starts per window"
    )
    p.add_argument("--json", action="store_true", help="JSON output for scripts")
    p.set_defaults(func=cmd_queues)
    actions_sub = p.add_subparsers(dest="queues_command", metavar="{pause,resume}")
    for name, func, text in (
        ("pause", cmd_pause, "stop every replica claiming QUEUE's jobs"),
        ("resume", cmd_resume, "let replicas claim QUEUE's jobs again"),
    ):
        a = actions_sub.add_parser(name, help=text)
        a.add_argument("queue", metavar="QUEUE")
        a.set_defaults(func=func)
