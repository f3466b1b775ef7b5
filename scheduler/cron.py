"""Pure fire-time maths: when does a cron schedule fire, in which zone, across DST.

Nothing here reads a clock or a database: every instant is an argument, every result is an
aware ``datetime`` in UTC (``datetime.timezone.utc``).

Grammar, and how day of month and day of week combine: :mod:`scheduler.cron_parse`
(expressions parsed into fields).

Time zones and DST (cron(8) of cronie, "Daylight Saving Time and other time changes")
-----------------------------------------------------------------------------------------
Fields are matched against the local wall clock of the schedule's IANA zone. Instants are
always converted to that ``ZoneInfo`` first (never iterated from a fixed UTC offset, which
drifts by the DST difference). A job is **fixed-time** when neither its minute nor its hour
field starts with ``*`` (cronie's ``MIN_STAR | HR_STAR`` flags; ``@hourly`` counts as ``*``
hours, ``@daily`` as fixed; a seconds field does not matter); otherwise it is an **interval**
job.

* Interval jobs run in real time. Wall times skipped by a spring-forward jump do not occur
  and do not fire; wall times repeated by a fall-back fire at both instants. So ``0 * * * *``
  fires 23 times on the spring-forward day and 25 times on the fall-back day, and ``*/30``
  stays 30 real minutes apart through the repeated hour.
* Fixed-time jobs whose wall time falls in a spring-forward gap fire **once, at the moment of
  the jump** (cronie src/cron.c, "case 2 ... run any fixed-time jobs that would otherwise be
  skipped"); several gap times of one job collapse into that one instant. Fixed-time jobs
  whose wall time occurs twice in a fall-back fire **once, at the first occurrence**
  ("case 3 ... The fixed-time jobs probably have already run, and should not be repeated").
  croniter 7 fires them twice; we do not.
* As in cronie, a jump forward by three hours or more, or back by more than three hours, is
  treated as a correction of the clock, not DST: every job then runs in real time (gap times
  are skipped, repeated ones fire). cronie counts in minutes: its main loop sees a jump of
  ``d`` minutes as ``d + 1`` and calls more than 180 "large", so +3 h (Antarctica/Casey,
  2016-2023: +08 to +11) is a clock correction while -3 h (+11 to +08) is DST.

Known differences, left for a later refinement: cron(8) also gives the special treatment to
jobs "with a granularity greater than one hour" (``0 */2 * * *``), but cronie's code tests only
the ``*`` flags, as we do; and cronie would start a job once per skipped gap minute, where we
fire once because a schedule has one job per fire instant. cronie also runs *every* job for
each skipped minute of a forward jump of at most four minutes (its "wokeup late" case); no
zone has had such a jump since 1970, and we treat it as DST.
"""

from __future__ import annotations

import difflib
import threading
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

from .cron_parse import CronFields, parse_cron
from .errors import CronError

__all__ = ["UTC", "Cron", "CronFields", "first_transition", "utc_offset", "validate_timezone"]

# Entries of the zoneinfo directory that are not zones a schedule may name.
_NOT_ZONES = {
    "localtime": "it is the host's configured zone, which differs between replicas",
    "posixrules": "it is the template for POSIX TZ strings, not a place",
    "Factory": "it is the placeholder zone of unconfigured systems ('-00')",
}

_PROBE = timedelta(hours=6)  # offsets are sampled this often when looking for a transition
_MICRO = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_FOLD_LOOKBACK = timedelta(days=1)
MEDIUM_JUMP = timedelta(hours=3)  # cronie: DST vs clock correction, see the docstring
_MAX_TRANSITIONS = 1000  # transitions crossed in one search before we give up


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones()) - set(_NOT_ZONES)


@lru_cache(maxsize=1)
def _zones_by_lower_name() -> dict[str, str]:
    return {z.lower(): z for z in _known_zones()}


