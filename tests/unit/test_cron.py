"""scheduler.cron: grammar, validation, time zones and the DST rules (pure, no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from scheduler.cron import Cron, validate_timezone
from scheduler.errors import CronError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expression: str, after: datetime, count: int, zone: str = "UTC") -> list[datetime]:
    return Cron(expression, zone).fire_times(after, after + timedelta(days=366 * 100), count)


def local_day(zone: ZoneInfo, year: int, month: int, day: int) -> tuple[datetime, datetime]:
    """(after, until) covering one local calendar day: after < t <= until."""
    start = datetime(year, month, day, tzinfo=zone).astimezone(UTC)
    end = (datetime(year, month, day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    micro = timedelta(microseconds=1)
    return start - micro, end - micro


# -- time zones --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/New_York", "Etc/GMT+5"])
def test_valid_zones_are_accepted(name: str) -> None:
    assert validate_timezone(name) == ZoneInfo(name)
    assert Cron("0 0 * * *", name).timezone.key == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Europe/Berln", "unknown time zone 'Europe/Berln'.*did you mean 'Europe/Berlin'"),
        ("europe/berlin", "case-sensitive, did you mean 'Europe/Berlin'"),
        ("../../etc/passwd", "looks like a file path"),
        ("/usr/share/zoneinfo/UTC", "looks like a file path"),
        ("localtime", "'localtime' is not allowed"),
        ("posixrules", "'posixrules' is not allowed"),
        ("Factory", "'Factory' is not allowed"),
        ("", "empty"),
    ],
)
def test_bad_zones_are_rejected_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(CronError, match=reason):
        validate_timezone(name)
    with pytest.raises(CronError, match=reason):
        Cron("0 0 * * *", name)


def test_zone_must_be_a_string() -> None:
    with pytest.raises(CronError, match="must be a string"):
        validate_timezone(3)  # type: ignore[arg-type]


# -- grammar -----------------------------------------------------------------------------------


def test_five_fields_with_steps_ranges_lists() -> None:
    got = fires("*/20 9-10 * * *", utc(2025, 1, 6, 8, 59), 7)
    assert [t.strftime("%d %H:%M") for t in got] == [
        "06 09:00",
        "06 09:20",
        "06 09:40",
        "06 10:00",
        "06 10:20",
        "06 10:40",
        "07 09:00",
    ]
    got = fires("0 8-12/2,17 * * *", utc(2025, 1, 6), 5)
    assert [t.strftime("%d %H") for t in got] == ["06 08", "06 10", "06 12", "06 17", "07 08"]


def test_attributes() -> None:
    cron = Cron("  0 9 * * MON  ", "Europe/Berlin")
    assert cron.expression == "0 9 * * MON"
    assert cron.timezone == BERLIN
    assert cron.has_seconds is False and cron.fixed_time is True
    assert Cron("*/5 * * * * *").has_seconds is True
    assert Cron("0 */2 * * *").fixed_time is False and Cron("*/5 9 * * *").fixed_time is False
    assert Cron("0 9 * * *") == Cron("0 9 * * *", "UTC") != Cron("0 9 * * *", "Europe/Berlin")
    assert "Europe/Berlin" in repr(cron)


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", utc(2026, 1, 1)),
        ("@annually", utc(2026, 1, 1)),
        ("@monthly", utc(2025, 4, 1)),
        ("@weekly", utc(2025, 3, 16)),  # the next Sunday
        ("@daily", utc(2025, 3, 11)),
        ("@midnight", utc(2025, 3, 11)),
        ("@hourly", utc(2025, 3, 10, 13)),
        ("@DAILY", utc(2025, 3, 11)),
    ],
)
def test_macros(macro: str, expected: datetime) -> None:
    assert Cron(macro).next_after(utc(2025, 3, 10, 12, 30)) == expected


def test_hourly_macro_is_an_interval_job_and_daily_a_fixed_time_job() -> None:
    assert Cron("@hourly").fixed_time is False and Cron("@daily").fixed_time is True


def test_six_fields_put_seconds_first() -> None:
    start = utc(2025, 1, 1, 12, 0, 0)
    assert fires("*/5 * * * * *", start, 4) == [
        start + timedelta(seconds=s) for s in (5, 10, 15, 20)
    ]
    assert fires("30 0 9 * * *", start, 2) == [utc(2025, 1, 2, 9, 0, 30), utc(2025, 1, 3, 9, 0, 30)]
    assert Cron("*/5 * * * * *").next_after(utc(2025, 1, 1, 0, 0, 4, 999_999)) == utc(
        2025, 1, 1, 0, 0, 5
    )


def test_names_are_case_insensitive_and_equal_to_numbers() -> None:
    start = utc(2025, 1, 1)
    assert fires("0 0 * JAN,jul sun", start, 6) == fires("0 0 * 1,7 0", start, 6)
    assert fires("0 0 * * MON-FRI", start, 10) == fires("0 0 * * 1-5", start, 10)
    assert all(t.weekday() < 5 for t in fires("0 0 * * mon-fri", start, 20))


def test_seven_is_sunday_too() -> None:
    start = utc(2025, 1, 1)
    assert fires("0 0 * * 7", start, 5) == fires("0 0 * * 0", start, 5)
    assert [t.strftime("%a") for t in fires("0 0 * * 5-7", start, 3)] == ["Fri", "Sat", "Sun"]


def test_day_of_month_and_day_of_week_are_ored_when_both_restricted() -> None:
    got = fires("0 0 1,15 * MON", utc(2024, 12, 31, 1), 7)
    assert [t.strftime("%a %d") for t in got] == [
        "Wed 01",
        "Mon 06",
        "Mon 13",
        "Wed 15",
        "Mon 20",
        "Mon 27",
        "Sat 01",
    ]


def test_a_star_field_ands_day_of_month_with_day_of_week() -> None:
    """Vixie cron: ``0 0 */2 * 1`` = odd days of the month that are Mondays."""
    got = fires("0 0 */2 * 1", utc(2025, 1, 1), 5)
    assert [t.date().isoformat() for t in got] == [
        "2025-01-13",
        "2025-01-27",
        "2025-02-03",
        "2025-02-17",
        "2025-03-03",
    ]
    assert all(
        t.weekday() == 0 and t.day % 2 == 1 for t in fires("0 0 */2 * 1", utc(2025, 1, 1), 40)
    )
    # croniter's own default ORs them, which is what we must not do:
    plain = croniter("0 0 */2 * 1", datetime(2025, 1, 1), ret_type=datetime)
    assert plain.get_next().date().isoformat() == "2025-01-03"


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_expressions_that_never_fire_are_rejected(expression: str) -> None:
    assert croniter.is_valid(expression)  # why is_valid alone is not enough
    with pytest.raises(CronError, match="never fires"):
        Cron(expression)


def test_rare_but_real_dates_are_accepted() -> None:
    assert Cron("0 0 29 2 *").next_after(utc(2025, 1, 1)) == utc(2028, 2, 29)
    # OR semantics: April has no 31st but has Mondays.
    assert Cron("0 0 31 4 MON").next_after(utc(2025, 4, 1)) == utc(2025, 4, 7)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("60 * * * *", "minute field: value 60 is out of range 0-59"),
        ("0 24 * * *", "hour field: value 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field: value 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month field: value 32 is out of range 1-31"),
        ("0 0 * 13 *", "month field: value 13 is out of range 1-12"),
        ("0 0 * 0 *", "month field: value 0 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field: value 8 is out of range 0-7"),
        ("60 0 0 * * *", "second field: value 60 is out of range 0-59"),
        ("0 10-70 * * *", "hour field: value 70 is out of range 0-23"),
    ],
)
def test_out_of_range_values_name_the_field_and_range(expression: str, reason: str) -> None:
    with pytest.raises(CronError, match=reason):
        Cron(expression)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * * *", "expected 5 fields .* got 4"),
        ("* * * * * * *", "expected 5 fields .* got 7"),
        ("", "empty"),
        ("   ", "empty"),
        ("@reboot", "unknown macro"),
        ("0 0 L * *", "not supported"),
        ("0 0 15W * *", "not supported"),
        ("0 0 * * 1#2", "not supported"),
        ("0 0 ? * *", "not supported"),
        ("H * * * *", "not supported"),
        ("MON * * * *", "minute field: 'MON' is not a number"),
        ("0 0 * JANUARY *", "month field: 'JANUARY' is not a number or a month name"),
        ("5-1 * * * *", "range '5-1' runs backwards"),
        ("0 0 * * FRI-MON", "range 'FRI-MON' runs backwards"),
        ("*/0 * * * *", "step 0"),
        ("*/61 * * * *", "step 61"),
        ("1,,2 * * * *", "empty list element"),
        ("0 9\n* * *", "spaces or tabs"),
    ],
)
def test_invalid_syntax_is_rejected_with_a_reason(expression: str, reason: str) -> None:
    with pytest.raises(CronError, match=reason):
        Cron(expression)


def test_all_field_errors_are_reported_together() -> None:
    with pytest.raises(CronError, match="minute field.*; hour field"):
        Cron("61 25 * * *")


def test_cron_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Cron("99 * * * *")


def test_59_slash_15_is_minute_59_only_as_croniter_7_0() -> None:
    """``a/step`` = ``a-max/step``: ``59/15`` fires at :59 once an hour (croniter 7.0.0)."""
    assert fires("59/15 * * * *", utc(2025, 1, 1), 3) == [
        utc(2025, 1, 1, 0, 59),
        utc(2025, 1, 1, 1, 59),
        utc(2025, 1, 1, 2, 59),
    ]
    pinned = croniter("59/15 * * * *", datetime(2025, 1, 1), ret_type=datetime)
    assert [pinned.get_next().minute for _ in range(3)] == [59, 59, 59]
    assert [t.minute for t in fires("10/15 * * * *", utc(2025, 1, 1), 4)] == [10, 25, 40, 55]


def test_equal_range_is_one_value_not_the_whole_field() -> None:
    """croniter reads ``5-5`` as every minute; cron (and we) read it as minute 5."""
    assert fires("5-5 * * * *", utc(2025, 1, 1), 2) == [
        utc(2025, 1, 1, 0, 5),
        utc(2025, 1, 1, 1, 5),
    ]


@pytest.mark.parametrize(
    "expression",
    [
        "*/7 * * * *",
        "0 0 1,15 * MON",
        "15 3-20/4 * * 1-5",
        "0 0 29 2 *",
        "5 4 * JUN-AUG SAT",
        "*/13 */5 * * * *",
        "0 12 1 */3 *",
    ],
)
def test_agrees_with_croniter_in_utc(expression: str) -> None:
    """Where no DST is involved our fire times are croniter's (Vixie day semantics)."""
    seconds = len(expression.split()) == 6
    reference = croniter(
        expression, utc(2024, 1, 1), ret_type=datetime, second_at_beginning=seconds
    )
    assert fires(expression, utc(2024, 1, 1), 20) == [reference.get_next() for _ in range(20)]


