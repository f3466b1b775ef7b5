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
  firing; its jobs keep their state (jobs reference schedules by name only);
* a runtime schedule (``source = 'api'``, :func:`put`) is never deleted or changed by a
  schedules file: a declared name that is a runtime schedule is left alone and reported
  (:attr:`ReconcileResult.conflicts`, naming both sources).

Every writer of the table (reconcile, :func:`put`, :func:`remove`) first takes the
transaction-level advisory lock ``schedules_write_lock``, and :func:`put` / :func:`remove`
notify ``<schema>.schedules`` so the leader plans the change at once instead of at its next
heartbeat (the workers' LISTEN connection wakes it: :mod:`scheduler.service`). The
operators' actions on a stored schedule (pause, resume, trigger, backfill, its next fire
times) are :mod:`scheduler.schedule_operations`.

"now" is the database clock, passed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg

from .arguments import to_jsonb
from .config import ScheduleConfig
from .errors import ScheduleSourceError
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
    #: declared names that are runtime (API) schedules: left as they are
    conflicts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScheduleWrite:
    """What :func:`put` did. ``action``: ``"created"``, ``"rescheduled"`` (its timing changed:
    ``next_run_at`` recomputed from now), ``"updated"`` (another field changed; ``next_run_at``
    kept) or ``"unchanged"``. ``next_run_at``: its next fire time (aware, UTC; ``None`` when
    disabled)."""

    name: str
    action: Literal["created", "rescheduled", "updated", "unchanged"]
    next_run_at: datetime | None


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
        # alerts (scheduler.alerts); the on_alert job's options as enqueue(on_alert) would
        # choose them: its @task defaults, else queue 'default' and the settings (JSON text)
        "alert_after_s": schedule.alert_after_s,
        "alert_on_failures": schedule.alert_on_failures,
        "pause_on_failures": schedule.pause_on_failures,
        "on_alert": schedule.on_alert,
        "on_alert_options": _alert_job_options(schedule.on_alert, settings),
    }
    # timing and alert fields only when set: a schedule keeps the hash it had before them
    optional = (*_TIMING, "alert_after_s", "alert_on_failures", "pause_on_failures",
                "on_alert", "on_alert_options")  # fmt: skip
    hashed = {k: v for k, v in row.items() if v is not None or k not in optional}
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    row["definition_hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    row["start_at"] = schedule.start_at
    return row


_TIMING = ("cron", "every_s", "start_at")


def _alert_job_options(on_alert: str | None, settings: Settings) -> str | None:
    """The job options of a schedule's ``on_alert`` task, as JSON text (``None`` without
    one): the registered task's defaults, else queue ``default`` and the service settings."""
    if on_alert is None:
        return None
    try:
        task = get_task(on_alert)
    except LookupError:
        task = None

    def pick(attr: str, fallback: Any) -> Any:
        value = getattr(task, attr, None) if task else None
        return fallback if value is None else value

    return json.dumps({
        "queue": pick("queue", "default"), "priority": pick("priority", 0),
        "max_attempts": pick("max_attempts", settings.max_attempts),
        "backoff_base_s": float(pick("backoff_base_s", settings.backoff_base_s)),
        "backoff_max_s": float(pick("backoff_max_s", settings.backoff_max_s)),
        "backoff_jitter": float(pick("backoff_jitter", settings.backoff_jitter)),
    }, sort_keys=True)  # fmt: skip


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
    await conn.execute(store.q["schedules_write_lock"], {"key": store.schedules_key})
    existing = {row["name"]: row for row in await store.fetch(conn, "schedules_for_reconcile")}
    for schedule in declared:
        old = existing.get(schedule.name)
        if old is not None and old["source"] == "api":
            result.conflicts.append(schedule.name)
            continue
        if old is not None and old["config_hash"] not in (None, config_hash):
            result.from_other_config.append(schedule.name)
            result.other_config_hashes.add(old["config_hash"])
        action, _ = await _write(conn, store, schedule, old, now, settings, config_hash, "config")
        if action != "unchanged":
            getattr(result, "added" if action == "created" else action).append(schedule.name)
    removed = await store.fetch(
        conn, "schedules_delete_undeclared", {"names": [s.name for s in declared]}
    )
    result.removed = [r["name"] for r in removed]
    return result


async def _write(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    schedule: ScheduleConfig,
    old: dict[str, Any] | None,
    now: datetime,
    settings: Settings,
    config_hash: str | None,
    source: Literal["config", "api"],
) -> tuple[Literal["created", "rescheduled", "updated", "unchanged"], datetime | None]:
    """Upsert one schedule of ``source`` over its ``old`` row;
    what changed and its ``next_run_at`` (rules in the module docstring)."""
    row = resolve(schedule, settings)
    timing_changed = old is None or _timing(
        old["cron"], old["timezone"], old["every_s"], old["start_at"]
    ) != _timing(schedule.cron, schedule.timezone, schedule.every, schedule.start_at)
    if not schedule.enabled:
        next_run_at = None
    elif old is None or timing_changed or old["next_run_at"] is None:
        next_run_at = schedule.fire_times(now).next_after(now)
    else:
        next_run_at = old["next_run_at"]
    params = {
        **row,
        "args": to_jsonb(row["args"]),
        "config_hash": config_hash,
        "next_run_at": next_run_at,
        "source": source,
    }
    await conn.execute(store.q["schedule_upsert"], params)
    if old is None:
        return "created", next_run_at
    if timing_changed:
        return "rescheduled", next_run_at
    if old["definition_hash"] != row["definition_hash"] or old["enabled"] != schedule.enabled:
        return "updated", next_run_at
    return "unchanged", next_run_at


# ---- runtime schedules (scheduler.schedule_control, scheduler schedules create ...) -------


async def _locked_row(
    conn: psycopg.AsyncConnection[Any], store: Store, name: str
) -> dict[str, Any] | None:
    """Take the schedules write lock; ``name``'s row, locked, or None."""
    await conn.execute(store.q["schedules_write_lock"], {"key": store.schedules_key})
    rows = await store.fetch(conn, "schedule_row", {"name": name})
    return rows[0] if rows else None


def _declared_elsewhere(name: str, row: dict[str, Any], what: str) -> ScheduleSourceError:
    source = f"schedules file (config hash {str(row['config_hash'])[:12]})"
    return ScheduleSourceError(
        f"schedule {name!r} is declared in a {source}, so it cannot {what} as a runtime (api) "
        "schedule: a name belongs to one source; change the schedules file, or pick another "
        "name"
    )


async def notify(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> None:
    """Wake the leader (at the commit): schedule ``name`` was written."""
    await conn.execute(store.q["schedules_notify"], {"channel": store.schedules_channel,
                                                     "name": name})  # fmt: skip


async def put(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    schedule: ScheduleConfig,
    *,
    settings: Settings,
    now: datetime | None = None,
) -> ScheduleWrite:
    """Create or update the runtime schedule ``schedule`` (``source = 'api'``), by the rules
    of the module docstring, in the caller's transaction; the leader is notified. ``now``:
    the database clock when None.

    Raises:
        ScheduleSourceError: a schedules file declares this name.
    """
    old = await _locked_row(conn, store, schedule.name)
    if old is not None and old["source"] != "api":
        raise _declared_elsewhere(schedule.name, old, "be created or changed")
    now = now if now is not None else await store.database_now(conn)
    action, next_run_at = await _write(conn, store, schedule, old, now, settings, None, "api")
    if action != "unchanged":
        await notify(conn, store, schedule.name)
    return ScheduleWrite(schedule.name, action, next_run_at)


async def remove(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> bool:
    """Delete the runtime schedule ``name`` (its jobs keep their state and history); False
    if there is no such schedule.

    Raises:
        ScheduleSourceError: ``name`` comes from a schedules file (remove it there).
    """
    old = await _locked_row(conn, store, name)
    if old is None:
        return False
    if old["source"] != "api":
        raise _declared_elsewhere(name, old, "be removed")
    await store.fetch(conn, "schedule_delete_api", {"name": name})
    await notify(conn, store, name)
    return True
