"""scheduler.cron_count agrees with enumerating fire times one by one (Cron.fire_times),
on the DST-heavy windows of tests/unit/test_cron_properties.py, and stays fast on long ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, event, given

from scheduler.cron import Cron
from scheduler.cron_count import count, last_in, nth_after
from scheduler.errors import CronError
from tests.unit.test_cron_properties import FAST, Case, cases

ENOUGH = 50_000  # more fire times than any drawn window holds


def _agree(case: Case) -> None:
    try:
        cron = Cron(case.expr.text, case.zone)
    except CronError:
        assume(False)
    enumerated = cron.fire_times(case.after, case.until, ENOUGH)
    assert len(enumerated) < ENOUGH
    event("no fire time" if not enumerated else "fires")
    assert count(cron, case.after, case.until) == len(enumerated)
    if enumerated:
        k = len(enumerated)
        assert last_in(cron, case.after, case.until) == enumerated[-1]
        for n in {1, (k + 1) // 2, k}:
            assert nth_after(cron, case.after, n) == enumerated[n - 1]
    else:
        assert last_in(cron, case.after, case.until) is None


@FAST
@given(cases(six=False))
def test_five_field_counts_agree_with_enumeration(case: Case) -> None:
    _agree(case)


@FAST
@given(cases(six=True))
def test_six_field_counts_agree_with_enumeration(case: Case) -> None:
    _agree(case)


@pytest.mark.parametrize(
    ("expression", "zone", "days"),
    [
        ("* * * * * *", "Europe/Berlin", 31),  # 2.7 million fire times, two DST changes
        ("*/5 * * * *", "America/New_York", 365),
        ("30 2 * * *", "Europe/Berlin", 3650),  # fixed-time in the gap and the fold, ten years
        ("0 0 29 2 *", "UTC", 400 * 365),
    ],
)
@pytest.mark.timeout(10)
def test_long_ranges_are_counted_without_enumerating(expression, zone, days):
    """A month of an every-second schedule would take minutes to enumerate; counting it
    must take a moment (the pytest timeout is the guard, with a wide margin)."""
    cron = Cron(expression, zone)
    after = datetime(2025, 1, 1, tzinfo=UTC)
    until = after + timedelta(days=days)
    n = count(cron, after, until)
    assert n > 0
    # spot check: the count of the whole range is the sum of the counts of its halves
    middle = after + timedelta(days=days / 2, seconds=17)
    assert n == count(cron, after, middle) + count(cron, middle, until)
    last = last_in(cron, after, until)
    assert last is not None and count(cron, last, until) == 0
    assert count(cron, after, last) == n


def test_known_counts_across_dst():
    berlin = Cron("30 2 * * *", "Europe/Berlin")  # once a day, also on both DST days
    start = datetime(2025, 3, 1, tzinfo=UTC)
    assert count(berlin, start, datetime(2025, 11, 1, tzinfo=UTC)) == 245
    hourly = Cron("0 * * * *", "Europe/Berlin")  # 23 on the spring day, 25 in the autumn
    spring = datetime(2025, 3, 29, 23, tzinfo=UTC)  # 00:00 local, 30 March
    autumn = datetime(2025, 10, 25, 22, tzinfo=UTC)  # 00:00 local, 26 October
    assert count(hourly, spring - timedelta(seconds=1), spring + timedelta(hours=23) - timedelta(seconds=1)) == 23
    assert count(hourly, autumn - timedelta(seconds=1), autumn + timedelta(hours=25) - timedelta(seconds=1)) == 25
    every_second = Cron("* * * * * *", "UTC")
    assert count(every_second, start, start + timedelta(days=30)) == 30 * 86400
