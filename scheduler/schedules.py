"""Reconcile the declared schedules (YAML) with the ``schedules`` table.

Run by the leader when it is elected, in one transaction on its lock session, fenced by its
term. Rules:

* a declared schedule that is new gets ``next_run_at`` = its first fire time after now;
* a changed cron expression or time zone recomputes ``next_run_at`` from now (no catch-up
  burst for fire times of the old definition); so does a changed ``every`` or ``start_at``
  of an interval schedule, or a switch between cron and ``every`` (the zone of an interval
  schedule only displays its fire times: changing it changes nothing else);
* an interval schedule (``every``) fires at ``start_at + k * every`` (``k >= 0``); without
  ``start_at`` its first fire time is one interval after it is stored (or re-planned, or
  re-enabled), and its grid is anchored at its ``next_run_at`` (``start_at`` column NULL);
* any other change (task, args, queue, retry policy) keeps ``next_run_at``;
* a disabled schedule has ``next_run_at = NULL``; re-enabling computes it from now;
* a schedule that came from a config file and is no longer declared is deleted, so it stops
  firing; its jobs keep their state (jobs reference schedules by name only).

"now" is the database clock, passed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from .arguments import to_jsonb
from .config import ScheduleConfig
from .cron import Cron
from .cron_count import FireTimes, fire_times_of
from .registry import get_task
from .settings import Settings
from .store import Store


@dataclass
class ReconcileResult:
    """Names of the schedules each reconcile step touched."""

    added: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: schedules last written by a different schedules file (another replica's config, or
    #: this file before it was edited)
    from_other_config: list[str] = field(default_factory=list)
    #: the config hashes of those other files
    other_config_hashes: set[str] = field(default_factory=set)


def _enum_value(value: Any, default: str) -> str:
    return default if value is None else str(getattr(value, "value", value))


def resolve(schedule: ScheduleConfig, settings: Settings) -> dict[str, Any]:
    """The row values of a declared schedule: its own fields, else its task's defaults, else
    the service settings."""
    try:
        task = get_task(schedule.task)
    except LookupError:
        task = None

    def pick(attr: str, fallback: Any) -> Any:
        value = getattr(schedule, attr)
        if value is not None:
            return value
        task_value = getattr(task, attr, None) if task else None
        return task_value if task_value is not None else fallback

    row = {
        "name": schedule.name,
        "cron": schedule.cron,
        "every_s": schedule.every,
        "start_at": schedule.start_at.isoformat() if schedule.start_at else None,
        "timezone": schedule.timezone,
        "task": schedule.task,
        "args": dict(schedule.args or {}),
        "queue": pick("queue", "default"),
        "priority": pick("priority", 0),
        "max_attempts": pick("max_attempts", settings.max_attempts),
        "backoff_base_s": float(pick("backoff_base_s", settings.backoff_base_s)),
        "backoff_max_s": float(pick("backoff_max_s", settings.backoff_max_s)),
        "backoff_jitter": float(pick("backoff_jitter", settings.backoff_jitter)),
        "misfire_policy": _enum_value(schedule.misfire_policy, "run_once"),
        "overlap_policy": _enum_value(schedule.overlap_policy, "allow"),
        "max_catch_up": schedule.max_catch_up or settings.max_catch_up,
        "misfire_grace_s": float(
            settings.misfire_grace_s
            if schedule.misfire_grace_s is None
            else schedule.misfire_grace_s
        ),
        "starting_deadline_s": schedule.starting_deadline_s,
        "enabled": schedule.enabled,
    }
    # timing fields only when set: a cron schedule keeps the hash it had before intervals
    hashed = {k: v for k, v in row.items() if v is not None or k not in _TIMING}
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    row["definition_hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    row["start_at"] = schedule.start_at
    return row


_TIMING = ("cron", "every_s", "start_at")


def _timing(cron: str | None, timezone: str, every_s: float | None, start_at: Any) -> Any:
    """What decides a schedule's fire times (an interval's zone does not)."""
    return (cron, timezone if cron is not None else None, every_s, start_at)


async def reconcile(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    declared: list[ScheduleConfig],
    *,
    now: datetime,
    settings: Settings,
    config_hash: str | None,
) -> ReconcileResult:
    """Upsert ``declared`` into the schedules table and delete undeclared config schedules.

    Must run inside the caller's transaction (the leader's fenced one). ``now`` is the
    database clock (aware datetime).
    """
    result = ReconcileResult()
    existing = {row["name"]: row for row in await store.fetch(conn, "schedules_for_reconcile")}
    for schedule in declared:
        row = resolve(schedule, settings)
        old = existing.get(schedule.name)
        if old is not None and old["config_hash"] not in (None, config_hash):
            result.from_other_config.append(schedule.name)
            result.other_config_hashes.add(old["config_hash"])
        timing_changed = old is None or _timing(
            old["cron"], old["timezone"], old["every_s"], old["start_at"]
        ) != _timing(schedule.cron, schedule.timezone, schedule.every, schedule.start_at)
        if not schedule.enabled:
            next_run_at = None
        elif old is None or timing_changed or old["next_run_at"] is None:
            next_run_at = schedule.fire_times(now).next_after(now)
        else:
            next_run_at = old["next_run_at"]
        if old is None:
            result.added.append(schedule.name)
        elif timing_changed:
            result.rescheduled.append(schedule.name)
        elif old["definition_hash"] != row["definition_hash"]:
            result.updated.append(schedule.name)
        await conn.execute(
            store.q["schedule_upsert"],
            {
                **row,
                "args": to_jsonb(row["args"]),
                "config_hash": config_hash,
                "next_run_at": next_run_at,
                "source": "config",
            },
        )
    removed = await store.fetch(
        conn, "schedules_delete_undeclared", {"names": [s.name for s in declared]}
    )
    result.removed = [r["name"] for r in removed]
    return result


# ---- operations on schedules (CLI: scheduler schedules ...) -----------------------------------


def preview(cron: Cron | FireTimes, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after``, as aware datetimes in the
    schedule's zone (so their UTC offset shows). Same code path as the materialiser
    (:meth:`Cron.next_after`, :meth:`Interval.next_after <scheduler.interval.Interval>`)."""
    cron = fire_times_of(cron)
    out: list[datetime] = []
    current = after
    for _ in range(count):
        current = cron.next_after(current)
        out.append(current.astimezone(cron.timezone))
    return out


