"""scheduler.interval: the arithmetic agrees with a naive loop (hypothesis), durations and
start instants parse as documented, and planning works for intervals through FireTimes, in
O(1) for any outage length (pure: no database)."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import MisfirePolicy, OverlapPolicy
from scheduler.cron import Cron
from scheduler.cron_count import CronTimes, FireTimes
from scheduler.errors import InvalidArgumentError
from scheduler.interval import Interval, parse_duration, parse_start_at
from scheduler.planning import Policy, plan

T0 = datetime(2025, 3, 30, 0, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def naive(interval: Interval, after: datetime, until: datetime) -> list[datetime]:
    """Fire times in (after, until] by walking k = 0, 1, 2, ... one by one."""
    out, t = [], interval.start
    while t <= until:
        if t > after:
            out.append(t)
        t += interval.step
    return out


everies = st.one_of(
    st.integers(1, 5_000).map(float),
    st.integers(1_000_000, 50_000_000).map(lambda us: us / 10**6),  # whole microseconds
)
offsets = st.integers(-200_000_000, 200_000_000).map(lambda us: timedelta(microseconds=us))


@settings(max_examples=300, deadline=None)
@given(every=everies, start=offsets, after=offsets, span=st.integers(0, 300_000_000))
def test_count_next_nth_and_fire_times_agree_with_a_naive_loop(
    every: float, start: timedelta, after: timedelta, span: int
) -> None:
    interval = Interval(every, T0 + start)
    lo, hi = T0 + after, T0 + after + timedelta(microseconds=span)
    expected = naive(interval, lo, hi)
    assert interval.count(lo, hi) == len(expected)
    assert interval.fire_times(lo, hi, 10**6) == expected
    assert interval.fire_times(lo, hi, 3) == expected[:3]
    first = interval.next_after(lo)
    assert first > lo and (not expected or first == expected[0])
    assert first == interval.start or (first - interval.start) % interval.step == timedelta(0)
    assert first == interval.start or first - interval.step <= lo  # nothing skipped
    for n, t in enumerate(expected, start=1):
        assert interval.nth_after(lo, n) == t
    assert interval.count(hi, lo) == 0  # an empty or reversed range


@given(after=offsets, n=st.integers(1, 10**9))
def test_nth_after_is_exact_far_out(after: timedelta, n: int) -> None:
    interval = Interval(1, T0)
    t = interval.nth_after(T0 + after, n)
    assert interval.count(T0 + after, t) == n
    assert interval.count(T0 + after, t - US) == n - 1


def test_first_fire_time_is_start_and_before_it_nothing_fires() -> None:
    interval = Interval(90, T0)
    assert interval.next_after(T0 - timedelta(days=365)) == T0
    assert interval.next_after(T0 - US) == T0
    assert interval.next_after(T0) == T0 + timedelta(seconds=90)
    assert interval.count(T0 - timedelta(days=1), T0) == 1
    assert interval.fire_times(T0 - US, T0 + timedelta(seconds=180), 10) == [
        T0, T0 + timedelta(seconds=90), T0 + timedelta(seconds=180)
    ]  # fmt: skip


def test_dst_does_not_apply_and_results_are_utc() -> None:
    """Berlin springs forward on 2025-03-30 at 01:00 UTC: an hourly interval stays an hour
    of real time apart, 23 fire times that local day; the zone is for display only."""
    berlin = Interval(3600, datetime(2025, 3, 29, 23, tzinfo=UTC), "Europe/Berlin")
    day = berlin.fire_times(datetime(2025, 3, 29, 22, 59, tzinfo=UTC),
                            datetime(2025, 3, 30, 21, 59, tzinfo=UTC), 100)  # fmt: skip
    assert len(day) == 23
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(day))
    assert all(t.tzinfo is UTC for t in day)
    assert berlin.timezone.key == "Europe/Berlin"
    assert day == Interval(3600, berlin.start).fire_times(day[0] - US, day[-1], 100)


def test_start_in_any_offset_is_the_same_instant() -> None:
    plus_two = datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert Interval(60, plus_two) == Interval(60.0, datetime(2025, 1, 1, tzinfo=UTC))
    assert Interval(60, plus_two).start.tzinfo is UTC


def test_naive_and_bad_arguments_are_refused() -> None:
    interval = Interval(1, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        interval.next_after(datetime(2025, 1, 1))
    with pytest.raises(TypeError):
        interval.count("2025", T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        interval.nth_after(T0, 0)
    with pytest.raises(ValueError, match="limit"):
        interval.fire_times(T0, T0, -1)
    with pytest.raises(InvalidArgumentError, match="no UTC offset"):
        Interval(1, datetime(2025, 1, 1))
    with pytest.raises(InvalidArgumentError, match="shorter than 1 second"):
        Interval(0.5, T0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800),
        ("1h30m", 5400), ("1500ms", 1.5), ("1.5s", 1.5), (" 2h ", 7200), ("PT90S", 90),
        ("pt90s", 90), ("PT1H30M", 5400), ("P1DT12H", 129600), ("P2W", 1209600),
        ("PT0.5M", 30), (90, 90), (1, 1), (1.25, 1.25), ("10d", 864000),
        (315_360_000, 315_360_000), ("3650d", 315_360_000),
    ],
)  # fmt: skip
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "shorter than 1 second"), (0.999999, "shorter than 1 second"),
        ("1ms", "shorter than 1 second"), ("PT0S", "shorter than 1 second"),
        (-5, "negative"), ("-5s", "negative"), (float("nan"), "finite"),
        (float("inf"), "finite"), (True, "not True"), (None, "not None"), ([90], "not [90]"),
        ("yes", "not a duration"), ("90", "number in quotes"), ("1M", "ambiguous"),
        ("P1Y", "not a duration"), ("P1M", "not a duration"), ("PT", "not a duration"),
        ("P1DT", "not a duration"), ("", "not a duration"), ("1h 30m", "not a duration"),
        ("1\x00s", "not a duration"), ("3651d", "longer than 10 years"),
        (10**400, "longer than 10 years"),
        pytest.param(10**5000, "a huge number", id="10**5000"),
        (1.0000001, "more precise than one microsecond"),
        ("1.0000001s", "more precise than one microsecond"), ("9" * 101 + "s", "too long"),
    ],
)  # fmt: skip
def test_bad_durations(value: object, reason: str) -> None:
    with pytest.raises(InvalidArgumentError, match="^every .*" + reason.replace("[", r"\[")):
        parse_duration(value)


def test_start_at_parsing() -> None:
    assert parse_start_at("2025-01-01T01:00:00+01:00") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_start_at("2025-01-01T00:00:00Z") == datetime(2025, 1, 1, tzinfo=UTC)
    for value, reason in [
        ("2025-01-01T00:00:00", "no UTC offset"), (datetime(2025, 1, 1), "no UTC offset"),
        ("2025-01-01", "no UTC offset"), (datetime(2025, 1, 1).date(), "date without a time"),
        ("tomorrow", "not an ISO 8601 instant"), (1735689600, "not 1735689600"),
        ("1969-12-31T23:59:59Z", "not between 1970 and 9000"),
        ("9000-01-01T00:00:00Z", "not between 1970 and 9000"), ("2025\x00", "not an ISO"),
    ]:  # fmt: skip
        with pytest.raises(InvalidArgumentError, match=reason):
            parse_start_at(value)


def test_cron_and_interval_share_the_fire_times_interface() -> None:
    times: list[FireTimes] = [CronTimes(Cron("* * * * * *")), Interval(1, T0)]
    for t in times:
        assert t.count(T0, T0 + timedelta(minutes=1)) == 60
        assert t.nth_after(T0, 60) == T0 + timedelta(minutes=1)


def test_a_week_long_outage_of_a_one_second_interval_is_planned_at_once() -> None:
    """604,801 fire times due: counted, not walked (a loop over them would take seconds per
    plan). run_all keeps the newest max_catch_up, the rest are one catch_up_cap span."""
    interval = Interval(1, T0)
    week = T0 + timedelta(days=7)
    p = plan(interval, T0, week, Policy(misfire=MisfirePolicy.RUN_ALL, max_catch_up=100))
    assert len(p.fire_times) == 100 and p.fire_times[-1] == week
    assert [(s.reason, s.count) for s in p.skips] == [("catch_up_cap", 604_801 - 100)]
    assert p.skips[0].first == T0 and p.next_run_at == week + timedelta(seconds=1)
    # the last 60 s are within misfire_grace_s (60): on time, whatever the policy
    on_time = [week - timedelta(seconds=s) for s in range(59, -1, -1)]
    once = plan(interval, T0, week, Policy(misfire=MisfirePolicy.RUN_ONCE))
    assert once.fire_times == [week - timedelta(seconds=60), *on_time]
    assert [(s.reason, s.count) for s in once.skips] == [("misfire", 604_801 - 61)]
    skipped = plan(interval, T0, week, Policy(misfire=MisfirePolicy.SKIP))
    assert skipped.fire_times == on_time
    assert [(s.reason, s.count) for s in skipped.skips] == [("misfire", 604_801 - 60)]


def test_planning_an_interval_like_a_cron_with_the_same_fire_times() -> None:
    """An every-5-minutes interval anchored at a whole 5 minutes plans exactly like
    */5 * * * * under every policy."""
    cron, interval = Cron("*/5 * * * *"), Interval(300, T0)
    now = T0 + timedelta(hours=3, minutes=2)
    for misfire in MisfirePolicy:
        for overlap in OverlapPolicy:
            policy = Policy(misfire=misfire, overlap=overlap, max_catch_up=7)
            assert plan(interval, T0, now, policy, timedelta(seconds=1)) == plan(
                cron, T0, now, policy, timedelta(seconds=1)
            )


def test_planning_cost_does_not_grow_with_the_outage() -> None:
    """A guard against walking fire times (a ratio in one run, generous margin): planning an
    outage of 1,000 days of a 1 s interval (86 million fire times) costs about what one day
    costs, where a walk would cost 1,000 times more."""

    def cost(days: int) -> float:
        interval, now = Interval(1, T0), T0 + timedelta(days=days)
        started = time.perf_counter()
        for _ in range(200):
            plan(interval, T0, now, Policy(misfire=MisfirePolicy.RUN_ALL, max_catch_up=10))
        return time.perf_counter() - started

    cost(1)  # warm up
    assert cost(1_000) < 20 * cost(1)