# -- pinned semantics, checked against every day of a year ---------------------------------------


def days_of(year: int) -> list[date]:
    first = date(year, 1, 1)
    return [first + timedelta(days=i) for i in range((date(year + 1, 1, 1) - first).days)]


def fire_dates(expression: str, year: int) -> list[date]:
    got = Cron(expression).fire_times(
        utc(year, 1, 1) - timedelta(seconds=1), utc(year, 12, 31), 400
    )
    assert all(t.time() == time(0, 0) for t in got)
    return [t.date() for t in got]


@pytest.mark.parametrize("year", [2025, 2028])
def test_pinned_day_semantics_over_whole_years(year: int) -> None:
    # '*/2' starts with '*': ANDed with Monday -> odd days of the month that are Mondays
    assert fire_dates("0 0 */2 * 1", year) == [
        d for d in days_of(year) if d.day % 2 == 1 and d.weekday() == 0
    ]
    # both restricted: ORed -> the 1st, the 15th and every Monday
    assert fire_dates("0 0 1,15 * MON", year) == [
        d for d in days_of(year) if d.day in (1, 15) or d.weekday() == 0
    ]
    # '*' day of month with a restricted day of week: Mondays only
    assert fire_dates("0 0 * * MON", year) == [d for d in days_of(year) if d.weekday() == 0]
    # OR makes an impossible date possible: every Monday of February (no 30th)
    assert fire_dates("0 0 30 2 MON", year) == [
        d for d in days_of(year) if d.month == 2 and d.weekday() == 0
    ]


