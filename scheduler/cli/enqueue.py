"""``scheduler enqueue``: one job of a task, by the task's name.

    scheduler enqueue TASK [--args JSON] [--at ISO8601 | --in DURATION] [--queue Q]
                      [--priority N] [--max-attempts N] [--idempotency-key K]
                      [--unique-for DURATION] [--on-conflict return|replace|raise]
                      [--concurrency-key K]
                      [--config FILE] [--import MODULE ...] [--json]

Task modules are imported as for ``scheduler tasks list`` (:func:`.tasks.import_task_modules`).
``enqueue`` checks every input before it connects (one line naming the input and the reason,
exit 2, nothing inserted), checks the database like the other operator commands (unreachable
or not migrated: exit 1), then inserts as :func:`scheduler.jobs.enqueue_result` does.
With task modules imported, an unregistered TASK is refused with the closest registered names
and ``--args`` are bound against the handler's signature
(:class:`~scheduler.errors.TaskArgumentsError`, exit 2) before connecting; without, neither
is checked here and a warning says so.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .. import enqueueing, limits, operations, preparation, tasks
from ..arguments import args_json
from ..connections import close_default_pools, set_default_database_url
from ..errors import InvalidArgumentError, TaskArgumentsError
from ..job_inserts import Enqueued
from .common import cell, int_in, resolve_database_url, settings_from
from .tasks import add_import_options, import_task_modules

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}  # fmt: skip


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidArgumentError(f"--args: key {limits.shown(key)} appears twice")
        out[key] = value
    return out


def parse_args_json(text: str | None) -> dict[str, Any]:
    """``--args``: a JSON object of keyword arguments (``{}`` when ``None``), checked with
    :func:`scheduler.arguments.args_json` (what PostgreSQL ``jsonb`` can store).

    Raises:
        InvalidArgumentError: not JSON, not an object, a key given twice, nested too
            deeply, a number too large, NaN/Infinity, NUL (``\\u0000``) or an unpaired
            surrogate; the message starts with ``--args`` and says where.
    """
    if text is None:
        return {}
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"--args {limits.shown(text)} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidArgumentError("--args is nested too deeply to be stored") from None
    except InvalidArgumentError:  # a key given twice (_unique_keys)
        raise
    except ValueError:  # int(): more digits than Python converts (4,300 by default)
        raise InvalidArgumentError("--args holds a number with too many digits") from None
    if not isinstance(value, dict):
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        raise InvalidArgumentError(
            f"--args must be a JSON object of keyword arguments, e.g. '{{\"order_id\": 42}}', "
            f"not a JSON {kind} {limits.shown(text)}"
        )
    args_json(value, "--args")  # InvalidArgumentError: "--args.to[0]: ..."
    return value


def parse_delay(delay: str | None) -> float:
    """``--in``: a duration (see :func:`scheduler.operations.parse_duration`) in seconds, ``0``
    when ``None``; counted from the database's clock at the insert, as ``schedule_in`` does.

    Raises:
        InvalidArgumentError: not a positive duration of at most 100 years.
    """
    if delay is None:
        return 0.0
    try:
        return operations.parse_duration(delay)
    except ValueError as exc:
        raise InvalidArgumentError(f"--in {exc}") from None


def parse_run_at(at: str | None) -> datetime | None:
    """``--at``: an ISO 8601 instant with ``Z`` or an offset, or ``None`` (due now, by the
    database clock).

    Raises:
        InvalidArgumentError: not ISO 8601, or no offset (the message shows how to add one).
    """
    if at is None:
        return None
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise InvalidArgumentError(
            f"--at {limits.shown(at)} is not an ISO 8601 instant: use e.g. "
            "2030-01-01T09:00:00Z or 2030-01-01T09:00:00+02:00"
        ) from None
    if when.utcoffset() is None:
        raise InvalidArgumentError(
            f"--at {limits.shown(at)} has no UTC offset, so the instant is ambiguous: add Z "
            f"for UTC or an offset, e.g. {when.isoformat()}Z or {when.isoformat()}+02:00"
        )
    return when


def check_task_known(name: str, modules: list[str]) -> None:
    """With task ``modules`` imported, refuse a ``name`` none of them registered; without,
    warn on stderr that ``name`` is not checked.

    Raises:
        InvalidArgumentError: ``name`` is not registered; the message lists the closest
            registered names (or some of them).
    """
    if not modules:
        print(
            f"warning: TASK {limits.shown(name)} and its --args are not checked: no task module "
            "imported (give --import MODULE or --config FILE to check them)",
            file=sys.stderr,
        )
        return
    registered = sorted(tasks.registered_tasks())
    if name in registered:
        return
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(map(repr, close))}?"
    elif registered:
        more = ", ..." if len(registered) > 10 else ""
        hint = f"registered: {', '.join(registered[:10])}{more}"
    else:
        hint = "they register no task"
    raise InvalidArgumentError(
        f"TASK {limits.shown(name)} is not registered by {', '.join(modules)}: {hint}"
    )


async def _nothing(conn: Any, store: Any) -> None:
    return None


def _check_names(args: argparse.Namespace) -> None:
    limits.check_task_name(args.task, "TASK")
    if args.queue is not None:
        limits.check_queue(args.queue, "--queue")
    if args.idempotency_key is not None:
        limits.check_idempotency_key(args.idempotency_key, "--idempotency-key")
    if args.concurrency_key is not None:
        limits.check_concurrency_key(args.concurrency_key, "--concurrency-key")


def cmd_enqueue(args: argparse.Namespace) -> int:
    _check_names(args)
    job_args = parse_args_json(args.args)
    unique_for_s = unique_option(args)
    delay_s = parse_delay(args.delay)
    run_at = parse_run_at(args.at)
    settings = settings_from(args)
    check_task_known(args.task, import_task_modules(args))
    spec = tasks.registered_tasks().get(args.task)
    if spec is not None:  # before connecting: exit 2 even when the database is down
        try:
            spec.bind((), job_args)
        except TaskArgumentsError as exc:
            raise TaskArgumentsError(f"--args: {exc}") from None
    logging.getLogger("psycopg").setLevel(logging.ERROR)  # our message is the one line
    url = resolve_database_url(settings)
    asyncio.run(operations.session(url, settings, _nothing))  # reachable, migrated: else exit 1
    set_default_database_url(url)
    try:
        job = preparation.prepare(args.task, (), job_args, run_at=run_at, delay_s=delay_s,
                                  queue=args.queue, priority=args.priority,
                                  max_attempts=args.max_attempts,
                                  idempotency_key=args.idempotency_key,
                                  unique_for_s=unique_for_s, on_conflict=args.on_conflict,
                                  concurrency_key=args.concurrency_key)  # fmt: skip
        done = enqueueing.insert_result(job, None)
    finally:
        close_default_pools()
    return _report(args, url, settings, done, run_at)


def _report(
    args: argparse.Namespace, url: str, settings: Any, done: Enqueued, run_at: datetime | None
) -> int:
    """Print the job's id (or, with ``--json``, its stored row), and a note on stderr when an
    idempotency key's holder was returned instead of a new job."""
    job_id = done.id
    if not done.created:
        what = "its arguments were replaced" if done.replaced else "nothing was inserted"
        print(f"note: job {job_id} ({done.existing_state}) holds idempotency key "
              f"{limits.shown(args.idempotency_key)}: {what}", file=sys.stderr)  # fmt: skip
    if not args.json:
        print(job_id)
        return 0

    async def job_row(conn: Any, store: Any) -> Any:
        return await store.fetch(conn, "job_get", {"id": job_id})

    rows: list[dict[str, Any]] = asyncio.run(operations.session(url, settings, job_row))
    # the stored row: with --idempotency-key it may be a job enqueued earlier
    row = rows[0] if rows else {"task": args.task, "run_at": run_at}
    when = row["run_at"]
    due = when.astimezone(UTC).isoformat() if isinstance(when, datetime) else cell(when)
    out = {"id": job_id, "task": row["task"], "run_at": due}
    if args.idempotency_key is not None:  # the job may be one enqueued earlier: say which
        out.update(created=done.created, existing_state=done.existing_state,
                   replaced=done.replaced)  # fmt: skip
    print(json.dumps(out))
    return 0


