"""The limits of flow control per queue (:mod:`scheduler.flow` enforces them in the claim):
declared, checked and stored in the ``queues`` table.

A queue may declare any of three limits (a queue that declares none is unlimited and is
claimed exactly as before, without a lock):

=================  ===========================================================================
limit              meaning
=================  ===========================================================================
concurrency        at most N jobs of the queue running at once, on all replicas together
                   (jobs of a dead replica count until the leader rescues them)
rate, per_s        at most ``rate`` starts (attempts claimed) in any window of ``per_s``
                   seconds (a sliding window, not a calendar one)
key_concurrency    at most N running jobs per ``concurrency_key`` (set at enqueue, e.g. the
                   customer id); jobs without a key are bound by the other limits only
=================  ===========================================================================

Declared with :func:`set_queue_limits` / :func:`set_queue_limits_async` (written at once,
``source = 'api'``) or the ``SCHEDULER_QUEUE_LIMITS`` setting, a JSON object
``{"mail": {"concurrency": 5, "rate": 100, "per_s": 60, "key_concurrency": 1}}`` written by
:func:`apply_settings_limits` (``source = 'settings'``; a queue removed from the setting loses
its limits, a limit set from the API is left alone). Both replace every limit of the queue.

Every value is checked before any SQL (:class:`~scheduler.errors.InvalidArgumentError`
naming the queue, the field and the reason).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from .adapters import AsyncConnectionLike, SyncConnectionLike
from .connections import check_connection, on_async_connection, on_connection
from .errors import InvalidArgumentError
from .limits import DURATION_MAX_S, INT32_MAX, check_int, check_queue, shown
from .settings import get_settings
from .store import Store

PER_S_MIN = 0.01  # shortest rate window, seconds (starts are counted in buckets of per_s/100, at least 1 ms)
QUEUES_MAX = 1000  # queues in SCHEDULER_QUEUE_LIMITS
LIMIT_FIELDS = ("concurrency", "rate", "per_s", "key_concurrency")


@dataclass(frozen=True)
class QueueLimits:
    """The limits of one queue; ``None``: not limited that way.

    Attributes:
        concurrency: running jobs of the queue at once, all replicas (1 .. 2**31-1).
        rate: starts per window of ``per_s`` seconds (1 .. 2**31-1); with ``per_s``.
        per_s: the window of ``rate``, in seconds (0.01 .. 10 years); with ``rate``.
        key_concurrency: running jobs per ``concurrency_key`` (1 .. 2**31-1).
    """

    concurrency: int | None = None
    rate: int | None = None
    per_s: float | None = None
    key_concurrency: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.concurrency is None and self.rate is None and self.key_concurrency is None


def _per_s(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(
            f"{what} must be a number of seconds, not {type(value).__name__} {shown(value)}"
        )
    if not math.isfinite(value) or not PER_S_MIN <= value <= DURATION_MAX_S:
        raise InvalidArgumentError(
            f"{what} {shown(value)} is out of range {PER_S_MIN} .. {DURATION_MAX_S:,.0f} seconds"
        )
    return float(value)


def check_limit(queue: str, field: str, value: Any) -> Any:
    """One limit of ``queue`` (a checked name), ``field`` one of :data:`LIMIT_FIELDS`:
    ``None`` (not limited that way), an ``int`` from 1 to 2**31-1, or for ``per_s`` a finite
    number of seconds from 0.01 to 10 years (returned as ``float``).

    Raises:
        InvalidArgumentError: an unknown field, or a value out of those bounds; the message
            names the queue and the field.
    """
    where = f"queue {queue!r}: {field}"
    if field not in LIMIT_FIELDS:
        raise InvalidArgumentError(f"queue {queue!r}: unknown field {shown(field)}")
    if value is None:
        return None
    if field == "per_s":
        return _per_s(value, where)
    return check_int(value, where, 1, INT32_MAX)


def check_queue_limits(
    queue: Any,
    *,
    concurrency: Any = None,
    rate: Any = None,
    per_s: Any = None,
    key_concurrency: Any = None,
) -> tuple[str, QueueLimits]:
    """Check a queue name and its limits; returns ``(queue, QueueLimits)``.

    Raises:
        InvalidArgumentError: a bad queue name, a limit that is not an ``int`` from 1 to
            2,147,483,647, ``per_s`` not a finite number from 0.01 to 10 years, or ``rate``
            without ``per_s`` (or the reverse).
    """
    name = check_queue(queue)
    where = f"queue {name!r}:"
    limits = QueueLimits(
        concurrency=check_limit(name, "concurrency", concurrency),
        rate=check_limit(name, "rate", rate),
        per_s=check_limit(name, "per_s", per_s),
        key_concurrency=check_limit(name, "key_concurrency", key_concurrency),
    )
    if (limits.rate is None) != (limits.per_s is None):
        raise InvalidArgumentError(
            f"{where} rate and per_s go together (rate starts per per_s seconds): "
            f"got rate={limits.rate!r}, per_s={limits.per_s!r}"
        )
    return name, limits


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise InvalidArgumentError(f"{shown(key)} is given twice")
    return dict(pairs)


def parse_queue_limits(value: Any) -> dict[str, QueueLimits]:
    """``SCHEDULER_QUEUE_LIMITS``: a JSON object (or a mapping) of queue name to
    ``{"concurrency", "rate", "per_s", "key_concurrency"}``; returns queue -> limits.

    Raises:
        InvalidArgumentError: not JSON, not an object of objects, a key given twice, an
            unknown field, an entry without any limit, more than 1,000 queues, or a value
            :func:`check_queue_limits` refuses; the message names the queue and field.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value, object_pairs_hook=_no_duplicates)
        except InvalidArgumentError:
            raise
        except (ValueError, RecursionError) as exc:
            raise InvalidArgumentError(f"is not JSON: {shown(str(exc), 100)}") from None
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            'must be a JSON object such as {"mail": {"concurrency": 5}}, not '
            f"{type(value).__name__}"
        )
    if len(value) > QUEUES_MAX:
        raise InvalidArgumentError(f"names {len(value):,} queues, at most {QUEUES_MAX}")
    out: dict[str, QueueLimits] = {}
    for queue, fields in value.items():
        name = check_queue(queue)
        if not isinstance(fields, Mapping):
            raise InvalidArgumentError(
                f"queue {name!r} must map to an object of limits, not {type(fields).__name__}"
            )
        unknown = [k for k in fields if k not in LIMIT_FIELDS]
        if unknown:
            raise InvalidArgumentError(
                f"queue {name!r}: unknown field {shown(unknown[0])} (known: {', '.join(LIMIT_FIELDS)})"
            )
        _, limits = check_queue_limits(name, **fields)
        if limits.unlimited:
            raise InvalidArgumentError(
                f"queue {name!r} declares no limit (give concurrency, rate with per_s, or "
                "key_concurrency; leave the queue out for no limit)"
            )
        out[name] = limits
    return out


