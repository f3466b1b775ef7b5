"""SCHEDULER_* settings: one clear line per bad setting, secrets redacted, typos warned about."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from scheduler import settings as settings_module
from scheduler.errors import SettingsError
from scheduler.log import redact_text, redact_url
from scheduler.settings import get_settings, load_settings, warn_unknown_variables

SECRET = "hunter2-do-not-print"


@pytest.fixture(autouse=True)
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[os._Environ[str]]:
    """``os.environ`` without SCHEDULER_* variables; what a test sets in it is undone."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.upper().startswith("SCHEDULER_"):
            del os.environ[key]
    monkeypatch.setattr(settings_module, "_warned", set())
    get_settings.cache_clear()
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


def problems(**variables: str) -> list[str]:
    os.environ.update(variables)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return info.value.problems


def test_defaults_load():
    settings = load_settings()
    assert settings.queues == ["default"] and settings.concurrency == 100
    assert settings.log_level == "info" and settings.connect_timeout_s == 10


CQ = "no queue name: give comma-separated names, e.g. default,mail"
LEVELS = "'debug', 'info', 'warning', 'error' or 'critical'"
NOT_A_URL = (
    "is not a libpq URL (postgresql://user:password@host:port/dbname) or key=value string: "
    'missing "=" after "not" in connection info string'
)


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"SCHEDULER_CONCURRENCY": "0"},
            "SCHEDULER_CONCURRENCY='0': input should be greater than or equal to 1",
        ),
        ({"SCHEDULER_QUEUES": " , "}, f"SCHEDULER_QUEUES=' , ': {CQ}"),
        (
            {"SCHEDULER_QUEUES": "mail,,default"},
            "SCHEDULER_QUEUES='mail,,default': queue 2 of 3 is empty",
        ),
        ({"SCHEDULER_LOG_LEVEL": "loud"}, f"SCHEDULER_LOG_LEVEL='loud': input should be {LEVELS}"),
        ({"SCHEDULER_LEASE_S": "nan"}, "SCHEDULER_LEASE_S='nan': input should be a finite number"),
        (
            {"SCHEDULER_RETENTION_DEAD_S": "1e20"},
            "SCHEDULER_RETENTION_DEAD_S='1e20': at most 315,360,000 seconds (10 years)",
        ),
        (
            {"SCHEDULER_MAX_ATTEMPTS": "3000000000"},
            "SCHEDULER_MAX_ATTEMPTS='3000000000': input should be less than or equal to 2147483647",
        ),
        (
            {"SCHEDULER_DATABASE_URL": "not a url"},
            f"SCHEDULER_DATABASE_URL='not a url': {NOT_A_URL}",
        ),
        (
            {"SCHEDULER_DATABASE_URL": "postgresql://u:p@h:99999/db"},
            "SCHEDULER_DATABASE_URL='postgresql://u:***@h:99999/db': port '99999' is not a number"
            + " from 1 to 65535",
        ),
    ],
)
def test_one_line_per_bad_setting_naming_the_variable(variables, line):
    assert problems(**variables) == [line]


def test_queue_names_follow_the_shared_limits():
    assert load_settings({"queues": "mail, reports ,mail"}).queues == ["mail", "reports"]
    (line,) = problems(SCHEDULER_QUEUES="q" * 101)
    assert line.endswith("is too long: 101 characters, at most 100")
    with pytest.raises(SettingsError, match="may only contain"):
        load_settings({"queues": ["a,b"]})  # a list from Python: no split hides the comma


def test_options_are_named_as_given_on_the_command_line():
    with pytest.raises(SettingsError) as info:
        load_settings(
            {"concurrency": 0, "queues": ","},
            options={"concurrency": "--concurrency", "queues": "--queues"},
        )
    assert sorted(info.value.problems) == [
        "--concurrency=0: input should be greater than or equal to 1",
        "--queues=',': no queue name: give comma-separated names, e.g. default,mail",
    ]


def test_log_level_is_case_insensitive():
    os.environ["SCHEDULER_LOG_LEVEL"] = "WARNING"
    assert load_settings().log_level == "warning"


@pytest.mark.parametrize(
    "variables",
    [
        {
            "SCHEDULER_DATABASE_URL": f"postgresql://app:{SECRET}@db/app",
            "SCHEDULER_HEARTBEAT_S": "10",
        },
        {
            "SCHEDULER_DIRECT_DATABASE_URL": f"postgresql://app:{SECRET}@db/app",
            "SCHEDULER_LEADER_SESSION_TIMEOUT_S": "1",
        },
        {"SCHEDULER_DIRECT_DATABASE_URL": f"postgresql://app:{SECRET} x@db/app"},
        {"SCHEDULER_DATABASE_URL": f"postgresql://app:{SECRET}@[::1/app"},
        {"SCHEDULER_DATABASE_URL": f"host=db password={SECRET} port=x"},
        {"SCHEDULER_DATABASE_URL": f"host=db password='{SECRET} x' sslmode"},
    ],
)
def test_no_password_and_no_pydantic_link_in_the_problems(variables):
    found = problems(**variables)
    assert found
    for line in found:
        assert SECRET not in line and "pydantic" not in line and "\n" not in line
        assert line.startswith("SCHEDULER_"), line


def test_get_settings_raises_settings_error_and_is_not_cached_when_bad():
    os.environ["SCHEDULER_CONCURRENCY"] = "many"
    with pytest.raises(SettingsError, match="SCHEDULER_CONCURRENCY='many'"):
        get_settings()
    os.environ["SCHEDULER_CONCURRENCY"] = "7"
    assert get_settings().concurrency == 7


def test_a_misspelled_variable_is_warned_about_once(capsys):
    os.environ.update(SCHEDULER_CONCURENCY="4", SCHEDULER_RESCUE_INTERVAL_S="1",
                      SCHEDULER_ZZZ_QQQ="1", SCHEDULER_TEST_DSN="x")  # fmt: skip
    load_settings()
    load_settings()
    ignored = "is not a scheduler setting and is ignored"
    assert capsys.readouterr().err.splitlines() == [
        f"warning: SCHEDULER_CONCURENCY {ignored}; did you mean SCHEDULER_CONCURRENCY?",
        f"warning: SCHEDULER_RESCUE_INTERVAL_S {ignored}; did you mean"
        + " SCHEDULER_RETENTION_INTERVAL_S?",
        f"warning: SCHEDULER_ZZZ_QQQ {ignored}",
    ]
    assert warn_unknown_variables({"SCHEDULER_CONCURENCY": "4"}) == []  # once per process


def test_real_setting_names_are_not_warned_about(capsys):
    names = {settings_module.env_name(f): "" for f in settings_module.Settings.model_fields}
    assert "SCHEDULER_SCHEMA" in names and "SCHEDULER_SCHEMA_NAME" not in names
    assert warn_unknown_variables(names) == []
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://app:s3cret@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app:p@ss@db/app", "postgresql://app:***@db/app"),
        ("postgresql://:s3cret@db", "postgresql://:***@db"),
        ("host=db password='a b c' dbname=app", "host=db password=*** dbname=app"),
        ("host=db PASSWORD = s3cret", "host=db PASSWORD = ***"),
        (
            "postgresql://app@db/app?password=s3cret&sslmode=require",
            "postgresql://app@db/app?password=***&sslmode=require",
        ),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
    ],
)
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted


def test_redact_text_masks_pieces_of_a_malformed_url():
    url = "postgresql://app:pass word@db/app"
    message = 'unexpected spaces found in "pass word", use percent-encoded spaces'
    assert (
        redact_text(message, url) == 'unexpected spaces found in "***", use percent-encoded spaces'
    )