def test_pinned_59_slash_15_over_a_day() -> None:
    got = Cron("59/15 * * * *").fire_times(utc(2025, 6, 1), utc(2025, 6, 2), 100)
    assert len(got) == 24 and {t.minute for t in got} == {59}


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 0 30 2 *", "never fires: no date matches"),
        ("0 59/15 * * *", "hour field: value 59 is out of range 0-23"),
        ("0 0 1-32 * *", "day-of-month field: value 32 is out of range 1-31"),
        ("0 0 * 0-12 *", "month field: value 0 is out of range 1-12"),
        ("0 0 * * SUN-8", "day-of-week field: value 8 is out of range 0-7"),
        ("0 0 * * */8", r"day-of-week field: step 8 in '\*/8' must be between 1 and 7"),
        ("0 0 * */13 *", "month field: step 13 .* between 1 and 12"),
    ],
)
def test_pinned_rejections(expression: str, reason: str) -> None:
    with pytest.raises(CronError, match=reason):
        Cron(expression)


# -- next_after / fire_times contract ----------------------------------------------------------


def test_next_after_is_strictly_after_and_returns_utc() -> None:
    cron = Cron("0 9 * * *", "Europe/Berlin")
    first = cron.next_after(utc(2025, 1, 1))
    assert first == utc(2025, 1, 1, 8) and first.tzinfo is UTC
    assert cron.next_after(first) == utc(2025, 1, 2, 8)
    assert cron.next_after(first - timedelta(microseconds=1)) == first