def _params(queue: str, limits: QueueLimits, source: str) -> dict[str, Any]:
    return {"queue": queue, "source": source, **asdict(limits)}


def _notice(store: Store, queue: str) -> dict[str, Any]:
    return {"channel": store.limits_channel, "queue": queue}


def _write_sync(conn: psycopg.Connection[Any], params: dict[str, Any], prepare: bool | None = False) -> None:
    store = Store(get_settings().schema_name)
    name = "queue_limits_delete" if params["unlimited"] else "queue_limits_set"
    with conn.transaction():  # the workers' NOTIFY goes out with the commit of the write
        conn.execute(store.q[name], params["row"], prepare=prepare)
        conn.execute(store.q["queue_limits_notify"], _notice(store, params["row"]["queue"]),
                     prepare=prepare)  # fmt: skip


async def _write(
    conn: psycopg.AsyncConnection[Any], params: dict[str, Any], prepare: bool | None = False
) -> None:
    store = Store(get_settings().schema_name)
    name = "queue_limits_delete" if params["unlimited"] else "queue_limits_set"
    async with conn.transaction():
        await conn.execute(store.q[name], params["row"], prepare=prepare)
        await conn.execute(store.q["queue_limits_notify"], _notice(store, params["row"]["queue"]),
                           prepare=prepare)  # fmt: skip


def _payload(
    queue: Any, concurrency: Any, rate: Any, per_s: Any, key_concurrency: Any
) -> dict[str, Any]:
    name, limits = check_queue_limits(
        queue, concurrency=concurrency, rate=rate, per_s=per_s, key_concurrency=key_concurrency
    )
    return {"unlimited": limits.unlimited, "row": _params(name, limits, "api")}


def set_queue_limits(
    queue: str,
    *,
    concurrency: int | None = None,
    rate: int | None = None,
    per_s: float | None = None,
    key_concurrency: int | None = None,
    connection: SyncConnectionLike | None = None,
) -> None:
    """Replace every limit of ``queue`` (all ``None``: no limit). Takes effect for the next
    claim of every replica. Runs on ``connection`` (inside its transaction) or the default
    pool (committed at once).

    Args:
        queue: queue name (:func:`scheduler.limits.check_queue`).
        concurrency: running jobs of the queue at once, all replicas together.
        rate: starts per ``per_s`` seconds (sliding window); needs ``per_s``.
        per_s: the rate's window in seconds (0.01 s .. 10 years).
        key_concurrency: running jobs per ``concurrency_key`` of the queue.

    Raises:
        InvalidArgumentError: a bad value (:func:`check_queue_limits`), or a bad connection.
        DatabaseNotConfiguredError, DatabaseUnavailableError, SchemaNotMigratedError: no
            connection given and the default database cannot be used.
    """
    check_connection(connection)
    payload = _payload(queue, concurrency, rate, per_s, key_concurrency)
    on_connection(connection, get_settings(), _write_sync, payload)


