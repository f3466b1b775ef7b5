"""materialiser.plan: which fire times a tick materialises (pure, no database)."""

from datetime import UTC, datetime, timedelta

from scheduler.cron import Cron
from scheduler.materialiser import plan


def test_not_due_plans_nothing():
    cron = Cron("*/5 * * * *")
    nxt = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    p = plan(cron, nxt, nxt - timedelta(seconds=1), 100)
    assert p.fire_times == [] and p.next_run_at == nxt and not p.capped


def test_due_fire_time_and_next_computed_from_fire_time_not_now():
    cron = Cron("*/5 * * * *")
    nxt = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    now = nxt + timedelta(seconds=3)  # a slow tick
    p = plan(cron, nxt, now, 100)
    assert p.fire_times == [nxt]
    assert p.next_run_at == datetime(2026, 1, 1, 12, 10, tzinfo=UTC)


def test_missed_fire_times_are_all_planned_in_order():
    cron = Cron("* * * * *")
    nxt = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 12, 4, 30, tzinfo=UTC)
    p = plan(cron, nxt, now, 100)
    assert p.fire_times == [nxt + timedelta(minutes=i) for i in range(5)]
    assert p.next_run_at == datetime(2026, 1, 1, 12, 5, tzinfo=UTC)


def test_cap_keeps_the_oldest_and_jumps_past_now():
    cron = Cron("* * * * *")
    nxt = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)
    p = plan(cron, nxt, now, 3)
    assert p.fire_times == [nxt, nxt + timedelta(minutes=1), nxt + timedelta(minutes=2)]
    assert p.capped
    assert p.next_run_at == datetime(2026, 1, 1, 10, 1, tzinfo=UTC)


def test_fire_times_use_the_schedule_zone():
    cron = Cron("0 9 * * *", "Europe/Berlin")
    nxt = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)  # 09:00 CET
    p = plan(cron, nxt, nxt, 10)
    assert p.fire_times == [nxt]
    assert p.next_run_at == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)
