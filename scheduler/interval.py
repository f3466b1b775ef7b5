"""Interval schedules: fire every ``every`` seconds of elapsed time from an anchor instant.

An :class:`Interval` fires at ``start + k * every`` for ``k = 0, 1, 2, ...`` (aware UTC
datetimes). Intervals are exact elapsed time in UTC: DST and time zones do not apply (a
``every: 1h`` schedule fires 23 or 25 times on a DST day in Berlin, always one real hour
apart); the ``timezone`` of an interval schedule is only used to display its fire times.

Everything is arithmetic on whole microseconds, O(1) per call: :meth:`Interval.count` and
:meth:`Interval.nth_after` let :mod:`scheduler.planning` plan an outage of any length (a week
of a 1 s interval is 604,800 fire times) without walking it. :class:`Interval` implements
:class:`scheduler.cron_count.FireTimes`, the interface planning uses for cron schedules too.

Durations (:func:`parse_duration`) are written ``90s``, ``15m``, ``2h``, ``1d``, ``1w``,
``1500ms`` or combined (``1h30m``); as ISO 8601 ``PT90S``, ``P1DT12H``, ``P2W`` (no years or
months: they have no fixed length); or as a number of seconds (``90``, ``1.5``). Resolution
one microsecond; at least 1 second, at most :data:`~scheduler.limits.DURATION_MAX_S`
(10 years). Start instants (:func:`parse_start_at`) are ISO 8601 with a UTC offset
(``2025-01-01T09:00:00+01:00``, ``...Z``), between 1970 and 9000.

Nothing here reads a clock or a database.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from .cron import validate_timezone
from .errors import InvalidArgumentError
from .limits import DURATION_MAX_S, shown

__all__ = ["EVERY_MIN_S", "Interval", "parse_duration", "parse_start_at"]

EVERY_MIN_S = 1.0  # shortest interval in seconds
_TEXT_MAX = 100  # characters of a duration or start_at text
_US = {"ms": 1_000, "s": 10**6, "m": 60 * 10**6, "h": 3600 * 10**6, "d": 86400 * 10**6}
_US["w"] = 7 * _US["d"]
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNITS = re.compile(rf"(?:{_NUMBER}(?:ms|[smhdw]))+")
_UNIT_PART = re.compile(rf"({_NUMBER})(ms|[smhdw])")
_ISO = re.compile(
    rf"P(?:(?P<w>{_NUMBER})W|(?:(?P<d>{_NUMBER})D)?"
    rf"(?:T(?:(?P<h>{_NUMBER})H)?(?:(?P<m>{_NUMBER})M)?(?:(?P<s>{_NUMBER})S)?)?)",
    re.IGNORECASE,
)
_START_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_START_MAX = datetime(9000, 1, 1, tzinfo=UTC)
_FORMS = "write e.g. 90s, 15m, 2h, 1d, 1h30m, PT90S, or a number of seconds"


def _microseconds(text: str, what: str) -> int | None:
    """Whole microseconds of a unit or ISO 8601 duration text, ``None`` if it is neither."""
    parts: list[tuple[str, int]] = []
    if _UNITS.fullmatch(text):
        parts = [(n, _US[u]) for n, u in _UNIT_PART.findall(text)]
    elif (iso := _ISO.fullmatch(text)) and text.upper() not in ("P", "PT") and text[-1:] != "T":
        parts = [(n, _US[u]) for u, n in iso.groupdict().items() if n is not None]
    else:
        return None
    total = sum((Decimal(n) * us for n, us in parts), Decimal(0))
    if total != total.to_integral_value():
        raise InvalidArgumentError(f"{what} {shown(text)} is more precise than one microsecond")
    return int(total)


def parse_duration(value: Any, what: str = "every") -> float:
    """Seconds (float, a whole number of microseconds) of a duration ``value``: an ``int`` or
    ``float`` number of seconds, or a text form of the module docstring.

    Raises:
        InvalidArgumentError: not a number or duration text (booleans and ``None`` included),
            NaN or infinite, an unknown unit or form, more precise than a microsecond,
            shorter than 1 second or longer than 10 years; the message names ``what``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgumentError(f"{what} must be a duration ({_FORMS}), not {shown(value)}")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _TEXT_MAX:
            raise InvalidArgumentError(f"{what} is too long: {len(text):,} characters")
        if re.fullmatch(r"[-+]?" + _NUMBER, text):
            raise InvalidArgumentError(
                f"{what} {shown(value)} is a number in quotes: write {text} (seconds) without "
                f"quotes, or give a unit ({text}s)"
            )
        if text.startswith("-"):
            raise InvalidArgumentError(f"{what} {shown(value)} is negative")
        micro = _microseconds(text, what)
        if micro is None:
            hint = " (M is ambiguous: m for minutes)" if "M" in text and "P" not in text else ""
            raise InvalidArgumentError(f"{what} {shown(value)} is not a duration{hint}; {_FORMS}")
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgumentError(f"{what} must be a finite number of seconds, not {value}")
        if value < 0:
            raise InvalidArgumentError(f"{what} {value} is negative")
        if value > DURATION_MAX_S:  # before Decimal: a huge int needs no digits checked
            big = isinstance(value, int) and value.bit_length() > 64  # repr may be refused
            raise InvalidArgumentError(_too_long(what, "(a huge number)" if big else shown(value)))
        try:
            exact = Decimal(repr(value)) * 10**6
        except InvalidOperation:  # pragma: no cover - finite numbers always convert
            raise InvalidArgumentError(f"{what} {value!r} is not a number") from None
        if exact != exact.to_integral_value():
            raise InvalidArgumentError(f"{what} {value!r} is more precise than one microsecond")
        micro = int(exact)
    seconds = micro / 10**6
    if seconds < EVERY_MIN_S:
        raise InvalidArgumentError(
            f"{what} {shown(value)} is shorter than 1 second ({seconds:g} s); use at least 1s"
        )
    if seconds > DURATION_MAX_S:
        raise InvalidArgumentError(_too_long(what, shown(value)))
    return seconds


