"""Counting fire times without enumerating them.

:func:`count` returns how many fire times :meth:`Cron.next_after` would produce one by one in
a range, with the same DST rules, in time proportional to the days and UTC-offset changes in
the range rather than to the fire times: a month of an every-second schedule (2.6 million fire
times) is counted in about a millisecond. :func:`nth_after` finds the n-th fire time after an
instant by bisection over whole seconds with :func:`count`. The materialiser uses both to
record skipped fire times and to apply ``max_catch_up`` after an outage of any length without
walking it fire time by fire time (which once took the leader longer than its lock session's
timeout: a livelock).

How: every fire time is a whole second (cron's granularity; tzdata's transitions are whole
seconds too). The range is cut at the zone's UTC-offset changes; within a stretch of one
offset, the fire times are the matching local wall times, counted day by day (a matching day
contributes ``hours x minutes x seconds``, a partial day a prefix count of the sorted field
values). The DST rules of :mod:`scheduler.cron` (cronie's): after a DST-like fall-back a
fixed-time job skips the repeated wall times; across a DST-like spring-forward a fixed-time
job whose wall time falls in the gap fires once, at the jump.

:class:`FireTimes` is what planning needs of a schedule's fire times, whatever its kind:
:class:`CronTimes` gives a :class:`~scheduler.cron.Cron` that interface through the
functions below, and :class:`scheduler.interval.Interval` implements it with O(1) arithmetic.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

from .cron import MEDIUM_JUMP, UTC, Cron, first_transition, utc_offset
from .cron_parse import CronFields

_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)
_MICRO = timedelta(microseconds=1)
_END_OF_DAY = time(23, 59, 59)
_MAX = datetime.max.replace(tzinfo=UTC)


class FireTimes(Protocol):
    """A schedule's fire times (aware datetimes in, aware UTC datetimes out): implemented by
    :class:`CronTimes` and :class:`scheduler.interval.Interval`."""

    @property
    def timezone(self) -> ZoneInfo:
        """The zone fire times are shown in."""
        ...

    def next_after(self, instant: datetime) -> datetime:
        """The first fire time strictly after ``instant``."""
        ...

    def fire_times(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Fire times in ``(after, until]``, ascending, at most ``limit``."""
        ...

    def count(self, after: datetime, until: datetime) -> int:
        """The number of fire times in ``(after, until]``, without enumerating them."""
        ...

    def nth_after(self, after: datetime, n: int) -> datetime:
        """The ``n``-th fire time after ``after`` (``n >= 1``)."""
        ...


