"""Reconcile the declared schedules (YAML) with the ``schedules`` table.

Run by the leader when it is elected, in one transaction on its lock session, fenced by its
term. Rules:

* a declared schedule that is new gets ``next_run_at`` = its first fire time after now;
* a changed cron expression or time zone recomputes ``next_run_at`` from now (no catch-up
  burst for fire times of the old definition);
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

from .config import ScheduleConfig
from .cron import Cron
from .jobs import to_jsonb
from .settings import Settings
from .store import Store
from .tasks import get_task


@dataclass
class ReconcileResult:
    """Names of the schedules each reconcile step touched."""

    added: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


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
        "timezone": schedule.timezone,
        "task": schedule.task,
        "args": dict(schedule.args or {}),
        "queue": pick("queue", "default"),
        "priority": pick("priority", 0),
        "max_attempts": pick("max_attempts", settings.max_attempts),
        "backoff_base_s": float(pick("backoff_base_s", settings.backoff_base_s)),
        "backoff_max_s": float(pick("backoff_max_s", settings.backoff_max_s)),
        "backoff_jitter": float(pick("backoff_jitter", settings.backoff_jitter)),
        "enabled": schedule.enabled,
    }
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"))
    row["definition_hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    return row


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
        timing_changed = old is None or (old["cron"], old["timezone"]) != (
            schedule.cron,
            schedule.timezone,
        )
        if not schedule.enabled:
            next_run_at = None
        elif timing_changed or old["next_run_at"] is None:
            next_run_at = Cron(schedule.cron, schedule.timezone).next_after(now)
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
            },
        )
    removed = await store.fetch(
        conn, "schedules_delete_undeclared", {"names": [s.name for s in declared]}
    )
    result.removed = [r["name"] for r in removed]
    return result
