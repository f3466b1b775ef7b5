"""The schedules file's ``queues:`` section (flow control): parsed with the vocabulary and
bounds of SCHEDULER_QUEUE_LIMITS, every problem at its line, in the config hash only when
present."""

from __future__ import annotations

import textwrap

import pytest

from scheduler.config import load_config_text
from scheduler.errors import ConfigError, ConfigIssue
from scheduler.queue_limits import QueueLimits

BASE = "schedules: []\n"


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), "schedules.yaml", import_tasks=False)
    return info.value.issues


def test_queues_section_loads() -> None:
    config = load_config_text(textwrap.dedent("""\
        queues:
          newsletter: {rate: 100, per_s: 60}
          reports: {concurrency: 2, key_concurrency: 1}
          fast: {rate: 5, per_s: 0.5, concurrency: null}
        schedules: []
        """), import_tasks=False)  # fmt: skip
    assert config.queues == {
        "newsletter": QueueLimits(rate=100, per_s=60.0),
        "reports": QueueLimits(concurrency=2, key_concurrency=1),
        "fast": QueueLimits(rate=5, per_s=0.5),
    }


def test_hash_unchanged_without_queues_and_changed_by_them() -> None:
    plain = load_config_text(BASE, import_tasks=False)
    empty = load_config_text("queues: {}\n" + BASE, import_tasks=False)
    limited = load_config_text("queues: {q: {concurrency: 1}}\n" + BASE, import_tasks=False)
    other = load_config_text("queues: {q: {concurrency: 2}}\n" + BASE, import_tasks=False)
    # the hash of a file without queues: is the one it had before the section existed
    assert plain.config_hash() == empty.config_hash() == (
        "bb7a99bd6960028ced4eab4c0ec2b8d4e6ababc1f3bb841ebb6ac8fdc1fe40cf")  # fmt: skip
    assert len({plain.config_hash(), limited.config_hash(), other.config_hash()}) == 3


def test_every_problem_at_its_line() -> None:
    issues = issues_of("""\
        queues:
          newsletter: {rate: 100, per_sec: 60}
          r: {concurrency: 0, key_concurency: 1}
          "a b": {concurrency: 1}
          x: {}
          y: 5
          z: {rate: 5}
          w: {concurrency: "5", per_s: .nan}
          v: {concurrency: 1}
          v: {concurrency: 2}
          5: {concurrency: 2}
          u: {concurrency: 99999999999999999999, rate: true, per_s: 1.0e+12}
        schedules: []
        """)
    got = [(i.line, i.field, i.reason) for i in issues]
    expected = [
        (2, "queues.newsletter.per_sec", "did you mean 'per_s'?"),
        (3, "queues.r.concurrency", "concurrency 0 is out of range"),
        (3, "queues.r.key_concurency", "did you mean 'key_concurrency'?"),
        (4, "queues", "may only contain"),
        (5, "queues.x", "declares no limit"),
        (6, "queues.y", "must be a mapping of limits"),
        (7, "queues.z", "rate and per_s go together"),
        (8, "queues.w.concurrency", "must be an int, not str"),
        (8, "queues.w.per_s", "per_s nan is out of range"),
        (10, "queues.v", "duplicate key 'v'"),
        (11, "queues", "must be a string"),
        (12, "queues.u.concurrency", "out of range"),
        (12, "queues.u.rate", "must be an int, not bool"),
        (12, "queues.u.per_s", "out of range"),
    ]
    assert len(got) == len(expected), got
    for (line, field, reason), (e_line, e_field, e_reason) in zip(got, expected, strict=True):
        assert (line, field) == (e_line, e_field) and e_reason in reason, (line, field, reason)


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ("queues: [a]", "must be a mapping of queue name to limits"),
        ("queues: 5", "must be a mapping of queue name to limits"),
        ("queues:\n  q: {concurrency: 1, concurrency: 2}", "duplicate key 'concurrency'"),
        ('queues:\n  "q\\0": {concurrency: 1}', "queue name"),
        ("queues:\n  " + "q" * 101 + ": {concurrency: 1}", "queue name"),
        ("queues:\n  q: {concurrency: [1]}", "must be an int"),
        ("queues:\n  q: {rate: 1, per_s: 0}", "per_s 0 is out of range"),
        ("queues:\n  q: {rate: 1, per_s: '60'}", "per_s must be a number of seconds"),
        ("queues:\n  q: {rate: 1, per_s: .inf}", "out of range"),
        ("queues:\n  q:\n    " + "x" * 500 + ": 1", "unknown key"),
    ],
)
def test_hostile_queues_sections_refused(section: str, reason: str) -> None:
    issues = issues_of(section + "\n" + BASE)
    assert any(reason in i.reason for i in issues), issues
    assert all(len(i.reason) <= 2000 and "\x00" not in i.reason for i in issues)


def test_too_many_queues_refused() -> None:
    text = "queues:\n" + "".join(f"  q{i}: {{concurrency: 1}}\n" for i in range(1001)) + BASE
    (issue,) = issues_of(text)
    assert (issue.line, issue.field) == (1, "queues") and "1,001 queues, at most 1,000" in issue.reason


def test_unknown_top_level_key_suggests_queues() -> None:
    (issue,) = issues_of("queue: {q: {concurrency: 1}}\n" + BASE)
    assert "did you mean 'queues'?" in issue.reason