def validate_timezone(name: str) -> ZoneInfo:
    """Return the ``ZoneInfo`` for an IANA time zone name, or raise :class:`CronError`.

    The name must be listed by ``zoneinfo.available_timezones()`` (case-sensitive, so
    ``europe/berlin`` is rejected with a "did you mean 'Europe/Berlin'" hint). ``UTC`` is valid.
    Rejected: unknown names (with close matches suggested), paths (``../../etc/passwd``,
    ``/usr/share/zoneinfo/UTC``) and the non-zones ``localtime``, ``posixrules`` and
    ``Factory``.

    Raises:
        CronError: the name is not a usable IANA zone; the message says why.
    """
    if not isinstance(name, str):
        raise CronError(f"time zone must be a string, not {type(name).__name__}")
    if not name:
        raise CronError("time zone is empty; use an IANA name such as 'Europe/Berlin' or 'UTC'")
    if name in _NOT_ZONES:
        raise CronError(
            f"time zone {name!r} is not allowed: {_NOT_ZONES[name]}; "
            "use an IANA name such as 'Europe/Berlin' or 'UTC'"
        )
    if name.startswith("/") or ".." in name or "\\" in name or "\x00" in name:
        raise CronError(
            f"time zone {name!r} looks like a file path; "
            "use an IANA name such as 'Europe/Berlin' or 'UTC'"
        )
    if name not in _known_zones():
        same_but_case = _zones_by_lower_name().get(name.lower())
        if same_but_case is not None:
            raise CronError(
                f"unknown time zone {name!r}: IANA names are case-sensitive, "
                f"did you mean {same_but_case!r}?"
            )
        close = difflib.get_close_matches(name, sorted(_known_zones()), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise CronError(f"unknown time zone {name!r} (not an IANA time zone name){hint}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # pragma: no cover - tzdata race
        raise CronError(f"time zone {name!r} cannot be loaded: {exc}") from exc


def _naive(aware: datetime) -> datetime:
    return aware.replace(tzinfo=None)


def utc_offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    """The UTC offset of ``zone`` at ``instant``."""
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def first_transition(zone: ZoneInfo, after: datetime, until: datetime) -> datetime | None:
    """First instant T, after < T <= until, whose UTC offset differs from the offset at
    ``after`` (sampled every 6 h, then bisected to the microsecond); None if there is none."""
    base = utc_offset(zone, after)
    lo = after
    while lo < until:
        hi = min(lo + _PROBE, until)
        if utc_offset(zone, hi) != base:
            while hi - lo > _MICRO:
                mid = lo + (hi - lo) / 2
                if utc_offset(zone, mid) == base:
                    lo = mid
                else:
                    hi = mid
            return hi
        lo = hi
    return None


class Cron:
    """A validated cron expression bound to an IANA time zone.

    Args:
        expression: 5 fields, 6 fields (seconds first) or a macro; see the module docstring.
        timezone: IANA zone name the fields are read in; default ``"UTC"``.

    Attributes:
        expression: the expression as given, stripped of surrounding whitespace.
        timezone: the schedule's ``ZoneInfo``.
        has_seconds: True for the 6-field form (fire times can fall on any second).
        fixed_time: True when neither the minute nor the hour field starts with ``*``
            (the DST rules of the module docstring depend on it).
        fields: the parsed :class:`CronFields` (for counting fire times arithmetically,
            :mod:`scheduler.cron_count`).

    Raises:
        CronError: invalid syntax, out-of-range value (naming the field and its range), wrong
            field count, an expression that never fires, or an invalid time zone.
    """

    __slots__ = ("_iter", "_lock", "expression", "fields", "fixed_time", "has_seconds", "timezone")

    def __init__(self, expression: str, timezone: str = "UTC"):
        if not isinstance(expression, str):
            raise CronError(f"cron expression must be a string, not {type(expression).__name__}")
        self.expression = expression.strip()
        self.timezone = validate_timezone(timezone)
        try:
            normalized, self.fields, self.has_seconds, self.fixed_time = parse_cron(self.expression)
        except CronError as exc:
            raise CronError(f"invalid cron expression {self.expression!r}: {exc}") from None
        self._lock = threading.Lock()
        try:
            self._iter = croniter(
                normalized,
                datetime(2000, 1, 1),
                ret_type=datetime,
                day_or=self.fields.day_or,
                second_at_beginning=self.has_seconds,
            )
            self._iter.get_next(datetime)  # 50-year bounded search
        except CroniterBadDateError:
            raise CronError(
                f"cron expression {self.expression!r} never fires: no date matches "
                "its day-of-month, month and day-of-week fields"
            ) from None
        except CroniterError as exc:  # pragma: no cover - our parser should reject these first
            raise CronError(f"invalid cron expression {self.expression!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.timezone.key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cron):
            return NotImplemented
        return (self.expression, self.timezone.key) == (other.expression, other.timezone.key)

    def __hash__(self) -> int:
        return hash((self.expression, self.timezone.key))

    # -- public API -------------------------------------------------------------------------

    def next_after(self, instant: datetime) -> datetime:
        """The first fire time strictly after ``instant``.

        Args:
            instant: an aware datetime in any zone (a fixed-offset value read back from a
                ``timestamptz`` is fine: it is converted to the schedule's zone first).

        Returns:
            An aware datetime in UTC, computed with the DST rules of the module docstring.

        Raises:
            ValueError: ``instant`` is naive.
            TypeError: ``instant`` is not a datetime.
            CronError: no fire time was found within the bounded search (cannot happen for
                an expression that passed validation, short of a zone that skips every one of
                its wall times).
        """
        return self._next(_as_utc(instant, "instant"))

    def fire_times(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Fire times ``t`` with ``after < t <= until``, ascending, at most ``limit`` of them.

        Args:
            after, until: aware datetimes in any zone (exclusive and inclusive bounds).
            limit: maximum number of fire times returned, >= 0.

        Returns:
            A list of aware UTC datetimes (empty when ``until <= after``).

        Raises:
            ValueError: a naive datetime or a negative ``limit``.
        """
        start, end = _as_utc(after, "after"), _as_utc(until, "until")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        times: list[datetime] = []
        while len(times) < limit:
            start = self._next(start)
            if start > end:
                break
            times.append(start)
        return times

    # -- implementation ---------------------------------------------------------------------

    def _wall_after(self, wall: datetime, inclusive: bool) -> datetime:
        """First naive local wall time matching the fields after ``wall`` (or at it)."""
        start = wall.replace(microsecond=0)
        if inclusive and start == wall:
            start -= _SECOND
        with self._lock:
            wall_time: datetime = self._iter.get_next(datetime, start_time=start)  # untyped lib
        return wall_time

    def fold_floor(self, instant: datetime) -> datetime | None:
        """For fixed-time jobs: if ``instant`` (UTC) lies in the repeated part of a DST-like
        fall-back, the naive wall time at which the repeat ends (earlier wall times have
        already been seen and do not fire again); else ``None``."""
        floor = None
        cursor = instant - _FOLD_LOOKBACK
        while (moment := first_transition(self.timezone, cursor, instant)) is not None:
            before = utc_offset(self.timezone, moment - _MICRO)
            after = utc_offset(self.timezone, moment)
            if after < before and before - after <= MEDIUM_JUMP:
                end = _naive(moment + before)
                floor = end if floor is None else max(floor, end)
            cursor = moment
        return floor

    def _next(self, start: datetime) -> datetime:
        zone = self.timezone
        cursor = start
        offset = utc_offset(zone, cursor)
        wall, inclusive = _naive(cursor + offset), False
        if self.fixed_time:
            floor = self.fold_floor(cursor)
            if floor is not None and floor > wall:
                wall, inclusive = floor, True
        for _ in range(_MAX_TRANSITIONS):
            candidate_wall = self._wall_after(wall, inclusive)
            candidate = (candidate_wall - offset).replace(tzinfo=UTC)
            moment = first_transition(zone, cursor, candidate)
            if moment is None:
                return candidate  # same offset all the way: the wall time maps to this instant
            new_offset = utc_offset(zone, moment)
            # cronie: forward by 3 h or more, or back by more than 3 h, is a clock correction
            dst_like = -MEDIUM_JUMP <= new_offset - offset < MEDIUM_JUMP
            if new_offset > offset:  # spring forward: walls [moment+offset, moment+new) skipped
                wall = _naive(moment + new_offset)
                if self.fixed_time and dst_like and candidate_wall < wall:
                    return moment  # fixed-time job in the gap: once, at the jump
            elif self.fixed_time and dst_like:  # fall back, fixed-time: first occurrence only
                wall = _naive(moment + offset)
            else:  # fall back, interval job: real time, the repeated walls fire again
                wall = _naive(moment + new_offset)
            inclusive, cursor, offset = True, moment, new_offset
        raise CronError(
            f"cron expression {self.expression!r} found no fire time in "
            f"{zone.key} within {_MAX_TRANSITIONS} UTC offset changes"
        )


def _as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)
