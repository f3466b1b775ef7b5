"""materialiser.plan: which due fire times run and which are recorded as skipped (pure)."""

from datetime import UTC, datetime, timedelta

from scheduler.config import MisfirePolicy, OverlapPolicy
from scheduler.cron import Cron
from scheduler.planning import Policy, Skip, plan

MINUTELY = Cron("* * * * *")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def test_not_due_plans_nothing():
    p = plan(Cron("*/5 * * * *"), minute(5), minute(5) - timedelta(seconds=1))
    assert p.fire_times == [] and p.next_run_at == minute(5) and p.skips == []


def test_due_fire_time_and_next_computed_from_fire_time_not_now():
    p = plan(Cron("*/5 * * * *"), minute(5), minute(5) + timedelta(seconds=3))  # a slow tick
    assert p.fire_times == [minute(5)] and p.next_run_at == minute(10) and p.skips == []


def test_late_within_grace_is_not_a_misfire_whatever_the_policy():
    """A failover of a few seconds loses no fire time, even with misfire_policy skip."""
    now = minute(2) + timedelta(seconds=50)  # 12:00 is 170 s late, 12:01 110 s, 12:02 50 s
    for policy in MisfirePolicy:
        p = plan(MINUTELY, minute(0), now, Policy(misfire=policy, misfire_grace_s=180))
        assert p.fire_times == [minute(0), minute(1), minute(2)], policy
        assert p.skips == [] and p.next_run_at == minute(3)


def test_run_once_runs_the_most_recent_misfire_plus_on_time_ones():
    now = minute(10) + timedelta(seconds=30)  # outage: 12:00..12:09 misfired, 12:10 on time
    p = plan(MINUTELY, minute(0), now, Policy(misfire=MisfirePolicy.RUN_ONCE))
    assert p.fire_times == [minute(9), minute(10)]
    assert p.skips == [Skip(minute(0), minute(8), 9, "misfire")]
    assert p.next_run_at == minute(11)


def test_skip_runs_only_on_time_fire_times():
    now = minute(10) + timedelta(seconds=30)
    p = plan(MINUTELY, minute(0), now, Policy(misfire=MisfirePolicy.SKIP))
    assert p.fire_times == [minute(10)]
    assert p.skips == [Skip(minute(0), minute(9), 10, "misfire")]


def test_run_all_runs_every_missed_fire_time_up_to_the_cap_most_recent_first_kept():
    now = minute(10) + timedelta(seconds=30)
    p = plan(MINUTELY, minute(0), now, Policy(misfire=MisfirePolicy.RUN_ALL))
    assert p.fire_times == [minute(i) for i in range(11)] and p.skips == []
    capped = plan(MINUTELY, minute(0), now, Policy(misfire=MisfirePolicy.RUN_ALL, max_catch_up=5))
    assert capped.fire_times == [minute(i) for i in range(6, 11)]
    assert capped.skips == [Skip(minute(0), minute(5), 6, "catch_up_cap")]


def test_starting_deadline_records_too_late_fire_times_as_missed():
    now = minute(10) + timedelta(seconds=30)  # deadline 300 s: 12:05:30 and older expired
    p = plan(MINUTELY, minute(0), now, Policy(starting_deadline_s=300))
    assert p.skips == [
        Skip(minute(0), minute(5), 6, "starting_deadline"),
        Skip(minute(6), minute(8), 3, "misfire"),
    ]
    assert p.fire_times == [minute(9), minute(10)]


def test_overlap_skip_keeps_only_the_last_runnable_fire_time():
    now = minute(2) + timedelta(seconds=1)
    p = plan(MINUTELY, minute(0), now, Policy(overlap=OverlapPolicy.SKIP, misfire_grace_s=300))
    assert p.fire_times == [minute(2)]
    assert p.skips == [Skip(minute(0), minute(1), 2, "overlap")]


