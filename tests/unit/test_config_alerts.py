"""Alert settings of a schedule in the schedules file (scheduler.config, scheduler.alerts):
bounds, clear errors naming the field, the on_alert task checked like ``task``, hashes of
schedules without them unchanged (pure, no database)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator

import pytest

from scheduler import registry
from scheduler.config import ScheduleConfig, load_config_text
from scheduler.errors import ConfigError, ConfigIssue
from scheduler.schedules import resolve
from scheduler.settings import Settings
from scheduler.tasks import task

SAMPLE = "tests.unit.sample_tasks"
HEAD = "imports: [tests.unit.sample_tasks]\nschedules:\n"
BASE = "  - {name: a, cron: '@daily', task: sample.digest, "


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    sys.modules.pop(SAMPLE, None)


def issues_of(text: str, **kwargs: bool) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), "schedules.yaml", **kwargs)
    return info.value.issues


def one(fields: str) -> ScheduleConfig:
    return load_config_text(HEAD + BASE + fields + "}\n").schedules[0]


def test_valid_alert_settings_load() -> None:
    s = one("alert_after_s: 900, alert_on_failures: 3, pause_on_failures: 10, "
            "on_alert: sample.anything")  # fmt: skip
    assert (s.alert_after_s, s.alert_on_failures, s.pause_on_failures, s.on_alert) == (
        900.0,
        3,
        10,
        "sample.anything",
    )
    assert one("alert_after_s: 0.5").alert_after_s == 0.5
    unset = one("queue: q")
    assert (unset.alert_after_s, unset.alert_on_failures, unset.pause_on_failures,
            unset.on_alert) == (None, None, None, None)  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ("alert_after_s: 0", "alert_after_s", "greater than 0"),
        ("alert_after_s: -5", "alert_after_s", "greater than 0"),
        ("alert_after_s: 400000000", "alert_after_s", "less than or equal to 315360000"),
        ("alert_after_s: .nan", "alert_after_s", "finite number"),
        ("alert_after_s: .inf", "alert_after_s", "finite number"),
        ("alert_after_s: '15m'", "alert_after_s", "write a number without quotes"),
        ("alert_after_s: true", "alert_after_s", "valid number"),
        ("alert_on_failures: 0", "alert_on_failures", "greater than or equal to 1"),
        ("alert_on_failures: 1001", "alert_on_failures", "less than or equal to 1000"),
        ("alert_on_failures: 2.5", "alert_on_failures", "valid integer"),
        ("alert_on_failures: '3'", "alert_on_failures", "write a number without quotes"),
        ("alert_on_failures: true", "alert_on_failures", "valid integer"),
        ("pause_on_failures: 0", "pause_on_failures", "greater than or equal to 1"),
        ("pause_on_failures: 99999999999999999999", "pause_on_failures", "less than or equal"),
        ("on_alert: ''", "on_alert", "on_alert is empty"),
        ("on_alert: 'two words'", "on_alert", "whitespace"),
        ("on_alert: 5", "on_alert", "valid string"),
        (f"on_alert: {'x' * 201}", "on_alert", "too long"),
        ('on_alert: "a\\0b"', "on_alert", "NUL"),
        ("alert_after: 60", "alert_after", "did you mean 'alert_after_s'"),
    ],
)
def test_bad_values_are_refused_naming_the_field(fields: str, field: str, fragment: str) -> None:
    issues = issues_of(HEAD + BASE + fields + "}\n")
    assert [(i.line, i.schedule, i.field) for i in issues] == [(3, "a", field)], issues
    assert fragment in issues[0].reason, issues[0].reason


def test_an_unregistered_on_alert_task_gets_a_did_you_mean() -> None:
    issues = issues_of(HEAD + BASE + "on_alert: sample.anythin}\n")
    assert [(i.line, i.schedule, i.field) for i in issues] == [(3, "a", "on_alert")]
    assert "on_alert task 'sample.anythin' is not registered" in issues[0].reason
    assert "did you mean 'sample.anything'" in issues[0].reason
    # without the registry (import_tasks=False) the name is not checked
    text = HEAD + BASE + "on_alert: not.registered}\n"
    assert load_config_text(text, import_tasks=False).schedules[0].on_alert == "not.registered"


def test_schedules_without_alerts_keep_their_hashes() -> None:
    """The hashes the release before alerts computed for these schedules (definition_hash of
    the model and of the resolved row, config_hash): replicas of both releases agree."""
    text = (
        "schedules:\n"
        "  - {name: nightly, cron: '0 3 * * *', task: sample.digest, misfire_policy: skip}\n"
        "  - {name: pulse, every: 90s, task: sample.ping}\n"
    )
    config = load_config_text(text, import_tasks=False)
    nightly, pulse = config.schedules
    assert nightly.definition_hash() == (
        "4d0eced0cedc100e9935dfacb21efdd6c272aa2397375598aac3a020a3ad54fa"
    )
    assert resolve(nightly, Settings())["definition_hash"] == (
        "649ec435fe3dae4e7e9e233926d6b2666cb8490ded97898c98d08932d7ee8ed6"
    )
    assert pulse.definition_hash() == (
        "1b56fc51b7b592e73346c7db2fd6907fbd5f74ecf81d2fd601b5b454046d5ff3"
    )
    assert resolve(pulse, Settings())["definition_hash"] == (
        "0cd92e11e25e5cd4141f741ee006c60709383b6fb0c0f8bfc48cb320d08d0b1c"
    )
    assert config.config_hash() == (
        "3c20c814ff22f26d520bf754804fc6194e9878c473951438e54a7a6e0ab56019"
    )


@pytest.mark.parametrize(
    "change",
    [{"alert_after_s": 60.0}, {"alert_on_failures": 2}, {"pause_on_failures": 2},
     {"on_alert": "sample.ping"}],
)  # fmt: skip
def test_each_alert_setting_changes_the_hashes(change: dict[str, object]) -> None:
    base = one("queue: q")
    changed = base.model_copy(update=change)
    assert changed.definition_hash() != base.definition_hash()
    settings = Settings()
    assert (
        resolve(changed, settings)["definition_hash"] != resolve(base, settings)["definition_hash"]
    )


def test_resolve_gives_the_on_alert_job_the_options_enqueue_would() -> None:
    load_config_text(HEAD + "  []\n")  # imports the sample tasks

    @task(name="config_alerts.notify", queue="ops", priority=-3, max_attempts=7)
    def notify(incident: dict[str, object]) -> None:
        """An on_alert handler."""

    settings = Settings()
    s = one("alert_on_failures: 3, on_alert: config_alerts.notify")
    row = resolve(s, settings)
    assert (row["alert_on_failures"], row["on_alert"], row["alert_after_s"]) == (
        3,
        "config_alerts.notify",
        None,
    )
    assert json.loads(row["on_alert_options"]) == {
        "queue": "ops", "priority": -3, "max_attempts": 7,
        "backoff_base_s": settings.backoff_base_s, "backoff_max_s": settings.backoff_max_s,
        "backoff_jitter": settings.backoff_jitter,
    }  # fmt: skip
    plain = resolve(one("on_alert: sample.ping"), settings)  # no @task options: the defaults
    assert json.loads(plain["on_alert_options"])["queue"] == "default"
    assert resolve(one("queue: q"), settings)["on_alert_options"] is None