def unique_option(args: argparse.Namespace) -> float | None:
    """``--unique-for`` in seconds (``None`` when not given), checked with ``--on-conflict``
    against ``--idempotency-key`` before connecting (InvalidArgumentError: exit 2)."""
    seconds = None
    if args.unique_for is not None:
        try:
            seconds = operations.parse_duration(args.unique_for)
        except ValueError as exc:
            raise InvalidArgumentError(f"--unique-for {exc}") from None
        if seconds > limits.DURATION_MAX_S:
            raise InvalidArgumentError(
                f"--unique-for {limits.shown(args.unique_for)}: at most 10 years"
            )
    if args.idempotency_key is None and (seconds is not None or args.on_conflict != "return"):
        given = "--unique-for" if seconds is not None else "--on-conflict"
        raise InvalidArgumentError(f"{given} needs --idempotency-key: it applies to the key")
    return seconds


def add_parsers(sub: Any) -> None:
    """Register ``enqueue`` on the ``scheduler`` parser."""
    p = sub.add_parser("enqueue", help="enqueue one job of TASK; prints its id")
    p.add_argument("task", metavar="TASK", help="registered task name")
    p.add_argument("--args", help='keyword arguments as a JSON object, e.g. \'{"to": "a@b"}\'')
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", help="due instant, ISO 8601 with Z or an offset (default: now)")
    when.add_argument("--in", dest="delay", metavar="DURATION", help="due in 30s, 5m, 2h, P1D...")
    p.add_argument("--queue", help="queue (default: the task's, else default)")
    p.add_argument(
        "--priority",
        type=int_in(limits.INT32_MIN, limits.INT32_MAX),
        help="lower runs first (default: the task's, else 0)",
    )
    p.add_argument(
        "--max-attempts",
        type=int_in(1, limits.INT32_MAX),
        help="attempts before dead-lettering (default: the task's, else SCHEDULER_MAX_ATTEMPTS)",
    )
    p.add_argument("--idempotency-key", help="while a live job holds it, return that job's id")
    p.add_argument(
        "--concurrency-key",
        metavar="K",
        help="the job's key for its queue's key_concurrency limit (at most that many running "
        "jobs per key, e.g. per customer; see SCHEDULER_QUEUE_LIMITS)",
    )
    p.add_argument(
        "--unique-for",
        metavar="DURATION",
        help="with --idempotency-key: no second job with the key for DURATION (30s, 5m, 2h, "
        "P1D...) after the first one's creation, whatever its state",
    )
    p.add_argument(
        "--on-conflict",
        choices=preparation.ON_CONFLICT,
        default="return",
        help="when the key is held: return the job's id (default), replace a pending job's "
        "args/due time/priority, or raise (exit 1)",
    )
    add_import_options(p)
    p.set_defaults(func=cmd_enqueue)