def test_every_due_fire_time_is_run_or_recorded():
    """Whatever the policy, runs + recorded skips account for every due fire time."""
    cron = Cron("*/7 * * * *")
    now = minute(300) + timedelta(seconds=17)
    due = cron.fire_times(minute(0) - timedelta(microseconds=1), now, 10_000)
    for misfire in MisfirePolicy:
        for overlap in OverlapPolicy:
            for deadline in (None, 3600.0):
                policy = Policy(misfire, overlap, 7, 600.0, deadline)
                p = plan(cron, due[0], now, policy)
                skipped = sum(s.count for s in p.skips)
                assert len(p.fire_times) + skipped == len(due), policy
                assert len(p.fire_times) <= 7
                assert p.fire_times == sorted(p.fire_times) and p.next_run_at > now


def test_a_month_of_every_second_fire_times_is_one_bounded_record():
    cron = Cron("* * * * * *")
    now = T0 + timedelta(days=30)
    p = plan(cron, T0, now, Policy(misfire=MisfirePolicy.RUN_ONCE))
    assert p.fire_times == [now - timedelta(seconds=60 - i) for i in range(61)]
    # counted, not walked: 30 days of seconds but the 61 run
    assert p.skips == [Skip(T0, now - timedelta(seconds=61), 30 * 86400 - 60, "misfire")]
    assert p.next_run_at == now + timedelta(seconds=1)


def test_run_all_of_a_month_is_cut_into_bounded_plans_that_go_on_where_they_stopped():
    """max_catch_up 10,000 of an every-second schedule a month late: each plan holds at most
    `limit` fire times and resumes after the last one; together they run the 10,000 most
    recent fire times once each and record the rest once."""
    cron = Cron("* * * * * *")
    now = T0 + timedelta(days=30)
    policy = Policy(misfire=MisfirePolicy.RUN_ALL, max_catch_up=10_000)
    runs, skips, cursor, plans = [], [], T0, 0
    while cursor <= now:
        p = plan(cron, cursor, now, policy, limit=1_000)
        assert len(p.fire_times) <= 1_000 and p.next_run_at > cursor
        runs += p.fire_times
        skips += p.skips
        cursor, plans = p.next_run_at, plans + 1
    assert plans == 10 and len(runs) == len(set(runs)) == 10_000
    assert runs == [now - timedelta(seconds=9_999 - i) for i in range(10_000)]
    assert skips == [Skip(T0, now - timedelta(seconds=10_000), 30 * 86400 - 9_999, "catch_up_cap")]


def test_fire_times_use_the_schedule_zone():
    cron = Cron("0 9 * * *", "Europe/Berlin")
    nxt = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)  # 09:00 CET
    p = plan(cron, nxt, nxt)
    assert p.fire_times == [nxt] and p.next_run_at == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)


def test_look_ahead_materialises_upcoming_fire_times_as_on_time_jobs():
    now = minute(1) - timedelta(milliseconds=400)
    assert plan(MINUTELY, minute(1), now).fire_times == []
    p = plan(MINUTELY, minute(1), now, ahead=timedelta(seconds=1))
    assert p.fire_times == [minute(1)] and p.next_run_at == minute(2) and p.skips == []


def test_look_ahead_does_not_change_what_counts_as_a_misfire():
    """Lateness is measured against now, not now + ahead."""
    now = minute(2) + timedelta(seconds=30)  # 12:02 is 30 s late: a misfire with 10 s grace
    p = plan(
        MINUTELY,
        minute(0),
        now,
        Policy(misfire=MisfirePolicy.RUN_ONCE, misfire_grace_s=10),
        ahead=timedelta(seconds=40),
    )
    assert p.fire_times == [minute(2), minute(3)]  # the last misfire + one ahead
    assert p.skips == [Skip(minute(0), minute(1), 2, "misfire")]
    assert p.next_run_at == minute(4)


def test_overlap_skip_is_decided_at_the_fire_time_not_ahead():
    now = minute(1) - timedelta(milliseconds=400)
    p = plan(MINUTELY, minute(1), now, Policy(overlap=OverlapPolicy.SKIP), timedelta(seconds=5))
    assert p.fire_times == [] and p.next_run_at == minute(1)