class CronTimes:
    """A :class:`~scheduler.cron.Cron` as :class:`FireTimes` (:func:`count`,
    :func:`nth_after`)."""

    __slots__ = ("cron",)

    def __init__(self, cron: Cron):
        self.cron = cron

    @property
    def timezone(self) -> ZoneInfo:
        return self.cron.timezone

    def next_after(self, instant: datetime) -> datetime:
        return self.cron.next_after(instant)

    def fire_times(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        return self.cron.fire_times(after, until, limit)

    def count(self, after: datetime, until: datetime) -> int:
        return count(self.cron, after, until)

    def nth_after(self, after: datetime, n: int) -> datetime:
        return nth_after(self.cron, after, n)


def fire_times_of(schedule: Cron | FireTimes) -> FireTimes:
    """``schedule`` as :class:`FireTimes` (a :class:`Cron` wrapped in :class:`CronTimes`)."""
    return CronTimes(schedule) if isinstance(schedule, Cron) else schedule


def count(cron: Cron, after: datetime, until: datetime) -> int:
    """The number of fire times ``t`` with ``after < t <= until`` (aware datetimes, any zone);
    exactly ``len(cron.fire_times(after, until, <no limit>))``."""
    first = after.astimezone(UTC).replace(microsecond=0) + _SECOND
    last = until.astimezone(UTC).replace(microsecond=0)
    if last < first:
        return 0
    zone, fields = cron.timezone, cron.fields
    total, start = 0, first
    floor = cron.fold_floor(first) if cron.fixed_time else None
    for moment, before, now in _transitions(cron, first, last):
        total += _stretch(fields, start, moment - _SECOND, before, floor)
        floor = None
        dst_like = -MEDIUM_JUMP <= now - before < MEDIUM_JUMP
        if cron.fixed_time and dst_like:
            if now > before and _gap_fires(fields, moment, before, now):
                total += 1
            elif now < before:
                floor = _naive(moment + before)  # the repeated walls were seen before
        start = moment
    return total + _stretch(fields, start, last, utc_offset(zone, start), floor)


def nth_after(cron: Cron, after: datetime, n: int) -> datetime:
    """The ``n``-th fire time after ``after`` (``n >= 1``), as an aware UTC datetime."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lo = after.astimezone(UTC)
    step = _SECOND
    hi = lo + step
    while count(cron, lo, hi) < n:
        step *= 2
        hi = lo + step
    base = lo.replace(microsecond=0)
    low, high = 1, int((hi - base).total_seconds()) + 1  # whole seconds after base
    while low < high:
        mid = (low + high) // 2
        if count(cron, lo, base + mid * _SECOND) >= n:
            high = mid
        else:
            low = mid + 1
    return base + low * _SECOND


def last_in(cron: Cron, after: datetime, until: datetime) -> datetime | None:
    """The last fire time in ``(after, until]``, or ``None`` when there is none."""
    n = count(cron, after, until)
    return nth_after(cron, after, n) if n else None


def _naive(instant: datetime) -> datetime:
    return instant.replace(tzinfo=None)


def _transitions(
    cron: Cron, first: datetime, last: datetime
) -> list[tuple[datetime, timedelta, timedelta]]:
    """``(moment, offset before, offset after)`` of every UTC-offset change in
    ``(first, last]``."""
    key = cron.timezone.key
    if key == "UTC" or key.startswith("Etc/"):
        return []  # fixed offsets
    return [
        t
        for year in range(first.year, last.year + 1)
        for t in _year_transitions(key, year)
        if first < t[0] <= last
    ]


@lru_cache(maxsize=4096)
def _year_transitions(key: str, year: int) -> tuple[tuple[datetime, timedelta, timedelta], ...]:
    zone = ZoneInfo(key)
    found = []
    cursor = datetime(year, 1, 1, tzinfo=UTC) - _MICRO
    end = datetime(year, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC) if year < 9999 else _MAX
    while (moment := first_transition(zone, cursor, end)) is not None:
        found.append((moment, utc_offset(zone, moment - _MICRO), utc_offset(zone, moment)))
        cursor = moment
    return tuple(found)


def _stretch(
    fields: CronFields,
    first: datetime,
    last: datetime,
    offset: timedelta,
    floor: datetime | None,
) -> int:
    """Fire times in ``[first, last]`` (whole UTC seconds) where the offset is constant."""
    lo, hi = _naive(first + offset), _naive(last + offset)
    if floor is not None and floor > lo:
        lo = floor
    return _walls(fields, lo, hi)


def _gap_fires(fields: CronFields, moment: datetime, before: timedelta, now: timedelta) -> bool:
    """Spring-forward at ``moment``: does a wall time in the gap match, while the first wall
    after it does not (that one fires at ``moment`` anyway)? Then the jump adds one."""
    gap_lo, after_gap = _naive(moment + before), _naive(moment + now)
    return _walls(fields, gap_lo, after_gap - _SECOND) > 0 and not _walls(
        fields, after_gap, after_gap
    )


def _walls(fields: CronFields, lo: datetime, hi: datetime) -> int:
    """Matching local wall times (whole seconds) in ``[lo, hi]``."""
    if hi < lo:
        return 0
    first, last = lo.date(), hi.date()
    if first == last:
        return _in_day(fields, first, lo.time(), hi.time())
    total = _in_day(fields, first, lo.time(), _END_OF_DAY) + _in_day(
        fields, last, time.min, hi.time()
    )
    if last - first > _DAY:
        total += _matching_days(fields, first + _DAY, last - _DAY) * _up_to(fields, _END_OF_DAY)
    return total


def _in_day(fields: CronFields, day: date, first: time, last: time) -> int:
    if not _day_matches(fields, day):
        return 0
    return _up_to(fields, last) - _before(fields, first)


def _matching_days(fields: CronFields, first: date, last: date) -> int:
    """Days in ``[first, last]`` whose day of month, month and day of week match."""
    total = 0
    for year in range(first.year, last.year + 1):
        running = _running_days(fields, year)
        a = (first - date(year, 1, 1)).days if year == first.year else 0
        b = (last - date(year, 1, 1)).days if year == last.year else len(running) - 2
        total += running[b + 1] - running[a]
    return total


@lru_cache(maxsize=4096)
def _running_days(fields: CronFields, year: int) -> tuple[int, ...]:
    """``running[i]``: matching days among the first ``i`` days of ``year``."""
    running = [0]
    day = date(year, 1, 1)
    while day.year == year:
        running.append(running[-1] + _day_matches(fields, day))
        if day == date.max:
            break
        day += _DAY
    return tuple(running)


def _day_matches(fields: CronFields, day: date) -> bool:
    if day.month not in fields.months:
        return False
    dom = day.day in fields.days_of_month
    dow = day.isoweekday() % 7 in fields.days_of_week  # cron: 0 = Sunday
    return (dom or dow) if fields.day_or else (dom and dow)


@lru_cache(maxsize=256)
def _sorted(fields: CronFields) -> tuple[list[int], list[int], list[int]]:
    return sorted(fields.hours), sorted(fields.minutes), sorted(fields.seconds)


def _up_to(fields: CronFields, t: time) -> int:
    """Matching times of day ``<= t``."""
    hours, minutes, seconds = _sorted(fields)
    n = bisect_left(hours, t.hour) * len(minutes) * len(seconds)
    if t.hour in fields.hours:
        n += bisect_left(minutes, t.minute) * len(seconds)
        if t.minute in fields.minutes:
            n += bisect_right(seconds, t.second)
    return n


def _before(fields: CronFields, t: time) -> int:
    """Matching times of day ``< t``."""
    if t == time.min:
        return 0
    previous = (datetime.combine(date.min, t) - _SECOND).time()
    return _up_to(fields, previous)
