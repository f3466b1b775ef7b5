"""A schedules file into the database: by the leader when it is elected, or at once by
``scheduler schedules apply FILE [--dry-run]``.

Both reconcile the file's schedules (:func:`scheduler.schedules.reconcile`) and record the
file in the one-row ``schedules_file`` table (its config hash, path, ``applied_by`` =
``leader`` or ``apply``, when). The rule between them:

* until a file is applied with ``schedules apply``, each newly elected leader reconciles its
  own file (the leader's file wins, as before);
* once a file was applied, a leader whose own file differs leaves the schedules as applied
  and logs ``schedules_file_differs`` at error level, once per term, naming both files: a
  replica still running an old file (a rolling deploy) cannot undo a deploy's apply. A
  leader whose file is the applied one reconciles it (a no-op). The next apply wins again.

Both also apply the file's ``queues:`` limits (:func:`scheduler.flow.apply_declared_limits`)
in the same transaction. ``apply`` computes its diff inside its transaction: the schedules added, changed and
removed, with each one's next fire times before and after, read back from the table after
the reconcile, so the preview is what the leader will run (``--dry-run`` rolls back).
A name declared in the file that is a runtime (API) schedule is refused before anything is
written (:class:`~scheduler.errors.ScheduleSourceError`, naming both sources).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from .config import SchedulesConfig
from .errors import ScheduleSourceError
from .queue_limits import DeclaredLimits, apply_declared_limits
from .schedule_operations import preview, row_fire_times
from .schedules import ReconcileResult, notify, reconcile
from .settings import Settings
from .store import Store

PREVIEW_COUNT = 3  # next fire times shown per changed schedule


@dataclass(frozen=True)
class Change:
    """One schedule's change: ``kind`` is ``"added"``, ``"rescheduled"`` (its timing changed),
    ``"updated"`` (another field) or ``"removed"``; ``before`` / ``after`` its next fire times
    (aware, in its zone; empty when it does not exist, is disabled or paused)."""

    name: str
    kind: str
    before: list[datetime]
    after: list[datetime]


@dataclass
class ApplyResult:
    """What ``schedules apply`` changed (or would change, with ``dry_run``)."""

    path: str
    config_hash: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    #: the file's ``queues:`` section as applied (:func:`scheduler.flow.apply_declared_limits`)
    limits: DeclaredLimits | None = None


async def applied_file(conn: psycopg.AsyncConnection[Any], store: Store) -> dict[str, Any] | None:
    """The ``schedules_file`` row (``config_hash``, ``path``, ``applied_by``, ``applied_at``),
    or None when no file was ever written."""
    rows = await store.fetch(conn, "schedules_file_get")
    return rows[0] if rows else None


async def reconcile_file(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    config: SchedulesConfig,
    *,
    now: datetime,
    settings: Settings,
    applied_by: str,
) -> ReconcileResult:
    """Reconcile ``config`` and record it as the applied file, in the caller's transaction."""
    config_hash = config.config_hash()
    result = await reconcile(conn, store, config.schedules, now=now, settings=settings,
                             config_hash=config_hash)  # fmt: skip
    await conn.execute(store.q["schedules_file_set"], {
        "config_hash": config_hash, "path": config.path or "<unknown>", "applied_by": applied_by})  # fmt: skip
    return result


def _next_times(row: dict[str, Any] | None, count: int) -> list[datetime]:
    if row is None or row["next_run_at"] is None or row["paused_at"] is not None:
        return []
    times = row_fire_times(row)
    first = row["next_run_at"].astimezone(times.timezone)
    return [first, *preview(times, row["next_run_at"], count - 1)]


async def apply(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    config: SchedulesConfig,
    *,
    settings: Settings,
    dry_run: bool,
) -> ApplyResult:
    """Reconcile ``config`` into the database now (in one transaction; rolled back when
    ``dry_run``), record it as the applied file and wake the leader.

    Raises:
        ScheduleSourceError: a declared name is a runtime (API) schedule; nothing written.
    """
    result = ApplyResult(config.path or "<unknown>", config.config_hash(), dry_run)
    async with conn.transaction(force_rollback=dry_run):
        await conn.execute(store.q["schedules_write_lock"], {"key": store.schedules_key})
        before = {r["name"]: r for r in await store.fetch(conn, "schedules_list")}
        clash = [s.name for s in config.schedules if before.get(s.name, {}).get("source") == "api"]
        if clash:
            raise ScheduleSourceError(
                f"{result.path} declares {', '.join(map(repr, clash))}, which "
                f"{'is a runtime (api) schedule' if len(clash) == 1 else 'are runtime (api) schedules'}"
                " created with put_schedule / `scheduler schedules create`: a name belongs to one "
                "source; rename it in the file, or remove the runtime schedule first. Nothing was "
                "applied"
            )
        now = await store.database_now(conn)
        done = await reconcile_file(conn, store, config, now=now, settings=settings,
                                    applied_by="apply")  # fmt: skip
        after = {r["name"]: r for r in await store.fetch(conn, "schedules_list")}
        kinds = [("added", done.added), ("rescheduled", done.rescheduled),
                 ("updated", done.updated), ("removed", done.removed)]  # fmt: skip
        for kind, names in kinds:
            for name in names:
                result.changes.append(Change(name, kind, _next_times(before.get(name), PREVIEW_COUNT),
                                             _next_times(after.get(name), PREVIEW_COUNT)))  # fmt: skip
        result.unchanged = len(config.schedules) - sum(len(n) for k, n in kinds if k != "removed")
        result.limits = await apply_declared_limits(conn, store, config.queues)
        if result.changes:
            await notify(conn, store, "")
    return result
