"""Bounds on every name, number and text that reaches the database.

One set of rules for every way in: the schedules file (:mod:`scheduler.config`), the Python
API (:mod:`scheduler.jobs`), the command line, and the worker's result writer. A value that
breaks a rule is refused before any SQL runs, with a message naming the input and the reason
(:class:`~scheduler.errors.InvalidArgumentError`, also a ``ValueError``).

=================  ===========================================================================
value              rule (and why)
=================  ===========================================================================
queue              1-100 characters from ``A-Z a-z 0-9 _ . : / -``. Queue lists
                   (``--queues``, ``SCHEDULER_QUEUES``) are split on commas and stripped, so a
                   name with a comma or a space could never be worked; the insert notification
                   carries the queue name and PostgreSQL caps a NOTIFY payload at 8,000 bytes.
task name          1-200 characters, no whitespace, control characters, NUL or unpaired
                   surrogates (``jobs.task`` is text; PostgreSQL text cannot hold NUL).
schedule name      1-200 characters from ``A-Z a-z 0-9 _ . : -``.
idempotency key    1-512 characters, no NUL or unpaired surrogates (a btree index entry is
                   limited to about 2,700 bytes; 512 characters are at most 2,048 bytes).
concurrency key    the same as the idempotency key (it is in the index ``jobs_running_queue``).
priority           an ``int`` (not a ``bool``) in PostgreSQL ``integer`` range
                   (-2,147,483,648 .. 2,147,483,647); lower runs first.
max_attempts       an ``int`` from 1 to 2,147,483,647.
durations          any ``*_s`` value (backoffs, timeouts, grace periods, settings): at most
                   :data:`DURATION_MAX_S`, 10 years, so ``now() + delay`` stays inside
                   PostgreSQL's interval and timestamp ranges.
error, traceback   made storable by :func:`storable_text`: NUL and unpaired surrogates become
                   visible escapes, and the text is cut to 2,000 / 16,000 characters.
=================  ===========================================================================
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidArgumentError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
QUEUE_MAX = 100
TASK_NAME_MAX = 200
SCHEDULE_NAME_MAX = 200
IDEMPOTENCY_KEY_MAX = 512
DURATION_MAX_S = 10 * 365 * 86400.0  # longest duration in seconds: 10 years
ERROR_MAX = 2_000  # characters of an attempt's error message kept (the start)
TRACEBACK_MAX = 16_000  # characters of a traceback kept (the end, where the error is)
RESULT_MAX = 65_536  # characters of a handler's return value, as JSON text, stored in jobs.result

_QUEUE = re.compile(r"[A-Za-z0-9_.:/-]+")
_SCHEDULE = re.compile(r"[A-Za-z0-9_.:-]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f-\xa0\u2028\u2029]|[\ud800-\udfff]")


def shown(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for messages about hostile input."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _text(value: Any, what: str, maximum: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{what} is empty")
    if len(value) > maximum:
        raise InvalidArgumentError(
            f"{what} {shown(value)} is too long: {len(value):,} characters, at most {maximum}"
        )
    if "\x00" in value:
        raise InvalidArgumentError(
            f"{what} {shown(value)} contains NUL (\\x00), which PostgreSQL text cannot store"
        )
    if _SURROGATE.search(value):
        raise InvalidArgumentError(
            f"{what} {shown(value)} contains an unpaired surrogate, which is not valid UTF-8"
        )
    return value


def check_queue(value: Any, what: str = "queue") -> str:
    """Return ``value`` if it is a valid queue name, else raise
    :class:`~scheduler.errors.InvalidArgumentError` naming ``what`` and the reason."""
    name = _text(value, what, QUEUE_MAX)
    if not _QUEUE.fullmatch(name):
        bad = sorted({ch for ch in name if not _QUEUE.fullmatch(ch)})
        raise InvalidArgumentError(
            f"{what} {shown(name)} may only contain letters, digits and _ . : / - "
            f"(found {', '.join(repr(ch) for ch in bad[:5])}); queue lists are split on commas"
        )
    return name


def check_task_name(value: Any, what: str = "task name") -> str:
    """Return ``value`` if it is a valid task name, else raise ``InvalidArgumentError``."""
    name = _text(value, what, TASK_NAME_MAX)
    if _UNPRINTABLE.search(name):
        raise InvalidArgumentError(
            f"{what} {shown(name)} contains whitespace or a control character"
        )
    return name


def check_schedule_name(value: Any, what: str = "schedule name") -> str:
    """Return ``value`` if it is a valid schedule name, else raise ``InvalidArgumentError``."""
    name = _text(value, what, SCHEDULE_NAME_MAX)
    if not _SCHEDULE.fullmatch(name):
        raise InvalidArgumentError(
            f"{what} {shown(name)} must be 1-{SCHEDULE_NAME_MAX} characters from letters, "
            "digits and _ . : -"
        )
    return name


def check_idempotency_key(value: Any, what: str = "idempotency_key") -> str:
    """Return ``value`` if it is a valid idempotency key, else raise
    ``InvalidArgumentError``."""
    return _text(value, what, IDEMPOTENCY_KEY_MAX)


def check_concurrency_key(value: Any, what: str = "concurrency_key") -> str:
    """Return ``value`` if it is a valid ``concurrency_key`` (the job's key for per-key flow
    control, :mod:`scheduler.flow`): the idempotency key's bounds, 1-512 characters without
    NUL or unpaired surrogates; else raise ``InvalidArgumentError`` naming ``what``."""
    return _text(value, what, IDEMPOTENCY_KEY_MAX)


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) in ``[low, high]``, else raise
    ``InvalidArgumentError`` (a string such as ``'3'`` is refused, not converted)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an int, not {type(value).__name__} {shown(value)}")
    if not low <= value <= high:
        raise InvalidArgumentError(f"{what} {value} is out of range {low:,} .. {high:,}")
    return value


def check_priority(value: Any, what: str = "priority") -> int:
    """An ``int`` in PostgreSQL ``integer`` range; lower runs first."""
    return check_int(value, what, INT32_MIN, INT32_MAX)


def check_max_attempts(value: Any, what: str = "max_attempts") -> int:
    """An ``int`` from 1 to 2,147,483,647."""
    return check_int(value, what, 1, INT32_MAX)


def storable_text(value: str, limit: int, *, keep: str = "head") -> str:
    """``value`` as text PostgreSQL can store, at most ``limit`` characters.

    NUL becomes the four characters ``\\x00`` and an unpaired surrogate its ``\\udcff``-style
    escape, so nothing is lost from sight and the result always encodes as UTF-8. Longer text
    keeps its start (``keep="head"``, for error messages) or its end (``keep="tail"``, for
    tracebacks, whose last lines name the error), marked with ``...``.
    """
    text = value
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if _SURROGATE.search(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = "..." + text[-(limit - 3) :] if keep == "tail" else text[: limit - 3] + "..."
    return text


def exception_text(exc: BaseException, limit: int = ERROR_MAX) -> str:
    """``"<Type>: <message>"`` for any exception, storable (see :func:`storable_text`) and
    at most ``limit`` characters. Never raises: an exception whose ``str()`` raises is
    described as ``<str() failed: ...>``."""
    try:
        name = type(exc).__name__
        try:
            message = str(exc)
        except BaseException as inner:  # noqa: BLE001 - any __str__ may be hostile
            message = f"<str() failed: {type(inner).__name__}>"
        text = f"{name}: {message}" if message else name
    except BaseException:  # noqa: BLE001 - a hostile type name
        text = "<exception that cannot be described>"
    return storable_text(text, limit)