async def set_queue_limits_async(
    queue: str,
    *,
    concurrency: int | None = None,
    rate: int | None = None,
    per_s: float | None = None,
    key_concurrency: int | None = None,
    connection: AsyncConnectionLike | None = None,
) -> None:
    """Async twin of :func:`set_queue_limits` (an ``AsyncConnection``, or the default async
    pool of the running loop)."""
    check_connection(connection, is_async=True)
    payload = _payload(queue, concurrency, rate, per_s, key_concurrency)
    await on_async_connection(connection, get_settings(), _write, payload)


async def apply_settings_limits(
    conn: psycopg.AsyncConnection[Any], store: Store, limits: Mapping[str, QueueLimits]
) -> bool:
    """Write the limits of ``SCHEDULER_QUEUE_LIMITS`` (``settings.queue_limits``) in one
    transaction: each declared queue's row (``source = 'settings'``), and delete the rows a
    previous setting wrote for queues no longer declared; the workers are notified. Nothing
    is written (and no write privilege needed) when the table already holds exactly these
    settings rows. Idempotent; run by every replica at startup (:mod:`scheduler.service`).

    Returns:
        True when something was written.

    Raises:
        psycopg.errors.InsufficientPrivilege: a change is needed and the role may not write
            the ``queues`` table (nothing was written).
    """
    rows = await store.fetch(conn, "queue_limits_list")
    current = {r["name"]: QueueLimits(*(r[f] for f in LIMIT_FIELDS))
               for r in rows if r["source"] == "settings"}  # fmt: skip
    if current == dict(limits):
        return False
    async with conn.transaction():
        for queue, queue_limits in limits.items():
            await conn.execute(store.q["queue_limits_set"], _params(queue, queue_limits, "settings"))
        await conn.execute(store.q["queue_limits_prune_settings"], {"queues": list(limits)})
        await conn.execute(store.q["queue_limits_notify"], _notice(store, ""))
    return True


@dataclass(frozen=True)
class DeclaredLimits:
    """What :func:`apply_declared_limits` did, queue names sorted: ``written`` (set from the
    file), ``removed`` (no longer declared there) and ``overridden`` (declared in the file,
    left as ``SCHEDULER_QUEUE_LIMITS`` set them)."""

    written: list[str]
    removed: list[str]
    overridden: list[str]


async def apply_declared_limits(
    conn: psycopg.AsyncConnection[Any], store: Store, queues: Mapping[str, QueueLimits]
) -> DeclaredLimits:
    """Write the ``queues:`` section of a schedules file (:attr:`scheduler.config.
    SchedulesConfig.queues`, checked) into the ``queues`` table (``source = 'config'``), the
    file's version of :func:`apply_settings_limits`: a declared queue whose row differs, or
    came from ``set_queue_limits``, is replaced; a row the file wrote before for a queue it
    no longer declares is deleted; a queue whose row came from ``SCHEDULER_QUEUE_LIMITS`` is
    left alone (the setting wins). The workers are notified; nothing is written (and no write
    privilege needed) when nothing differs. Run by the leader in its fenced transaction at
    each election, and by ``scheduler schedules apply``; joins the caller's transaction (a
    savepoint), else commits its own.

    Raises:
        psycopg.errors.InsufficientPrivilege: a change is needed and the role may not write
            the ``queues`` table (nothing was written).
    """
    async with conn.transaction():  # a savepoint in the leader's: a refusal costs only this
        rows = {r["name"]: r for r in await store.fetch(conn, "queue_limits_list")}
        overridden = sorted(q for q in queues if q in rows and rows[q]["source"] == "settings")
        written = sorted(q for q, limits in queues.items() if q not in overridden and (
            q not in rows or rows[q]["source"] != "config" or _limits_of(rows[q]) != limits))
        removed = sorted(n for n, r in rows.items() if r["source"] == "config" and n not in queues)
        for queue in written:
            await conn.execute(store.q["queue_limits_set"], _params(queue, queues[queue], "config"))
        if removed:
            await conn.execute(store.q["queue_limits_prune_config"], {"queues": list(queues)})
        if written or removed:
            await conn.execute(store.q["queue_limits_notify"], _notice(store, ""))
    return DeclaredLimits(written, removed, overridden)


def _limits_of(row: Mapping[str, Any]) -> QueueLimits:
    return QueueLimits(*(row[f] for f in LIMIT_FIELDS))