def _too_long(what: str, value: str) -> str:
    return f"{what} {value} is longer than 10 years ({DURATION_MAX_S:,.0f} s)"


def parse_start_at(value: Any, what: str = "start_at") -> datetime:
    """The aware UTC instant of ``value``: an aware ``datetime`` (YAML builds one from an
    unquoted timestamp) or an ISO 8601 text with a UTC offset (``Z`` allowed).

    Raises:
        InvalidArgumentError: not a datetime or text, a date without a time, no UTC offset
            (a naive wall time would be ambiguous), not ISO 8601, or outside 1970..9000.
    """
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _TEXT_MAX:
            raise InvalidArgumentError(f"{what} is too long: {len(text):,} characters")
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgumentError(
                f"{what} {shown(text)} is not an ISO 8601 instant "
                "(e.g. 2025-01-01T09:00:00+01:00 or 2025-01-01T08:00:00Z)"
            ) from None
    if not isinstance(value, datetime):
        kind = "a date without a time" if isinstance(value, date) else shown(value)
        raise InvalidArgumentError(f"{what} must be an ISO 8601 instant with offset, not {kind}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{what} {value.isoformat()} has no UTC offset: add one (+01:00, or Z for UTC)"
        )
    instant = value.astimezone(UTC)
    if not _START_MIN <= instant < _START_MAX:
        raise InvalidArgumentError(f"{what} {instant.isoformat()} is not between 1970 and 9000")
    return instant


def _as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


class Interval:
    """Fire times ``start + k * every_s`` (``k >= 0``), exact elapsed time in UTC.

    Args:
        every_s: the interval in seconds (checked by :func:`parse_duration`: a number
            >= 1 and <= 10 years, whole microseconds).
        start: the first fire time, an aware datetime (stored as UTC).
        timezone: IANA zone used only to display fire times (default ``"UTC"``).

    Raises:
        InvalidArgumentError: a bad ``every_s`` or ``start``.
        CronError: an invalid time zone.

    Every method takes aware datetimes (``ValueError`` if naive, ``TypeError`` if not a
    datetime) and returns aware UTC datetimes; ``OverflowError`` past year 9999.
    """

    __slots__ = ("every_s", "start", "step", "timezone")

    def __init__(self, every_s: float, start: datetime, timezone: str = "UTC"):
        self.every_s = parse_duration(every_s)
        self.step = timedelta(microseconds=round(self.every_s * 10**6))
        self.start = parse_start_at(start, "start")
        self.timezone: ZoneInfo = validate_timezone(timezone)

    def __repr__(self) -> str:
        return f"Interval({self.every_s!r}, {self.start.isoformat()!r}, {self.timezone.key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Interval):
            return NotImplemented
        return (self.step, self.start, self.timezone.key) == (
            other.step,
            other.start,
            other.timezone.key,
        )

    def __hash__(self) -> int:
        return hash((self.step, self.start, self.timezone.key))

    def _up_to(self, instant: datetime) -> int:
        """Fire times ``<= instant`` (UTC)."""
        return 0 if instant < self.start else (instant - self.start) // self.step + 1

    def next_after(self, instant: datetime) -> datetime:
        """The first fire time strictly after ``instant``."""
        return self.start + self._up_to(_as_utc(instant, "instant")) * self.step

    def count(self, after: datetime, until: datetime) -> int:
        """The number of fire times ``t`` with ``after < t <= until`` (0 when ``until <=
        after``)."""
        lo, hi = _as_utc(after, "after"), _as_utc(until, "until")
        return max(0, self._up_to(hi) - self._up_to(lo))

    def nth_after(self, after: datetime, n: int) -> datetime:
        """The ``n``-th fire time after ``after`` (``n >= 1``, else ``ValueError``)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return self.start + (self._up_to(_as_utc(after, "after")) + n - 1) * self.step

    def fire_times(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Fire times ``t`` with ``after < t <= until``, ascending, at most ``limit``
        (``ValueError`` if negative)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        n = min(limit, self.count(after, until))
        if n == 0:
            return []
        first = self.next_after(after)
        return [first + i * self.step for i in range(n)]
