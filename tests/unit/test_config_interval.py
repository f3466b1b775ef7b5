"""Interval schedules in the schedules file: ``every:`` and ``start_at:`` are validated like
every other field (each problem a ConfigIssue with file:line, schedule and field, all at
once), exactly one of cron / every, and the definition hash covers them (pure: no database)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from scheduler.config import ScheduleConfig, load_config, load_config_text
from scheduler.errors import ConfigError, CronError
from scheduler.interval import Interval


def issues_of(text: str) -> list[tuple[int, str | None, str | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "s.yaml", import_tasks=False)
    assert all(i.file == "s.yaml" for i in info.value.issues)
    return [(i.line, i.schedule, i.field, i.reason) for i in info.value.issues]


def interval(line: str) -> str:
    """A schedule ``a`` with ``every: 90s`` on line 3 and ``line`` on line 5."""
    return f"schedules:\n  - name: a\n    every: 90s\n    task: t\n    {line}\n"


def every(value: str) -> str:
    return f"schedules:\n  - name: a\n    task: t\n    every: {value}\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("PT90S", 90), ("'PT1H30M'", 5400),
     ("90", 90), ("1.5", 1.5), ("1h30m", 5400), ("1", 1)],
)  # fmt: skip
def test_every_forms(value: str, seconds: float) -> None:
    [schedule] = load_config_text(every(value), import_tasks=False).schedules
    assert schedule.every == seconds and schedule.cron is None and schedule.start_at is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "shorter than 1 second"), ("-5", "negative"), ("-5s", "negative"),
        ("1ms", "shorter than 1 second"), ("0.5", "shorter than 1 second"),
        ("yes", "not True"), ("no", "not False"), (".nan", "finite"), (".inf", "finite"),
        ("-.inf", "finite"), ("'90'", "number in quotes"), ("90 s", "not a duration"),
        ("1M", "ambiguous"), ("P1Y", "not a duration"), ("[90]", "must be a duration"),
        ("{s: 90}", "must be a duration"), ("3651d", "longer than 10 years"),
        ("9" * 400, "longer than 10 years"), ("0x" + "f" * 900, "a huge number"),
        ('"1\\0s"', "not a duration"), ('"\\udcff"', "surrogate|\\\\udcff"),
        ("1.0000001", "more precise than one microsecond"), ("2025-01-01", "not datetime.date"),
    ],
)  # fmt: skip
def test_bad_every_is_an_issue_at_its_line(value: str, reason: str) -> None:
    [(line, schedule, field, text)] = issues_of(every(value))
    if "surrogate" in reason:  # refused by the YAML reader or the checks, with its line
        assert line == 4
        return
    assert (line, schedule, field) == (4, "a", "every")
    assert any(fragment in text for fragment in reason.split("|")), text
    assert "\x00" not in text


def test_every_null_counts_as_missing() -> None:
    assert issues_of(every("null")) == [
        (4, "a", "every", ("required field is missing: give exactly one of cron (a cron "
                           "expression) or every (an interval, e.g. 90s)")),
    ]  # fmt: skip


def test_both_cron_and_every() -> None:
    [(line, schedule, field, reason)] = issues_of(interval("cron: '@daily'"))
    assert (line, schedule, field) == (3, "a", "every")
    assert "not both (cron is at line 5)" in reason


def test_neither_cron_nor_every() -> None:
    [(line, schedule, field, reason)] = issues_of("schedules:\n  - name: a\n    task: t\n")
    assert (line, schedule, field) == (2, "a", "cron")
    assert "required field is missing" in reason and "every" in reason


def test_every_problems_are_reported_with_the_others_at_once() -> None:
    issues = issues_of(
        "schedules:\n"
        "  - name: a\n    every: 1ms\n    cron: '61 * * * *'\n    task: t\n"
        "  - name: b\n    every: 90s\n    task: t\n    start_at: 2025-01-01 09:00:00\n"
        "  - name: c\n    cron: '@daily'\n    task: t\n    start_at: 2025-01-01T09:00:00Z\n"
        "  - name: d\n    every: 10s\n    task: t\n    priority: high\n"
    )
    assert [(line, s, f) for line, s, f, _ in issues] == [
        (3, "a", "every"),  # both cron and every
        (3, "a", "every"),  # and every too short
        (4, "a", "cron"),
        (9, "b", "start_at"),
        (13, "c", "start_at"),
        (17, "d", "priority"),
    ]
    reasons = [r for *_, r in issues]
    assert "not both" in reasons[0] and "shorter than 1 second" in reasons[1]
    assert "no UTC offset" in reasons[3] and "interval schedules (every:) only" in reasons[4]


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("2025-01-01T09:00:00Z", datetime(2025, 1, 1, 9, tzinfo=UTC)),
        ("2025-01-01T10:00:00+01:00", datetime(2025, 1, 1, 9, tzinfo=UTC)),
        ("'2025-01-01T04:00:00-05:00'", datetime(2025, 1, 1, 9, tzinfo=UTC)),
        ("2025-01-01 09:00:00.250000+00:00", datetime(2025, 1, 1, 9, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_start_at(value: str, instant: datetime) -> None:
    [schedule] = load_config_text(interval(f"start_at: {value}"), import_tasks=False).schedules
    assert schedule.start_at == instant and schedule.start_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2025-01-01 09:00:00", "no UTC offset"), ("'2025-01-01T09:00:00'", "no UTC offset"),
        ("2025-01-01", "date without a time"), ("tomorrow", "not an ISO 8601 instant"),
        ("1735722000", "not 1735722000"), ("1969-12-31T23:59:59Z", "not between 1970 and 9000"),
        ("9999-12-31T23:59:59Z", "not between 1970 and 9000"), ('"2025\\0"', "not an ISO"),
        ("'" + "9" * 2_000 + "'", "too long"), ("[2025]", "must be an ISO 8601 instant"),
    ],
)  # fmt: skip
def test_bad_start_at_is_an_issue_at_its_line(value: str, reason: str) -> None:
    [(line, schedule, field, text)] = issues_of(interval(f"start_at: {value}"))
    assert (line, schedule, field) == (5, "a", "start_at")
    assert reason in text and "\x00" not in text


def test_direct_models_check_the_same() -> None:
    ok = ScheduleConfig(name="a", every="PT90S", task="t")  # type: ignore[arg-type]
    assert ok.every == 90.0
    for kwargs, reason in [
        ({"cron": "@daily", "every": 90}, "exactly one of cron"),
        ({}, "exactly one of cron"),
        ({"cron": "@daily", "start_at": "2025-01-01T00:00:00Z"}, "interval schedules"),
        ({"every": 0}, "shorter than 1 second"),
        ({"every": 90, "start_at": "2025-01-01T00:00:00"}, "no UTC offset"),
    ]:
        with pytest.raises(ValidationError, match=reason):
            ScheduleConfig(name="a", task="t", **kwargs)


def test_definition_hash_covers_every_and_start_at_and_cron_hashes_are_unchanged() -> None:
    base = {"name": "a", "task": "t"}
    hashes = {
        ScheduleConfig(**base, every=90).definition_hash(),  # type: ignore[arg-type]
        ScheduleConfig(**base, every=91).definition_hash(),  # type: ignore[arg-type]
        ScheduleConfig(**base, every=90, start_at="2025-01-01T00:00:00Z").definition_hash(),  # type: ignore[arg-type]
        ScheduleConfig(**base, every=90, start_at="2025-01-01T00:00:01Z").definition_hash(),  # type: ignore[arg-type]
        ScheduleConfig(**base, cron="@daily").definition_hash(),
    }
    assert len(hashes) == 5
    same = ScheduleConfig(**base, every="1m30s", start_at="2025-01-01T01:00:00+01:00")  # type: ignore[arg-type]
    assert same.definition_hash() == ScheduleConfig(
        **base, every=90, start_at="2025-01-01T00:00:00Z"  # type: ignore[arg-type]
    ).definition_hash()  # fmt: skip
    # a cron schedule hashes as before intervals existed (replicas of both releases agree)
    assert ScheduleConfig(**base, cron="@daily").definition_hash() == _pre_interval_hash()


def _pre_interval_hash() -> str:
    """The hash ScheduleConfig(name='a', cron='@daily', task='t') had before 0015."""
    data = {"name": "a", "cron": "@daily", "task": "t", "args": {}, "timezone": "UTC",
            "queue": None, "priority": None, "max_attempts": None, "backoff_base_s": None,
            "backoff_max_s": None, "backoff_jitter": None, "enabled": True}  # fmt: skip
    text = json.dumps(["scheduler.schedule/1", data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_fire_times_of_an_interval_schedule(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "timezone: Europe/Berlin\nschedules:\n"
        "  - {name: anchored, every: 2h, task: t, start_at: 2025-01-01T00:00:00Z}\n"
        "  - {name: floating, every: 90s, task: t}\n"
        "  - {name: cron, cron: '0 * * * *', task: t}\n"
    )
    anchored, floating, cron = load_config(path, import_tasks=False).schedules
    stored = datetime(2025, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
    times = anchored.fire_times(stored)
    assert isinstance(times, Interval) and times.timezone.key == "Europe/Berlin"
    assert times.next_after(stored) == datetime(2025, 6, 1, 14, tzinfo=UTC)
    assert times.next_after(datetime(2024, 1, 1, tzinfo=UTC)) == datetime(2025, 1, 1, tzinfo=UTC)
    assert floating.fire_times(stored).next_after(stored) == stored + timedelta(seconds=90)
    assert cron.fire_times(stored).next_after(stored) == datetime(2025, 6, 1, 13, tzinfo=UTC)
    with pytest.raises(CronError, match="interval schedule"):
        floating.cron_obj()
