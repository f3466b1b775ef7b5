"""Property test of scheduler.cron against an independent, brute-force cronie oracle.

The oracle below shares no code with ``scheduler.cron`` and does not use croniter. It walks
UTC instants minute by minute (second by second for six-field expressions), converts each to
the zone's wall clock with ``zoneinfo`` and applies cron(8)'s rules the way cronie's main loop
(src/cron.c) does, with a "virtual clock" of wall times already handled:

* the wall clock advances normally: every job whose fields match fires;
* it jumps forward by less than 3 h (DST begins): interval jobs match the new wall time only;
  a fixed-time job fires now if the new wall time or any skipped wall time matches;
* it jumps back by at most 3 h (DST ends): interval jobs match as usual; a fixed-time job
  fires only for wall times after the latest one already seen (no repeats);
* other jumps (forward by 3 h or more, back by more than 3 h) are clock corrections: every
  job matches the new wall time only, and the virtual clock restarts there.

A job is fixed-time when neither its minute nor its hour field starts with ``*``.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from scheduler.cron import Cron
from scheduler.errors import CronError

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST at 02:00
    "America/Santiago",  # DST changes at midnight
    "Pacific/Chatham",  # +12:45/+13:45, changes at 02:45 standard time
    "Antarctica/Troll",  # two-hour DST (+00/+02)
    "Antarctica/Casey",  # 2016-2023: +08/+11, three-hour jumps (cronie's boundary)
    "Asia/Kolkata",  # +05:30, no DST
    "UTC",
]
YEARS = (2025, 2030)
OTHER_YEARS = {"Antarctica/Casey": (2016, 2023)}
DST_LIMIT = timedelta(hours=3)
HOUR, MINUTE, SECOND = timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)
LIMIT = 400  # fire times compared per example

# -- expressions built from random fields, with their meaning computed here -----------------


@dataclass(frozen=True)
class Field:
    low: int
    high: int  # highest value accepted in the text
    top: int  # highest distinct value ('*' and 'a/step' stop here)
    names: tuple[str, ...] = ()  # names[i] is the value low + i


SECOND_F = Field(0, 59, 59)
MINUTE_F = Field(0, 59, 59)
HOUR_F = Field(0, 23, 23)
DOM_F = Field(1, 31, 31)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MONTH_F = Field(1, 12, 12, MONTHS)
DOW_F = Field(0, 7, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
COMMON = {  # values drawn more often: hour/minute boundaries, month ends
    id(SECOND_F): [0, 30, 59],
    id(MINUTE_F): [0, 1, 15, 29, 30, 44, 45, 59],
    id(HOUR_F): [0, 1, 2, 3, 23],
    id(DOM_F): [1, 28, 29, 30, 31],
    id(MONTH_F): [1, 2, 12],
    id(DOW_F): [0, 6, 7],
}


def _number(draw: st.DrawFn, field: Field, target: int) -> int:
    """A field value: often ``target`` (taken from a wall time near a DST transition)."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return target
    if choice == 1:
        return draw(st.sampled_from(COMMON[id(field)]))
    return draw(st.integers(field.low, field.high))


def _step(draw: st.DrawFn, field: Field) -> int:
    size = field.top - field.low + 1
    return draw(st.one_of(st.integers(1, 6), st.integers(1, size)))


def _token(draw: st.DrawFn, field: Field, value: int) -> str:
    if field.names and value <= field.top and draw(st.integers(0, 3)) == 0:
        name = field.names[value - field.low]
        return draw(st.sampled_from([name, name.lower()]))
    return str(value)