def test_any_input_zone_gives_the_same_instant() -> None:
    cron = Cron("0 9 * * *", "Europe/Berlin")
    instant = utc(2025, 6, 1, 5, 17)
    assert cron.next_after(instant.astimezone(NEW_YORK)) == cron.next_after(instant)


def test_fixed_offset_start_does_not_drift_after_dst() -> None:
    """09:00+02:00 read back from timestamptz after DST ended is 08:00 CET: next is 09:00 CET."""
    cron = Cron("0 9 * * *", "Europe/Berlin")
    start = datetime(2025, 10, 27, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    assert cron.next_after(start) == utc(2025, 10, 27, 8)  # 09:00 CET the same day
    assert cron.next_after(utc(2025, 10, 27, 8)) == utc(2025, 10, 28, 8)


def test_naive_datetimes_are_rejected() -> None:
    cron = Cron("* * * * *")
    with pytest.raises(ValueError, match="naive"):
        cron.next_after(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        cron.fire_times(utc(2025, 1, 1), datetime(2025, 1, 2), 10)
    with pytest.raises(TypeError):
        cron.next_after("2025-01-01T00:00:00Z")  # type: ignore[arg-type]


def test_fire_times_bounds_and_limit() -> None:
    cron = Cron("0 * * * *")
    assert cron.fire_times(utc(2025, 1, 1, 0), utc(2025, 1, 1, 3), 10) == [
        utc(2025, 1, 1, 1),
        utc(2025, 1, 1, 2),
        utc(2025, 1, 1, 3),
    ]  # after excluded, until included
    assert cron.fire_times(utc(2025, 1, 1), utc(2025, 1, 2), 2) == [
        utc(2025, 1, 1, 1),
        utc(2025, 1, 1, 2),
    ]
    assert cron.fire_times(utc(2025, 1, 1), utc(2025, 1, 2), 0) == []
    assert cron.fire_times(utc(2025, 1, 2), utc(2025, 1, 1), 10) == []
    with pytest.raises(ValueError, match="limit"):
        cron.fire_times(utc(2025, 1, 1), utc(2025, 1, 2), -1)


# -- DST: Europe/Berlin, 2025-03-30 (02:00 CET -> 03:00 CEST) and 2025-10-26 (03:00 -> 02:00) ----


def test_spring_forward_gap_fires_once_at_the_jump() -> None:
    cron = Cron("30 2 * * *", "Europe/Berlin")
    got = cron.fire_times(utc(2025, 3, 29), utc(2025, 4, 1), 10)
    assert got == [utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1, 0), utc(2025, 3, 31, 0, 30)]
    assert got[1].astimezone(BERLIN).strftime("%H:%M %Z") == "03:00 CEST"  # the moment of the jump
    # several gap times of one job collapse into that single fire time
    assert Cron("0,30 2 * * *", "Europe/Berlin").fire_times(
        *local_day(BERLIN, 2025, 3, 30), 10
    ) == [utc(2025, 3, 30, 1, 0)]


def test_fixed_time_outside_the_gap_keeps_its_wall_time() -> None:
    got = Cron("0 9 * * *", "Europe/Berlin").fire_times(utc(2025, 3, 29), utc(2025, 3, 31, 12), 5)
    assert got == [utc(2025, 3, 29, 8), utc(2025, 3, 30, 7), utc(2025, 3, 31, 7)]


def test_fall_back_fires_a_fixed_time_job_once_at_the_first_occurrence() -> None:
    cron = Cron("30 2 * * *", "Europe/Berlin")
    got = cron.fire_times(*local_day(BERLIN, 2025, 10, 26), 10)
    assert got == [utc(2025, 10, 26, 0, 30)]  # 02:30 CEST; not again at 02:30 CET (01:30Z)
    assert cron.next_after(utc(2025, 10, 26, 0, 30)) == utc(2025, 10, 27, 1, 30)
    # from inside the repeated hour (02:10 CET) the job has already run today
    assert cron.next_after(utc(2025, 10, 26, 1, 10)) == utc(2025, 10, 27, 1, 30)
    # croniter 7 on its own fires it twice; this is the behaviour we correct:
    reference = croniter("30 2 * * *", datetime(2025, 10, 26, tzinfo=BERLIN), ret_type=datetime)
    assert reference.get_next() == reference.get_next()


def test_hourly_runs_23_and_25_times_on_the_dst_days() -> None:
    cron = Cron("0 * * * *", "Europe/Berlin")
    assert len(cron.fire_times(*local_day(BERLIN, 2025, 3, 30), 100)) == 23
    assert len(cron.fire_times(*local_day(BERLIN, 2025, 10, 26), 100)) == 25
    assert len(cron.fire_times(*local_day(BERLIN, 2025, 10, 27), 100)) == 24


@pytest.mark.parametrize(("day", "runs"), [((2025, 3, 30), 46), ((2025, 10, 26), 50)])
def test_every_30_minutes_stays_30_real_minutes_apart(day: tuple[int, int, int], runs: int) -> None:
    got = Cron("*/30 * * * *", "Europe/Berlin").fire_times(*local_day(BERLIN, *day), 100)
    assert len(got) == runs
    assert {b - a for a, b in pairwise(got)} == {timedelta(minutes=30)}


def test_interval_job_fires_in_both_passes_of_the_repeated_hour() -> None:
    got = Cron("*/30 * * * *", "Europe/Berlin").fire_times(
        utc(2025, 10, 25, 23, 59), utc(2025, 10, 26, 2), 10
    )
    local = [t.astimezone(BERLIN).strftime("%H:%M%z") for t in got]
    assert local == ["02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100", "03:00+0100"]


def test_daily_and_hourly_counts_over_a_whole_year() -> None:
    after, until = utc(2024, 12, 31, 23), utc(2025, 12, 31, 23)  # one Berlin year
    assert len(Cron("30 2 * * *", "Europe/Berlin").fire_times(after, until, 1000)) == 365
    assert len(Cron("0 * * * *", "Europe/Berlin").fire_times(after, until, 10_000)) == 365 * 24


# -- DST: America/New_York, 2025-03-09 (02:00 EST -> 03:00 EDT) and 2025-11-02 (02:00 -> 01:00) --


def test_new_york_spring_gap_and_fall_back() -> None:
    spring = Cron("30 2 * * *", "America/New_York").fire_times(*local_day(NEW_YORK, 2025, 3, 9), 10)
    assert spring == [utc(2025, 3, 9, 7, 0)]  # 03:00 EDT, the jump
    fall = Cron("30 1 * * *", "America/New_York").fire_times(*local_day(NEW_YORK, 2025, 11, 2), 10)
    assert fall == [utc(2025, 11, 2, 5, 30)]  # 01:30 EDT only
    hourly = Cron("0 * * * *", "America/New_York")
    assert len(hourly.fire_times(*local_day(NEW_YORK, 2025, 3, 9), 100)) == 23
    assert len(hourly.fire_times(*local_day(NEW_YORK, 2025, 11, 2), 100)) == 25


def test_offset_jumps_over_three_hours_are_clock_corrections() -> None:
    """Samoa skipped 2011-12-30 (+24 h): as in cronie, nothing fires for the skipped day."""
    apia = ZoneInfo("Pacific/Apia")
    got = Cron("0 9 * * *", "Pacific/Apia").fire_times(
        datetime(2011, 12, 29, tzinfo=apia), datetime(2012, 1, 1, tzinfo=apia), 10
    )
    assert [t.astimezone(apia).isoformat() for t in got] == [
        "2011-12-29T09:00:00-10:00",
        "2011-12-31T09:00:00+14:00",
    ]
