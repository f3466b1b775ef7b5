"""scheduler.cron across DST: both transitions of 2025 in three zones, table-driven.

Rules (cron(8) of cronie / Vixie cron; see the scheduler.cron docstring): a *fixed-time* job
(neither minute nor hour starts with ``*``) whose wall time is skipped by a spring-forward
gap runs once, at the moment of the jump; one whose wall time is repeated by a fall-back
runs once, at the first occurrence. *Interval* jobs (minute or hour starts with ``*``,
including ``30 */2 * * *``) run in real time: skipped wall times do not fire, repeated ones
fire twice.

Transitions used (2025)::

    Europe/Berlin        03-30 01:00Z  02:00 CET   -> 03:00 CEST   (gap 02:00-02:59)
                         10-26 01:00Z  03:00 CEST  -> 02:00 CET    (02:00-02:59 twice)
    America/New_York     03-09 07:00Z  02:00 EST   -> 03:00 EDT    (gap 02:00-02:59)
                         11-02 06:00Z  02:00 EDT   -> 01:00 EST    (01:00-01:59 twice)
    Australia/Lord_Howe  10-05 (local; 10-04 15:30Z)  02:00 +10:30 -> 02:30 +11
                             gap 02:00-02:29; the local day is 23 h 30 min long
                         04-06 (local; 04-05 15:00Z)  02:00 +11    -> 01:30 +10:30
                             01:30-01:59 twice; the local day is 24 h 30 min long

Lord_Howe, derived by hand from the rules (a 30-minute shift):

* ``0 * * * *`` in October: wall 02:00 does not exist, so 23 runs (not 24), one real gap
  of 90 min (01:00 +10:30 = 14:30Z to 03:00 +11 = 16:00Z). In April: 01:00 and 02:00 each
  occur once (the repeat is 01:30-01:59), so 24 runs, again one 90-minute gap (01:00 +11 =
  14:00Z to 02:00 +10:30 = 15:30Z).
* ``30 * * * *``: October 24 runs with one 30-minute gap (01:30 +10:30 = 15:00Z, then
  02:30 +11 = 15:30Z, the jump itself); April 25 runs, 01:30 twice, 30 minutes apart.
* ``*/15`` and ``*/30`` stay 15 / 30 real minutes apart: 94 / 47 runs in the 23.5-hour
  October day, 98 / 49 in the 24.5-hour April day.
* ``30 */2 * * *`` (interval): 12 runs on both days; the real gap across the jump is
  90 min in October (00:30 +10:30 to 02:30 +11) and 150 min in April (00:30 +11 to 02:30
  +10:30); 01:30, the repeated wall time, is not in an even hour.
* Fixed-time: ``15 2 * * *`` in October is in the gap, so it runs at the jump, 02:30 +11
  (15:30Z); ``30 2 * * *`` runs at 02:30 +11 too, the first wall time after the jump
  (the same instant); ``0,30 2 * * *`` therefore runs once that day. In April ``45 1 * * *``
  and ``30 1 * * *`` run once, at +11 (the first pass), not again at +10:30.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from scheduler.cron import Cron

BERLIN, NEW_YORK, LORD_HOWE = "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"
Day = tuple[int, int, int]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_day(zone: ZoneInfo, day: Day) -> tuple[datetime, datetime]:
    """(after, until) covering one local calendar day: after < t <= until."""
    start = datetime(*day, tzinfo=zone).astimezone(UTC)
    end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    micro = timedelta(microseconds=1)
    return start - micro, end - micro


def fires_on(expression: str, zone_name: str, day: Day) -> list[datetime]:
    zone = ZoneInfo(zone_name)
    return Cron(expression, zone_name).fire_times(*local_day(zone, day), 1000)


def local(times: list[datetime], zone_name: str) -> list[str]:
    zone = ZoneInfo(zone_name)
    return [t.astimezone(zone).strftime("%H:%M%z") for t in times]


# -- the transitions themselves (the tzdata facts the tables rely on) -------------------------


@pytest.mark.parametrize(
    ("zone_name", "moment", "before", "after"),
    [
        (BERLIN, utc(2025, 3, 30, 1), "+0100", "+0200"),
        (BERLIN, utc(2025, 10, 26, 1), "+0200", "+0100"),
        (NEW_YORK, utc(2025, 3, 9, 7), "-0500", "-0400"),
        (NEW_YORK, utc(2025, 11, 2, 6), "-0400", "-0500"),
        (LORD_HOWE, utc(2025, 10, 4, 15, 30), "+1030", "+1100"),
        (LORD_HOWE, utc(2025, 4, 5, 15), "+1100", "+1030"),
    ],
)
def test_transitions(zone_name: str, moment: datetime, before: str, after: str) -> None:
    zone = ZoneInfo(zone_name)
    assert (moment - timedelta(seconds=1)).astimezone(zone).strftime("%z") == before
    assert moment.astimezone(zone).strftime("%z") == after


# -- fixed-time jobs: every fire time of the local day -----------------------------------------

FIXED = [
    # Berlin, spring forward: 02:00-02:59 does not exist
    (BERLIN, (2025, 3, 30), "30 2 * * *", ["03:00+0200"]),  # in the gap: at the jump
    (BERLIN, (2025, 3, 30), "0,30 2 * * *", ["03:00+0200"]),  # two gap times, one run
    (BERLIN, (2025, 3, 30), "0 3 * * *", ["03:00+0200"]),  # the first wall time after it
    (BERLIN, (2025, 3, 30), "30 1 * * *", ["01:30+0100"]),
    # Berlin, fall back: 02:00-02:59 twice
    (BERLIN, (2025, 10, 26), "30 2 * * *", ["02:30+0200"]),  # first occurrence only
    (BERLIN, (2025, 10, 26), "0,30 2 * * *", ["02:00+0200", "02:30+0200"]),
    (BERLIN, (2025, 10, 26), "0 3 * * *", ["03:00+0100"]),
    # New York, spring forward: 02:00-02:59 does not exist
    (NEW_YORK, (2025, 3, 9), "30 2 * * *", ["03:00-0400"]),
    (NEW_YORK, (2025, 3, 9), "30 1 * * *", ["01:30-0500"]),
    # New York, fall back: 01:00-01:59 twice
    (NEW_YORK, (2025, 11, 2), "30 1 * * *", ["01:30-0400"]),
    (NEW_YORK, (2025, 11, 2), "30 2 * * *", ["02:30-0500"]),
    # Lord Howe, October: 02:00-02:29 does not exist
    (LORD_HOWE, (2025, 10, 5), "30 2 * * *", ["02:30+1100"]),  # exists: it is the jump
    (LORD_HOWE, (2025, 10, 5), "15 2 * * *", ["02:30+1100"]),  # in the gap: at the jump
    (LORD_HOWE, (2025, 10, 5), "0,30 2 * * *", ["02:30+1100"]),  # both at 15:30Z: once
    (LORD_HOWE, (2025, 10, 5), "45 1 * * *", ["01:45+1030"]),
    # Lord Howe, April: 01:30-01:59 twice
    (LORD_HOWE, (2025, 4, 6), "45 1 * * *", ["01:45+1100"]),  # first occurrence only
    (LORD_HOWE, (2025, 4, 6), "30 1 * * *", ["01:30+1100"]),
    (LORD_HOWE, (2025, 4, 6), "15 2 * * *", ["02:15+1030"]),
    (LORD_HOWE, (2025, 4, 6), "30 2 * * *", ["02:30+1030"]),
    (LORD_HOWE, (2025, 4, 6), "0,30 2 * * *", ["02:00+1030", "02:30+1030"]),
]


@pytest.mark.parametrize(("zone_name", "day", "expression", "expected"), FIXED)
def test_fixed_time_jobs_on_dst_days(
    zone_name: str, day: Day, expression: str, expected: list[str]
) -> None:
    assert Cron(expression, zone_name).fixed_time
    assert local(fires_on(expression, zone_name, day), zone_name) == expected


# -- interval jobs: run count, real gaps, and the runs within an hour of the transition ----------

Q = ["00", "15", "30", "45"]
INTERVAL = [
    # zone, local day, expression, runs that day, real minutes between runs, runs near it
    (BERLIN, (2025, 3, 30), "0 * * * *", 23, {60}, ["01:00+0100", "03:00+0200", "04:00+0200"]),
    (BERLIN, (2025, 3, 30), "*/15 * * * *", 92, {15},
     [f"01:{m}+0100" for m in Q] + [f"03:{m}+0200" for m in Q] + ["04:00+0200"]),
    (BERLIN, (2025, 3, 30), "*/30 * * * *", 46, {30},
     ["01:00+0100", "01:30+0100", "03:00+0200", "03:30+0200", "04:00+0200"]),
    (BERLIN, (2025, 3, 30), "30 */2 * * *", 11, {120, 180}, []),  # 02:30 does not occur
    (BERLIN, (2025, 10, 26), "0 * * * *", 25, {60}, ["02:00+0200", "02:00+0100", "03:00+0100"]),
    (BERLIN, (2025, 10, 26), "*/15 * * * *", 100, {15},
     [f"02:{m}+0200" for m in Q] + [f"02:{m}+0100" for m in Q] + ["03:00+0100"]),
    (BERLIN, (2025, 10, 26), "*/30 * * * *", 50, {30},
     ["02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100", "03:00+0100"]),
    (BERLIN, (2025, 10, 26), "30 */2 * * *", 13, {60, 120}, ["02:30+0200", "02:30+0100"]),
    (NEW_YORK, (2025, 3, 9), "0 * * * *", 23, {60}, ["01:00-0500", "03:00-0400", "04:00-0400"]),
    (NEW_YORK, (2025, 3, 9), "*/15 * * * *", 92, {15},
     [f"01:{m}-0500" for m in Q] + [f"03:{m}-0400" for m in Q] + ["04:00-0400"]),
    (NEW_YORK, (2025, 3, 9), "*/30 * * * *", 46, {30},
     ["01:00-0500", "01:30-0500", "03:00-0400", "03:30-0400", "04:00-0400"]),
    (NEW_YORK, (2025, 3, 9), "30 */2 * * *", 11, {120, 180}, []),
    (NEW_YORK, (2025, 11, 2), "0 * * * *", 25, {60}, ["01:00-0400", "01:00-0500", "02:00-0500"]),
    (NEW_YORK, (2025, 11, 2), "*/15 * * * *", 100, {15},
     [f"01:{m}-0400" for m in Q] + [f"01:{m}-0500" for m in Q] + ["02:00-0500"]),
    (NEW_YORK, (2025, 11, 2), "*/30 * * * *", 50, {30},
     ["01:00-0400", "01:30-0400", "01:00-0500", "01:30-0500", "02:00-0500"]),
    (NEW_YORK, (2025, 11, 2), "30 */2 * * *", 12, {120, 180}, []),  # 01:30 is an odd hour
    (LORD_HOWE, (2025, 10, 5), "0 * * * *", 23, {60, 90}, ["01:00+1030", "03:00+1100"]),
    (LORD_HOWE, (2025, 10, 5), "30 * * * *", 24, {30, 60},
     ["01:30+1030", "02:30+1100", "03:30+1100"]),
    (LORD_HOWE, (2025, 10, 5), "*/15 * * * *", 94, {15},
     [f"01:{m}+1030" for m in Q] + ["02:30+1100", "02:45+1100"]
     + ["03:00+1100", "03:15+1100", "03:30+1100"]),
    (LORD_HOWE, (2025, 10, 5), "*/30 * * * *", 47, {30},
     ["01:00+1030", "01:30+1030", "02:30+1100", "03:00+1100", "03:30+1100"]),
    (LORD_HOWE, (2025, 10, 5), "30 */2 * * *", 12, {90, 120}, ["02:30+1100"]),
    (LORD_HOWE, (2025, 4, 6), "0 * * * *", 24, {60, 90}, ["01:00+1100", "02:00+1030"]),
    (LORD_HOWE, (2025, 4, 6), "30 * * * *", 25, {30, 60},
     ["01:30+1100", "01:30+1030", "02:30+1030"]),
    (LORD_HOWE, (2025, 4, 6), "*/15 * * * *", 98, {15},
     [f"01:{m}+1100" for m in Q] + ["01:30+1030", "01:45+1030"]
     + ["02:00+1030", "02:15+1030", "02:30+1030"]),
    (LORD_HOWE, (2025, 4, 6), "*/30 * * * *", 49, {30},
     ["01:00+1100", "01:30+1100", "01:30+1030", "02:00+1030", "02:30+1030"]),
    (LORD_HOWE, (2025, 4, 6), "30 */2 * * *", 12, {120, 150}, ["02:30+1030"]),
]  # fmt: skip

TRANSITION = {
    (BERLIN, (2025, 3, 30)): utc(2025, 3, 30, 1),
    (BERLIN, (2025, 10, 26)): utc(2025, 10, 26, 1),
    (NEW_YORK, (2025, 3, 9)): utc(2025, 3, 9, 7),
    (NEW_YORK, (2025, 11, 2)): utc(2025, 11, 2, 6),
    (LORD_HOWE, (2025, 10, 5)): utc(2025, 10, 4, 15, 30),
    (LORD_HOWE, (2025, 4, 6)): utc(2025, 4, 5, 15),
}


@pytest.mark.parametrize(("zone_name", "day", "expression", "runs", "gaps", "near"), INTERVAL)
def test_interval_jobs_on_dst_days(
    zone_name: str, day: Day, expression: str, runs: int, gaps: set[int], near: list[str]
) -> None:
    assert not Cron(expression, zone_name).fixed_time
    got = fires_on(expression, zone_name, day)
    assert len(got) == runs
    assert {(b - a) // timedelta(minutes=1) for a, b in pairwise(got)} == gaps
    moment, hour = TRANSITION[zone_name, day], timedelta(hours=1)
    assert local([t for t in got if moment - hour <= t <= moment + hour], zone_name) == near


def test_the_tables_cover_both_transitions_of_each_zone() -> None:
    for zone_name in (BERLIN, NEW_YORK, LORD_HOWE):
        days = {day for zone, day, *_ in FIXED + INTERVAL if zone == zone_name}
        assert days == {day for zone, day in TRANSITION if zone == zone_name}
        for day in days:
            expressions = {e for zone, d, e, *_ in INTERVAL if (zone, d) == (zone_name, day)}
            assert {"0 * * * *", "*/15 * * * *", "*/30 * * * *", "30 */2 * * *"} <= expressions


# -- starting inside the transition, six fields, other zones ---------------------------------------


def test_lord_howe_from_inside_the_repeated_half_hour() -> None:
    second_pass = utc(2025, 4, 5, 15, 10)  # 01:40 +10:30, the second 01:40 of the night
    assert second_pass.astimezone(ZoneInfo(LORD_HOWE)).strftime("%H:%M%z") == "01:40+1030"
    # a fixed-time job ran at 01:45 +11 already: next is tomorrow's 01:45
    assert Cron("45 1 * * *", LORD_HOWE).next_after(second_pass) == utc(2025, 4, 6, 15, 15)
    # an interval job runs again at 01:45 +10:30
    assert Cron("*/15 * * * *", LORD_HOWE).next_after(second_pass) == utc(2025, 4, 5, 15, 15)
    # from the first pass, the fixed-time job is still due at 01:45 +11
    assert Cron("45 1 * * *", LORD_HOWE).next_after(utc(2025, 4, 5, 14, 40)) == utc(
        2025, 4, 5, 14, 45
    )


def test_lord_howe_gap_with_seconds() -> None:
    """Six fields (seconds first): 02:15:30 is in the gap, so it runs at the jump."""
    assert Cron("30 15 2 * * *", LORD_HOWE).fire_times(
        *local_day(ZoneInfo(LORD_HOWE), (2025, 10, 5)), 10
    ) == [utc(2025, 10, 4, 15, 30)]
    every_10_s = Cron("*/10 * * * * *", LORD_HOWE).fire_times(
        utc(2025, 10, 4, 15, 29, 40), utc(2025, 10, 4, 15, 30, 10), 10
    )
    assert local(every_10_s, LORD_HOWE) == ["01:59+1030", "02:30+1100", "02:30+1100"]
    assert every_10_s == [
        utc(2025, 10, 4, 15, 29, 50),
        utc(2025, 10, 4, 15, 30),
        utc(2025, 10, 4, 15, 30, 10),
    ]


def test_santiago_changes_at_midnight() -> None:
    """Chile: 2025-09-07 00:00 -04 -> 01:00 -03; 2025-04-05 24:00 -03 -> 23:00 -04."""
    santiago = "America/Santiago"
    assert local(fires_on("0 0 * * *", santiago, (2025, 9, 7)), santiago) == ["01:00-0300"]
    assert local(fires_on("0 0 * * SUN", santiago, (2025, 9, 7)), santiago) == ["01:00-0300"]
    assert local(fires_on("30 23 * * *", santiago, (2025, 4, 5)), santiago) == ["23:30-0300"]
    assert len(fires_on("30 * * * *", santiago, (2025, 4, 5))) == 25


def test_three_hour_jumps_follow_cronie() -> None:
    """cronie calls a forward jump of 3 h a clock correction and a backward one DST."""
    casey = "Antarctica/Casey"
    # 2018-10-07 04:00 +08 -> 07:00 +11: a job at 05:30 is skipped, not run at the jump
    assert fires_on("30 5 * * *", casey, (2018, 10, 7)) == []
    assert local(fires_on("30 7 * * *", casey, (2018, 10, 7)), casey) == ["07:30+1100"]
    # 2019-03-17 03:00 +11 -> 00:00 +08: 01:30 happens twice, the job runs once
    assert local(fires_on("30 1 * * *", casey, (2019, 3, 17)), casey) == ["01:30+1100"]
    assert len(fires_on("30 * * * *", casey, (2019, 3, 17))) == 27