@st.composite
def field_text(
    draw: st.DrawFn, field: Field, target: int, day: bool, pin: bool
) -> tuple[str, frozenset[int]]:
    """A random field and the set of values it means (day of week 7 folded onto 0); with
    ``pin`` its first element is ``target``."""
    elements, values = ([_token(draw, field, target)], {target}) if pin else ([], set())
    # day fields: mostly '*' so that expressions fire within the few days of a window
    stars = ["*"] * 5 + ["*/"] * 2 if day else ["*", "*/"]
    kinds = [*stars, "n", "n", "a-b", "a-b/", "a/"]
    for index in range(len(elements), draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "*" and index == 0:
            elements.append("*")
            values.update(range(field.low, field.top + 1))
            break  # '*' alone; lists below start with something else
        if kind in ("*", "n"):
            value = _number(draw, field, target)
            elements.append(_token(draw, field, value))
            values.add(value)
        elif kind == "*/":
            step = _step(draw, field)
            elements.append(f"*/{step}")
            values.update(range(field.low, field.top + 1, step))
        elif kind == "a/":
            start, step = _number(draw, field, target), _step(draw, field)
            elements.append(f"{start}/{step}")
            first = start % 7 if field is DOW_F else start
            values.update(range(first, field.top + 1, step))
        else:
            a, b = sorted((_number(draw, field, target), _number(draw, field, target)))
            text = f"{_token(draw, field, a)}-{_token(draw, field, b)}"
            step = _step(draw, field) if kind == "a-b/" else 1
            elements.append(text + (f"/{step}" if kind == "a-b/" else ""))
            values.update(range(a, b + 1, step))
    if field is DOW_F:
        values = {v % 7 for v in values}
    return ",".join(elements), frozenset(values)


@dataclass(frozen=True)
class Expr:
    text: str
    seconds: frozenset[int] | None
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    day_and: bool  # day-of-month or day-of-week starts with '*': both must match
    fixed: bool  # neither minute nor hour starts with '*'

    def matches(self, wall: datetime) -> bool:
        if self.seconds is not None and wall.second not in self.seconds:
            return False
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        dom, dow = wall.day in self.doms, (wall.weekday() + 1) % 7 in self.dows
        return (dom and dow) if self.day_and else (dom or dow)

    def can_fire(self) -> bool:
        """False when no calendar date matches (``0 0 30 2 *``): Cron must reject it."""
        if not self.day_and:
            return True  # any day of the week occurs in every month
        longest = {m: 29 if m == 2 else calendar.monthrange(2001, m)[1] for m in range(1, 13)}
        return any(d <= longest[m] for m in self.months for d in self.doms)


@st.composite
def expressions(draw: st.DrawFn, six: bool, target: datetime) -> Expr:
    """A random expression whose fields often include the fields of wall time ``target``."""
    parts = {}
    specs = [
        ("seconds", SECOND_F, target.second, False),
        ("minutes", MINUTE_F, target.minute, False),
        ("hours", HOUR_F, target.hour, False),
        ("doms", DOM_F, target.day, True),
        ("months", MONTH_F, target.month, True),
        ("dows", DOW_F, (target.weekday() + 1) % 7, True),
    ][0 if six else 1 :]
    pinned = draw(st.booleans())  # aim at the target: mostly a fixed-time job matching it
    for key, field, value, day in specs:
        pin = pinned and draw(st.integers(0, 4)) > 0
        parts[key] = draw(field_text(field, value, day, pin))
    texts = {key: text for key, (text, _) in parts.items()}
    return Expr(
        text=" ".join(texts[key] for key, *_ in specs),
        seconds=parts["seconds"][1] if six else None,
        minutes=parts["minutes"][1],
        hours=parts["hours"][1],
        doms=parts["doms"][1],
        months=parts["months"][1],
        dows=parts["dows"][1],
        day_and=texts["doms"].startswith("*") or texts["dows"].startswith("*"),
        fixed=not (texts["minutes"].startswith("*") or texts["hours"].startswith("*")),
    )


# -- the oracle ----------------------------------------------------------------------------------


def wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def oracle(
    expr: Expr,
    zone: ZoneInfo,
    after: datetime,
    until: datetime,
    limit: int,
    notes: set[str] | None = None,
) -> list[datetime]:
    """Fire times in (after, until], at most ``limit``, by walking every step in UTC.
    ``notes`` collects which DST rules decided something (for hypothesis statistics)."""
    notes = set() if notes is None else notes
    step = SECOND if expr.seconds is not None else MINUTE
    # Start early enough that a repeated (fall-back) interval containing ``after`` is known.
    t = datetime.fromtimestamp(
        (int((after - DST_LIMIT - step).timestamp()) // int(step.total_seconds()))
        * int(step.total_seconds()),
        UTC,
    )
    previous = wall(t - step, zone)
    seen = previous  # cronie's virtual clock: the latest wall time already handled
    out: list[datetime] = []
    while t <= until and len(out) < limit:
        now = wall(t, zone)
        jump = now - previous - step
        if -DST_LIMIT <= jump <= timedelta(0):  # as usual, or DST ended: walls may repeat
            fire = expr.matches(now) and (not expr.fixed or now > seen)
            if expr.matches(now) and now <= seen and t > after:
                notes.add("fixed-time repeat suppressed" if expr.fixed else "interval repeat")
        elif timedelta(0) < jump < DST_LIMIT:  # DST began: skipped wall times
            skipped = (previous + step * i for i in range(1, jump // step + 1))
            fire = expr.matches(now) or (expr.fixed and any(map(expr.matches, skipped)))
            if fire and not expr.matches(now) and t > after:
                notes.add("fixed-time gap fires at the jump")
        else:  # clock correction
            fire, seen = expr.matches(now), now
        if jump > timedelta(0) or now > seen:
            seen = now
        if fire and t > after:
            out.append(t)
        previous = now
        t += step
    return out


@cache
def transitions(name: str) -> tuple[datetime, ...]:
    """UTC instants in YEARS (OTHER_YEARS) at which the zone's offset changes (to the second)."""
    zone, (first, last) = ZoneInfo(name), OTHER_YEARS.get(name, YEARS)
    found = []
    t = datetime(first, 1, 1, tzinfo=UTC)
    end = datetime(last + 1, 1, 1, tzinfo=UTC)
    while t < end:
        nxt = t + timedelta(hours=1)
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            lo, hi = t, nxt
            while hi - lo > SECOND:
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == t.astimezone(zone).utcoffset():
                    lo = mid
                else:
                    hi = mid
            found.append(hi.replace(microsecond=0))
        t = nxt
    return tuple(found)


@dataclass(frozen=True)
class Case:
    expr: Expr
    zone: str
    after: datetime
    until: datetime


@st.composite
def cases(draw: st.DrawFn, six: bool) -> Case:
    """A zone, an (after, until] window near one of its transitions (or anywhere in YEARS
    for zones without), and an expression that often matches a wall time near it."""
    name = draw(st.sampled_from(ZONES))
    zone, known = ZoneInfo(name), transitions(name)
    if known:
        centre = draw(st.sampled_from(known))
    else:
        centre = datetime(YEARS[0], 1, 1, tzinfo=UTC) + timedelta(
            hours=draw(st.integers(0, 6 * 365 * 24))
        )
    # Window lengths and positions are drawn from a few shapes plus jitter: hypothesis
    # favours boundary values, and a one-minute window beside the transition tests little.
    length = draw(st.sampled_from([1, 2, 3, 4] if six else [1, 6, 24, 48, 72])) * HOUR
    length -= draw(st.integers(0, 59)) * MINUTE
    # the transition near the start, middle or end of the window; or the window starting
    # shortly after it (inside a repeated interval)
    where = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, -0.2, -0.5]))
    after = centre - length * where if where >= 0 else centre - HOUR * where
    after -= draw(st.integers(0, 3599)) * SECOND
    after += draw(st.sampled_from([0, 0, 1, 500_000, 999_999])) * timedelta(microseconds=1)
    # a wall time near the transition: before or after it, in the gap or a repeated interval
    side = centre - timedelta(microseconds=draw(st.sampled_from([0, 1])))
    minutes = draw(st.sampled_from([-60, -30, -15, -1, 0, 1, 15, 29, 45, 60, 90]))
    target = wall(side, zone) + (minutes + draw(st.integers(0, 14))) * MINUTE
    target += draw(st.integers(0, 59)) * SECOND
    return Case(draw(expressions(six, target)), name, after, after + length)


def check(case: Case) -> None:
    expr, name, after, until = case.expr, case.zone, case.after, case.until
    zone = ZoneInfo(name)
    try:
        cron = Cron(expr.text, name)
    except CronError as exc:
        assert not expr.can_fire(), f"{expr.text!r} rejected: {exc}"
        assume(False)
    assert expr.can_fire(), f"{expr.text!r} never fires but was accepted"
    assert cron.fixed_time is expr.fixed
    assert cron.has_seconds is (expr.seconds is not None)

    got = cron.fire_times(after, until, LIMIT)
    event("fixed-time" if expr.fixed else "interval")
    event("no fire time" if not got else "fires")
    event("day OR" if not expr.day_and else "day AND")

    # strictly increasing, inside the window, aware UTC
    assert all(a < b for a, b in pairwise(got))
    assert all(after < t <= until and t.tzinfo is UTC for t in got)
    # every fire time matches in local wall time, or is the jump of a gap (fixed-time jobs)
    for t in got:
        if not expr.matches(wall(t, zone)):
            before = wall(t - timedelta(microseconds=1), zone)
            assert expr.fixed and wall(t, zone) - before > SECOND, (expr.text, t)
    # a fixed-time job runs at most once per local date and wall time (no repeats in a fold)
    if expr.fixed:
        walls = [wall(t, zone) for t in got]
        assert len(set(walls)) == len(walls), expr.text
    # and all of it agrees with the brute-force oracle
    notes: set[str] = set()
    assert got == oracle(expr, zone, after, until, LIMIT, notes)
    for note in notes:
        event(note)


FAST = settings(
    max_examples=120,
    deadline=None,
    database=None,  # no .hypothesis/ directory; a failure prints its reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FAST
@given(cases(six=False))
def test_five_field_expressions_agree_with_the_oracle(case: Case) -> None:
    check(case)


@settings(FAST, max_examples=40)
@given(cases(six=True))
def test_six_field_expressions_agree_with_the_oracle(case: Case) -> None:
    check(case)


# -- the oracle itself, pinned on hand-checked cases ----------------------------------------------


def _expr(text: str) -> Expr:
    """Parse plain expressions (numbers, ranges, '*', steps, lists) for the oracle's tests."""
    fields = text.split()
    specs = [MINUTE_F, HOUR_F, DOM_F, MONTH_F, DOW_F]
    if len(fields) == 6:
        specs.insert(0, SECOND_F)
    sets = []
    for part, field in zip(fields, specs, strict=True):
        values: set[int] = set()
        for element in part.split(","):
            base, _, step = element.partition("/")
            lo, _, hi = base.partition("-")
            lo, hi = (field.low, field.top) if base == "*" else (int(lo), int(hi or lo))
            values.update(range(lo, hi + 1, int(step or 1)))
        sets.append(frozenset(values))
    if len(fields) == 5:
        sets.insert(0, None)
    m, h, dom, dow = fields[-5], fields[-4], fields[-3], fields[-1]
    return Expr(
        text,
        *sets,
        day_and=dom.startswith("*") or dow.startswith("*"),
        fixed=not (m.startswith("*") or h.startswith("*")),
    )


def local_day(zone: ZoneInfo, day: tuple[int, int, int]) -> tuple[datetime, datetime]:
    """(after, until) covering one local calendar day."""
    start = datetime(*day, tzinfo=zone).astimezone(UTC)
    end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    return start - timedelta(microseconds=1), end - timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("expression", "name", "day", "expected"),
    [
        ("30 2 * * *", "Europe/Berlin", (2025, 3, 30), ["03:00+0200"]),  # gap: at the jump
        ("30 2 * * *", "Europe/Berlin", (2025, 10, 26), ["02:30+0200"]),  # fold: first only
        (
            "*/30 1-2 * * *",
            "Europe/Berlin",
            (2025, 10, 26),
            ["01:00+0200", "01:30+0200"] + ["02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100"],
        ),
        ("15 2 * * *", "Australia/Lord_Howe", (2025, 10, 5), ["02:30+1100"]),
        ("45 1 * * *", "Australia/Lord_Howe", (2025, 4, 6), ["01:45+1100"]),
        ("30 1 * * *", "Australia/Lord_Howe", (2025, 4, 6), ["01:30+1100"]),
        (
            "30 * * * *",
            "Australia/Lord_Howe",
            (2025, 4, 6),
            ["00:30+1100", "01:30+1100"]
            + ["01:30+1030"]
            + [f"{h:02}:30+1030" for h in range(2, 24)],
        ),
        ("30 5 * * *", "Antarctica/Casey", (2018, 10, 7), []),  # +3 h: a clock correction
        ("30 1 * * *", "Antarctica/Casey", (2019, 3, 17), ["01:30+1100"]),  # -3 h: DST
    ],
)
def test_oracle_on_hand_checked_days(
    expression: str, name: str, day: tuple[int, int, int], expected: list[str]
) -> None:
    zone = ZoneInfo(name)
    got = oracle(_expr(expression), zone, *local_day(zone, day), 100)
    assert [t.astimezone(zone).strftime("%H:%M%z") for t in got] == expected