async def list_schedules(conn: psycopg.AsyncConnection[Any], store: Store) -> list[dict[str, Any]]:
    """Every row of the schedules table, by name."""
    return await store.fetch(conn, "schedules_list")


async def pause(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> bool:
    """Stop materialising ``name`` until :func:`resume`; False if there is no such schedule.
    The pause survives reconciliation (the YAML's ``enabled`` is a separate switch)."""
    return bool(await store.fetch(conn, "schedule_pause", {"name": name}))


async def resume(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> bool:
    """Resume ``name``; fire times missed while paused go through its misfire policy at the
    next tick. False if there is no such schedule."""
    return bool(await store.fetch(conn, "schedule_resume", {"name": name}))


async def trigger(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> int | None:
    """Enqueue a job of ``name`` to run now (``origin = 'trigger'``, recorded in the same
    history), without moving ``next_run_at``. Returns the job id, or ``None`` when the
    schedule has ``overlap_policy: skip`` and a job of it is pending or running.

    Raises:
        LookupError: there is no schedule ``name``.
    """
    rows = await store.fetch(conn, "schedule_trigger", {"name": name})
    if rows:
        return int(rows[0]["id"])
    if not any(r["name"] == name for r in await list_schedules(conn, store)):
        raise LookupError(f"no schedule named {name!r}")
    return None
