"""scheduler.config: YAML schedules → validated models, every problem at once (pure)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydantic
import pytest

from scheduler import config as config_module
from scheduler import config_yaml, limits, registry
from scheduler.config import (
    MisfirePolicy,
    OverlapPolicy,
    ScheduleConfig,
    SchedulesConfig,
    load_config,
    load_config_text,
)
from scheduler.cron import Cron
from scheduler.errors import ConfigError, ConfigIssue, InvalidArgumentError

SAMPLE = "tests.unit.sample_tasks"
MAX_FILE_BYTES = 10 * 1024 * 1024  # the bounds the module docstring promises
MAX_ISSUES = 1_000
ROOT = Path(__file__).resolve().parents[2]

VALID = """\
timezone: Europe/Berlin
imports: [tests.unit.sample_tasks]
schedules:
  - name: weekly_digest
    cron: "0 9 * * MON"
    task: sample.digest
    args: {edition: weekly, to: [a@example.com]}
  - name: ping:fast
    cron: "*/5 * * * * *"
    task: sample.ping
    timezone: UTC
    queue: urgent
    priority: -5
    max_attempts: 3
    backoff_base_s: 2
    backoff_max_s: 600
    backoff_jitter: 0.25
    enabled: false
"""


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Tests import tests.unit.sample_tasks; forget its tasks and the module afterwards."""
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    sys.modules.pop(SAMPLE, None)


def issues_of(text: str, **kwargs: bool) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), "schedules.yaml", **kwargs)
    return info.value.issues


def where(issues: list[ConfigIssue]) -> list[tuple[int, str | None, str | None]]:
    return [(i.line, i.schedule, i.field) for i in issues]


# -- a valid file ----------------------------------------------------------------------------------


def test_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(VALID, encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, SchedulesConfig)
    assert (config.path, config.timezone, config.imports) == (str(path), "Europe/Berlin", [SAMPLE])
    digest, ping = config.schedules
    assert digest == ScheduleConfig(
        name="weekly_digest",
        cron="0 9 * * MON",
        task="sample.digest",
        args={"edition": "weekly", "to": ["a@example.com"]},
        timezone="Europe/Berlin",
    )
    assert type(digest.args) is dict and type(digest.args["to"]) is list  # plain JSON values
    assert (digest.queue, digest.priority, digest.max_attempts) == (None, None, None)
    assert (digest.backoff_base_s, digest.backoff_max_s, digest.backoff_jitter) == (
        None,
        None,
        None,
    )
    assert digest.enabled is True
    assert (ping.name, ping.timezone, ping.queue, ping.priority, ping.max_attempts) == (
        "ping:fast",
        "UTC",
        "urgent",
        -5,
        3,
    )
    assert (ping.backoff_base_s, ping.backoff_max_s, ping.backoff_jitter, ping.enabled) == (
        2.0,
        600.0,
        0.25,
        False,
    )
    assert digest.cron_obj() == Cron("0 9 * * MON", "Europe/Berlin")
    assert ping.cron_obj().has_seconds


def test_zone_defaults_to_utc_without_a_file_default() -> None:
    config = load_config_text(
        'schedules:\n  - {name: a, cron: "@daily", task: t}\n', import_tasks=False
    )
    assert config.timezone == "UTC" and config.schedules[0].timezone == "UTC"


def test_models_are_frozen() -> None:
    config = load_config_text(VALID)
    with pytest.raises(pydantic.ValidationError):
        config.schedules[0].cron = "* * * * *"  # type: ignore[misc]


def test_empty_schedule_list_is_valid() -> None:
    assert load_config_text("schedules: []\n").schedules == []


def test_definition_hash_is_stable_and_sensitive() -> None:
    digest = load_config_text(VALID).schedules[0]
    assert digest.definition_hash() == load_config_text(VALID).schedules[0].definition_hash()
    assert len(digest.definition_hash()) == 64
    for change in (
        {"cron": "0 10 * * MON"},
        {"enabled": False},
        {"args": {"edition": "daily"}},
        {"timezone": "UTC"},
        {"priority": 0},
    ):
        changed = digest.model_copy(update=change)
        assert changed.definition_hash() != digest.definition_hash(), change


def test_definition_hash_is_the_same_in_another_process() -> None:
    here = load_config_text(VALID, import_tasks=False)
    code = (
        "import sys; from scheduler.config import load_config_text as l; "
        "c = l(sys.stdin.read(), import_tasks=False); "
        "print(c.schedules[0].definition_hash(), c.config_hash())"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=VALID,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.split()
        assert out == [here.schedules[0].definition_hash(), here.config_hash()]


def test_config_hash_ignores_order_but_not_content() -> None:
    config = load_config_text(VALID)
    reordered = config.model_copy(update={"schedules": list(reversed(config.schedules))})
    assert reordered.config_hash() == config.config_hash()
    changed = load_config_text(VALID.replace('"0 9 * * MON"', '"0 8 * * MON"'))
    assert changed.config_hash() != config.config_hash()
    fewer = config.model_copy(update={"schedules": config.schedules[:1]})
    assert fewer.config_hash() != config.config_hash()


def test_direct_construction_validates_too() -> None:
    with pytest.raises(pydantic.ValidationError, match="never fires"):
        ScheduleConfig(name="a", cron="0 0 30 2 *", task="t")
    with pytest.raises(pydantic.ValidationError, match="not valid JSON"):
        ScheduleConfig(name="a", cron="@daily", task="t", args={"x": float("nan")})
    one = ScheduleConfig(name="a", cron="@daily", task="t")
    with pytest.raises(pydantic.ValidationError, match="duplicate schedule names: a"):
        SchedulesConfig(path="x", schedules=[one, one])


# -- many problems at once ---------------------------------------------------------------------


def test_every_problem_is_reported_with_line_schedule_and_field() -> None:
    issues = issues_of("""\
        timezone: Europe/Berln
        imports: [tests.unit.sample_tasks, tests.unit.no_such_module]
        schedules:
          - name: digest
            cron: "0 9 * * MONX"
            task: sample.digest
            priority: high
            colour: blue
          - name: digest
            cron: "0 0 30 2 *"
            task: sample.nope
            timezone: europe/berlin
          - cron: "*/5 * * * *"
            task: sample.ping
            args: {when: 2025-01-01, ratio: .nan}
            max_attempts: 0
            enabled: true
            enabled: false
        """)
    assert where(issues) == [
        (1, None, "timezone"),
        (2, None, "imports"),
        (5, "digest", "cron"),
        (7, "digest", "priority"),
        (8, "digest", "colour"),
        (9, "digest", "name"),
        (10, "digest", "cron"),
        (11, "digest", "task"),
        (12, "digest", "timezone"),
        (13, "schedules[2]", "name"),
        (15, "schedules[2]", "args.when"),
        (15, "schedules[2]", "args.ratio"),
        (16, "schedules[2]", "max_attempts"),
        (18, "schedules[2]", "enabled"),
    ]
    reasons = [i.reason for i in issues]
    expected = [
        "unknown time zone 'Europe/Berln'",
        "tests.unit.no_such_module",
        "MONX",
        "valid integer",
        "unknown key 'colour'",
        "duplicate schedule name 'digest'",
        "never fires",
        "'sample.nope' is not registered",
        "case-sensitive",
        "required field is missing",
        "date",
        "NaN",
        "greater than or equal to 1",
        "duplicate key 'enabled'",
    ]
    for reason, fragment in zip(reasons, expected, strict=True):
        assert fragment in reason
    assert all(i.file == "schedules.yaml" for i in issues)


def test_error_message_lists_every_issue_with_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(
            'schedules:\n  - {name: a, cron: "61 * * * *", task: t}\n'
            '  - {name: a, cron: "@daily", task: t}\n',
            "f.yaml",
            import_tasks=False,
        )
    lines = str(info.value).splitlines()
    assert lines[0].startswith("f.yaml:2: schedule 'a': field 'cron': invalid cron expression")
    assert lines[1].startswith("f.yaml:3: schedule 'a': field 'name': duplicate schedule name")


def test_duplicate_schedule_names() -> None:
    issues = issues_of(
        """\
        schedules:
          - {name: a, cron: "@daily", task: t}
          - {name: b, cron: "@daily", task: t}
          - {name: a, cron: "@hourly", task: t}
        """,
        import_tasks=False,
    )
    assert where(issues) == [(4, "a", "name")]
    assert "first defined at line 2" in issues[0].reason


def test_duplicate_keys_at_every_level() -> None:
    issues = issues_of(
        """\
        timezone: UTC
        schedules:
          - name: a
            cron: "@daily"
            task: t
            args:
              edition: weekly
              edition: daily
            cron: "@hourly"
        timezone: Europe/Berlin
        """,
        import_tasks=False,
    )
    assert where(issues) == [(8, "a", "args.edition"), (9, "a", "cron"), (10, None, "timezone")]
    assert "first at line 4" in issues[1].reason


def test_merge_keys_are_not_duplicates() -> None:
    config = load_config_text(
        """\
schedules:
  - &base
    name: a
    cron: "0 9 * * *"
    task: t
    queue: q
  - <<: *base
    name: b
    queue: other
""",
        import_tasks=False,
    )
    assert [(s.name, s.cron, s.queue) for s in config.schedules] == [
        ("a", "0 9 * * *", "q"),
        ("b", "0 9 * * *", "other"),
    ]


def test_unknown_task_lists_the_registered_ones() -> None:
    issues = issues_of("""\
        imports: [tests.unit.sample_tasks]
        schedules:
          - {name: a, cron: "@daily", task: sample.digets}
        """)
    assert where(issues) == [(3, "a", "task")]
    assert "'sample.digets' is not registered" in issues[0].reason
    assert "sample.anything, sample.digest, sample.ping" in issues[0].reason


def test_without_import_tasks_nothing_is_imported_or_checked() -> None:
    config = load_config_text(
        """\
        imports: [tests.unit.sample_tasks]
        schedules:
          - {name: a, cron: "@daily", task: not.registered}
        """,
        import_tasks=False,
    )
    assert config.schedules[0].task == "not.registered"
    assert SAMPLE not in sys.modules


def test_import_errors_name_the_module() -> None:
    issues = issues_of(
        "imports:\n  - tests.unit.sample_tasks\n  - nope_missing_module\nschedules: []\n"
    )
    assert where(issues) == [(3, None, "imports")]
    assert "nope_missing_module" in issues[0].reason and "ModuleNotFoundError" in issues[0].reason


@pytest.mark.parametrize(
    ("args", "field", "fragment"),
    [
        ("{d: 2025-01-01}", "args.d", "is a date, not JSON; quote it"),
        ("{t: 2025-01-01 10:00:00}", "args.t", "is a datetime, not JSON; quote it"),
        ("{s: !!set {a, b}}", "args.s", "a set is not JSON"),
        ("{x: .nan}", "args.x", "jsonb rejects NaN and Infinity"),
        ("{x: .inf}", "args.x", "jsonb rejects NaN and Infinity"),
        ("{x: -.inf}", "args.x", "jsonb rejects NaN and Infinity"),
        ('{x: "a\\0b"}', "args.x", "\\u0000"),
        ('{"k\\0": 1}', "args.k\\x00", "key contains \\u0000"),  # fields print: NUL escaped
        ("{1: one}", "args.1", "keys must be strings"),
        ("{items: [1, 2024-02-03]}", "args.items[1]", "is a date, not JSON"),
        ("{b: !!binary aGVsbG8=}", "args.b", "bytes is not JSON"),
    ],
)
def test_args_must_be_json(args: str, field: str, fragment: str) -> None:
    issues = issues_of(
        f'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    args: {args}\n',
        import_tasks=False,
    )
    assert where(issues) == [(5, "a", field)]
    assert fragment in issues[0].reason


def test_args_must_be_a_mapping() -> None:
    issues = issues_of(
        'schedules:\n  - {name: a, cron: "@daily", task: t, args: [1, 2]}\n', import_tasks=False
    )
    assert where(issues) == [(2, "a", "args")]
    assert "mapping of keyword arguments" in issues[0].reason


def test_args_must_fit_the_task_signature() -> None:
    issues = issues_of("""\
        imports: [tests.unit.sample_tasks]
        schedules:
          - {name: a, cron: "@daily", task: sample.digest, args: {edition: x, colour: red}}
          - {name: b, cron: "@daily", task: sample.anything, args: {colour: red}}
        """)
    assert where(issues) == [(3, "a", "args")]
    assert "colour" in issues[0].reason


def test_args_are_checked_as_the_api_binds_them() -> None:
    # the schedules file binds args with the task's own binder: the JobContext parameter is
    # not an argument, annotations are checked strictly, a misspelt name gets a did-you-mean
    issues = issues_of("""\
        imports: [tests.unit.sample_tasks]
        schedules:
          - {name: a, cron: "@daily", task: sample.with_context, args: {order_id: 42}}
          - {name: b, cron: "@daily", task: sample.with_context, args: {order_id: "42"}}
          - {name: c, cron: "@daily", task: sample.with_context, args: {order_idd: 42}}
        """)
    assert where(issues) == [(4, "b", "args"), (5, "c", "args")]
    assert "order_id" in issues[0].reason and "valid integer" in issues[0].reason
    assert "did you mean 'order_id'?" in issues[1].reason
    assert "ctx" not in issues[1].reason


def test_yaml_syntax_error_reports_its_line() -> None:
    issues = issues_of("""\
        schedules:
          - name: a
            cron: "@daily"
           task: t
        """)
    assert len(issues) == 1 and issues[0].line == 4 and issues[0].field is None
    assert issues[0].reason.startswith("YAML syntax error")


def test_unquoted_star_gets_a_hint() -> None:
    issues = issues_of("schedules:\n  - name: a\n    cron: */5 * * * *\n    task: t\n")
    assert issues[0].line == 3 and "must be quoted" in issues[0].reason


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- a\n- b\n", "the top level is a list"),
        ("timezone: UTC\n", "'schedules'"),
        ("schedules: {a: 1}\n", "must be a list"),
        ("schedules: []\nschedule: []\n", "did you mean 'schedules'"),
        ("imports: tests.unit.sample_tasks\nschedules: []\n", "list of module names"),
        ("imports: ['not a module']\nschedules: []\n", "not a dotted module name"),
        ("timezone: 5\nschedules: []\n", "IANA time zone name"),
    ],
)
def test_file_level_problems(text: str, fragment: str) -> None:
    issues = issues_of(text, import_tasks=False)
    assert len(issues) == 1 and fragment in issues[0].reason and issues[0].schedule is None


@pytest.mark.parametrize(
    ("item", "field", "fragment"),
    [
        ("{name: 'bad name!', cron: '@daily', task: t}", "name", "letters, digits"),
        ("{name: a, cron: '@daily', task: t, cron_expr: x}", "cron_expr", "did you mean 'cron'"),
        ("{name: a, cron: '@daily', task: t, enabled: 'yes'}", "enabled", "valid boolean"),
        ("{name: a, cron: '@daily', task: t, priority: true}", "priority", "valid integer"),
        ("{name: a, cron: '@daily', task: t, backoff_jitter: 2}", "backoff_jitter", "less than"),
        ("{name: a, cron: '@daily', task: t, backoff_base_s: 0}", "backoff_base_s", "greater than"),
        (
            "{name: a, cron: '@daily', task: t, backoff_base_s: 9, backoff_max_s: 1}",
            "backoff_max_s",
            "smaller than backoff_base_s",
        ),
        ("{name: a, cron: '0 0 * * * * *', task: t}", "cron", "got 7"),
        ("{name: 5, cron: '@daily', task: t}", "name", "valid string"),
    ],
)
def test_schedule_field_problems(item: str, field: str, fragment: str) -> None:
    issues = issues_of(f"schedules:\n  - {item}\n", import_tasks=False)
    assert [i.field for i in issues] == [field] and issues[0].line == 2
    assert fragment in issues[0].reason


def test_each_schedule_must_be_a_mapping() -> None:
    issues = issues_of("schedules:\n  - just a string\n", import_tasks=False)
    assert where(issues) == [(2, "schedules[0]", None)] and "must be a mapping" in issues[0].reason


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.issues[0].line == 0 and "cannot read file" in info.value.issues[0].reason


# -- empty files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# no schedules yet\n# (comments only)\n", "---\n"])
def test_an_empty_file_is_valid_and_schedules_nothing(text: str) -> None:
    config = load_config_text(text, "schedules.yaml")
    assert config == SchedulesConfig(path="schedules.yaml")
    assert (config.schedules, config.imports, config.timezone) == ([], [], "UTC")


def test_a_zero_byte_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_bytes(b"")
    assert load_config(path).schedules == []


# -- policies: misfire, overlap, catch-up, deadlines -----------------------------------------------

POLICIES = """\
schedules:
  - name: all
    cron: "@hourly"
    task: t
    misfire_policy: run_all
    overlap_policy: queue
    max_catch_up: 24
    starting_deadline_s: 3600
    misfire_grace_s: 0
  - name: none
    cron: "@daily"
    task: t
"""


def test_policy_fields_load_as_enums_and_numbers() -> None:
    full, bare = load_config_text(POLICIES, import_tasks=False).schedules
    assert full.misfire_policy is MisfirePolicy.RUN_ALL
    assert full.overlap_policy is OverlapPolicy.QUEUE
    assert (full.max_catch_up, full.starting_deadline_s, full.misfire_grace_s) == (24, 3600.0, 0.0)
    assert type(full.starting_deadline_s) is float and type(full.misfire_grace_s) is float
    # unset means None: the caller resolves the defaults from the settings
    assert (bare.misfire_policy, bare.overlap_policy, bare.max_catch_up) == (None, None, None)
    assert (bare.starting_deadline_s, bare.misfire_grace_s) == (None, None)


def test_policy_enums() -> None:
    assert [p.value for p in MisfirePolicy] == ["skip", "run_once", "run_all"]
    assert [p.value for p in OverlapPolicy] == [
        "allow", "skip", "queue", "buffer_one", "cancel_previous"
    ]
    assert MisfirePolicy("run_once") is MisfirePolicy.RUN_ONCE and MisfirePolicy.SKIP == "skip"
    direct = ScheduleConfig(
        name="a", cron="@daily", task="t", misfire_policy="skip", overlap_policy=OverlapPolicy.SKIP
    )
    assert (
        direct.misfire_policy is MisfirePolicy.SKIP and direct.overlap_policy is OverlapPolicy.SKIP
    )


@pytest.mark.parametrize(
    ("line", "field", "fragments"),
    [
        ("misfire_policy: run-once", "misfire_policy", ["skip, run_once, run_all", "'run_once'?"]),
        ("misfire_policy: RUN_ALL", "misfire_policy", ["skip, run_once, run_all", "'run_all'?"]),
        (
            "misfire_policy: later",
            "misfire_policy",
            ["'later' is not one of skip, run_once, run_all"],
        ),
        ("misfire_policy: 1", "misfire_policy", ["1 is not one of skip, run_once, run_all"]),
        ("overlap_policy: forbid", "overlap_policy", ["'forbid' is not one of allow, skip, queue"]),
        ("overlap_policy: false", "overlap_policy", ["False is not one of allow, skip, queue"]),
        ("max_catch_up: 0", "max_catch_up", ["greater than or equal to 1"]),
        ("max_catch_up: 2.5", "max_catch_up", ["valid integer"]),
        ("max_catch_up: '10'", "max_catch_up", ["valid integer", "without quotes"]),
        ("starting_deadline_s: 0", "starting_deadline_s", ["greater than 0"]),
        ("starting_deadline_s: .inf", "starting_deadline_s", ["finite number"]),
        ("misfire_grace_s: -1", "misfire_grace_s", ["greater than or equal to 0"]),
        ("misfire_grace_s: '60'", "misfire_grace_s", ["valid number", "'60'", "without quotes"]),
        ("misfire_grace_s: true", "misfire_grace_s", ["valid number"]),
        ("max_attempts: '5'", "max_attempts", ["valid integer", "'5'", "without quotes"]),
        ("enabled: 'yes'", "enabled", ["valid boolean", "write true or false without quotes"]),
        ("priority: 1.0", "priority", ["valid integer"]),
    ],
)
def test_wrong_values_and_types_are_errors(line: str, field: str, fragments: list[str]) -> None:
    """Strict types: no string is coerced to a number or a boolean."""
    issues = issues_of(
        f'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    {line}\n',
        import_tasks=False,
    )
    assert where(issues) == [(5, "a", field)]
    for fragment in fragments:
        assert fragment in issues[0].reason


@pytest.mark.parametrize(
    ("text", "line", "schedule", "field", "suggestion"),
    [
        ("timzone: UTC\nschedules: []\n", 1, None, "timzone", "'timezone'"),
        ("imprts: []\nschedules: []\n", 1, None, "imprts", "'imports'"),
        (
            'schedules:\n  - {name: a, cron: "@daily", task: t, timzone: UTC}\n',
            2,
            "a",
            "timzone",
            "'timezone'",
        ),
        (
            "schedules:\n  - name: a\n    cron: '@daily'\n    task: t\n    misfire_polcy: skip\n",
            5,
            "a",
            "misfire_polcy",
            "'misfire_policy'",
        ),
        (
            "schedules:\n  - name: a\n    cron: '@daily'\n    task: t\n    max_catchup: 5\n",
            5,
            "a",
            "max_catchup",
            "'max_catch_up'",
        ),
        (
            "schedules:\n  - name: a\n    cron: '@daily'\n    task: t\n    grace_s: 5\n",
            5,
            "a",
            "grace_s",
            "'misfire_grace_s'",
        ),
        (
            "schedules:\n  - name: a\n    cron: '@daily'\n    task: t\n    colour: blue\n",
            5,
            "a",
            "colour",
            None,
        ),
    ],
)
def test_unknown_keys_get_a_did_you_mean(
    text: str, line: int, schedule: str | None, field: str, suggestion: str | None
) -> None:
    issues = issues_of(text, import_tasks=False)
    assert where(issues) == [(line, schedule, field)]
    assert issues[0].reason.startswith(f"unknown key {field!r}")
    if suggestion:
        assert f"(did you mean {suggestion}?)" in issues[0].reason
    else:
        assert "did you mean" not in issues[0].reason
    assert "allowed:" in issues[0].reason


def test_all_policy_problems_at_once_with_file_line_schedule_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(
            textwrap.dedent("""\
                schedules:
                  - name: a
                    cron: "@daily"
                    task: t
                    misfire_policy: sometimes
                    max_catch_up: 0
                  - name: b
                    cron: "@hourly"
                    task: t
                    overlap_polcy: skip
                    misfire_grace_s: "60"
                    starting_deadline_s: -5
                    starting_deadline_s: 5
                  - name: a
                    cron: "@hourly"
                    task: t
                """),
            "s.yaml",
            import_tasks=False,
        )
    assert where(info.value.issues) == [
        (5, "a", "misfire_policy"),
        (6, "a", "max_catch_up"),
        (10, "b", "overlap_polcy"),
        (11, "b", "misfire_grace_s"),
        (13, "b", "starting_deadline_s"),
        (14, "a", "name"),
    ]
    lines = str(info.value).splitlines()
    assert lines[0].startswith("s.yaml:5: schedule 'a': field 'misfire_policy': 'sometimes' is")
    assert "duplicate key 'starting_deadline_s' (first at line 12)" in lines[4]
    assert lines[5].startswith("s.yaml:14: schedule 'a': field 'name': duplicate schedule name")


# Definition hash of VALID's first schedule and the config hash of VALID as computed before the
# policy fields existed: schedules that do not use them must keep these (mixed-version
# replicas compare config hashes).
PRE_POLICY_DEFINITION_HASH = "335ea9f210f9b486739c37873f5da0948bce20aa73bb5b675a386b2da29cfc29"
PRE_POLICY_CONFIG_HASH = "e9409288b08ec485c720c3957062f2d5c9eec437aa367101bb60ca413c7decf2"


def test_hashes_of_schedules_without_policies_did_not_change() -> None:
    config = load_config_text(VALID, import_tasks=False)
    assert config.schedules[0].definition_hash() == PRE_POLICY_DEFINITION_HASH
    assert config.config_hash() == PRE_POLICY_CONFIG_HASH


def test_policy_fields_change_the_hash_only_when_set() -> None:
    digest = load_config_text(VALID, import_tasks=False).schedules[0]
    hashes = {digest.definition_hash()}
    for change in (
        {"misfire_policy": MisfirePolicy.SKIP},
        {"misfire_policy": MisfirePolicy.RUN_ALL},
        {"overlap_policy": OverlapPolicy.QUEUE},
        {"max_catch_up": 5},
        {"starting_deadline_s": 60.0},
        {"misfire_grace_s": 0.0},
        {"misfire_grace_s": 60.0},
    ):
        changed = digest.model_copy(update=change)
        assert changed.definition_hash() not in hashes, change
        hashes.add(changed.definition_hash())
    unset = digest.model_copy(update={"misfire_policy": None, "max_catch_up": None})
    assert unset.definition_hash() == digest.definition_hash()


# -- hostile files: alias bombs, nesting, size (see also test_config_hostile.py) -------------------

# Billion laughs: nine levels of nine aliases each, 9**9 (387 million) values once expanded.
LEVELS = "abcdefghi"
LAUGHS = "".join(
    f"  {c}: &{c} [" + ",".join([f"*{LEVELS[n - 1]}" if n else "lol"] * 9) + "]\n"
    for n, c in enumerate(LEVELS)
)


def refused(text: str, **kwargs: bool) -> ConfigIssue:
    """The single issue of ``text`` (every hostile file below has exactly one)."""
    issues = issues_of(text, **kwargs)
    assert len(issues) == 1, issues
    assert issues[0].file == "schedules.yaml" and issues[0].line > 0
    return issues[0]


@pytest.mark.timeout(10)
def test_an_alias_bomb_in_args_is_refused_fast() -> None:
    issue = refused(
        'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    args:\n'
        + textwrap.indent(LAUGHS, "    "),
        import_tasks=False,
    )
    assert len(LAUGHS) < 400  # bytes
    assert issue.reason.startswith(
        "the document expands to more than 1,000,000 values through aliases"
    )
    assert issue.line == 12  # g (9**7 values) is the first level above the bound


@pytest.mark.timeout(10)
def test_an_alias_bomb_in_an_unknown_key_is_refused_fast() -> None:
    issue = refused("laughs:\n" + LAUGHS + 'schedules:\n  - {name: a, cron: "@daily", task: t}\n')
    assert "through aliases" in issue.reason and issue.line == 8


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "text",
    [
        "args: &r {x: [1, *r]}",
        "args: {x: &r [*r]}",
    ],
)
def test_a_value_that_contains_itself_is_refused(text: str) -> None:
    issue = refused(
        f'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    {text}\n',
        import_tasks=False,
    )
    assert "contains itself through an alias" in issue.reason and issue.line == 5


@pytest.mark.timeout(10)
@pytest.mark.parametrize("depth", [101, 10_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    issue = refused(
        f'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    args: {{x: {nested}}}\n',
        import_tasks=False,
    )
    assert issue.line == 5 and "nest" in issue.reason


@pytest.mark.timeout(10)
def test_deep_block_nesting_is_refused() -> None:
    block = "".join("  " * (n + 3) + f"k{n}:\n" for n in range(3_000))
    text = 'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    args:\n' + block
    issue = refused(text, import_tasks=False)
    assert "deeper than 100 levels" in issue.reason


@pytest.mark.timeout(10)
def test_nesting_through_a_chain_of_aliases_is_refused() -> None:
    chain = "c0: &c0 {x: 1}\n" + "".join(f"c{n}: &c{n} {{x: *c{n - 1}}}\n" for n in range(1, 200))
    issue = refused(
        chain + 'schedules:\n  - {name: a, cron: "@daily", task: t, args: {x: *c199}}\n'
    )
    assert "deeper than 100 levels once its aliases are expanded" in issue.reason


def test_nesting_up_to_the_bound_loads() -> None:
    # the file is level 1, schedules 2, the schedule 3, args 4: 96 more levels fit
    nested = "[" * 96 + "]" * 96
    config = load_config_text(
        f'schedules:\n  - {{name: a, cron: "@daily", task: t, args: {{x: {nested}}}}}\n',
        import_tasks=False,
    )
    value = config.schedules[0].args["x"]
    for _ in range(95):
        (value,) = value
    assert value == []


def test_anchors_aliases_and_merges_of_real_files_keep_working() -> None:
    text = (
        "imports: [tests.unit.sample_tasks]\nschedules:\n"
        "  - &first {name: s0, cron: '0 9 * * *', task: sample.digest, queue: mail,"
        " args: &to {to: [a@example.com, b@example.com], edition: e0}}\n"
        + "".join(
            f"  - {{<<: *first, name: s{n}, args: {{<<: *to, edition: e{n}}}}}\n"
            for n in range(1, 500)
        )
    )
    config = load_config_text(text, "s.yaml")
    assert len(config.schedules) == 500
    last = config.schedules[-1]
    assert (last.name, last.cron, last.queue, last.task) == (
        "s499",
        "0 9 * * *",
        "mail",
        "sample.digest",
    )
    assert last.args == {"to": ["a@example.com", "b@example.com"], "edition": "e499"}


@pytest.mark.timeout(10)
def test_a_file_larger_than_the_bound_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("schedules: []\n# " + "x" * MAX_FILE_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert (issue.file, issue.line) == (str(path), 0)
    assert "larger than 10,485,760 bytes (10 MiB)" in issue.reason
    with pytest.raises(ConfigError, match="longer than 10,485,760 characters"):
        load_config_text("#" * (MAX_FILE_BYTES + 1))
    assert (config_module.MAX_FILE_BYTES, config_module.MAX_ISSUES) == (MAX_FILE_BYTES, MAX_ISSUES)


def test_a_file_just_within_the_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    text = "schedules: []\n#"
    path.write_text(text + "x" * (MAX_FILE_BYTES - len(text) - 1) + "\n", encoding="utf-8")
    assert load_config(path).schedules == []


def test_characters_yaml_does_not_allow_are_refused_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b'schedules:\n  - {name: a, cron: "@daily",\x00 task: t}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(i.line, i.reason) for i in info.value.issues] == [
        (2, "character U+0000 (a control character) at column 30 is not allowed in YAML")
    ]
    issue = refused("schedules: []\n\n# \udcff\n")
    assert issue.line == 3 and "U+DCFF (an unpaired surrogate" in issue.reason
    path.write_bytes(b"schedules: []\n# caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(i.line, i.reason) for i in info.value.issues] == [
        (2, "the file is not UTF-8 text: byte 0xe9 cannot be decoded")
    ]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("!!int abc", "cannot read 'abc' as !!int"),
        ("0x" + "f" * 1_000, "an integer of 1,002 characters is too large (at most 1,000)"),
        ("9" * 5_000, "an integer of 5,000 characters is too large"),
        ("!!bool maybe", "cannot read 'maybe' as !!bool"),
    ],
)
def test_values_yaml_cannot_build_are_issues_with_their_line(value: str, fragment: str) -> None:
    issue = refused(
        f'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    priority: {value}\n',
        import_tasks=False,
    )
    assert issue.line == 5 and issue.reason.startswith("invalid YAML value: ")
    assert fragment in issue.reason


def test_an_impossible_date_is_an_issue() -> None:
    issue = refused(
        'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n    args: {d: 2025-13-45}\n',
        import_tasks=False,
    )
    assert issue.line == 5 and "month must be in 1..12" in issue.reason


def test_at_most_max_issues_are_listed() -> None:
    text = "schedules:\n" + "  - {name: 'bad name', cron: '@daily', task: t}\n" * 1_500
    issues = issues_of(text, import_tasks=False)
    assert len(issues) == MAX_ISSUES + 1
    assert issues[-1].reason == "... and 1,999 more problems not listed"  # 1,500 + 1,499 dups
    assert [i.line for i in issues[:-1]] == sorted(i.line for i in issues[:-1])


def test_the_pure_python_parser_builds_the_same_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml (when PyYAML has it) and PyYAML's pure-Python parser give the same models, so
    replicas agree on config_hash whichever they run."""
    expected = load_config_text(VALID, import_tasks=False)
    monkeypatch.setattr(config_module, "Loader", config_yaml.PureLoader)
    assert load_config_text(VALID, import_tasks=False) == expected
    assert load_config_text(VALID, import_tasks=False).config_hash() == PRE_POLICY_CONFIG_HASH
    with pytest.raises(ConfigError, match="through aliases"):
        load_config_text("laughs:\n" + LAUGHS + "schedules: []\n")
    with pytest.raises(ConfigError, match="deeper than 100 levels"):
        load_config_text("x: " + "[" * 5_000 + "]" * 5_000 + "\nschedules: []\n")


# -- validation is linear in the number of schedules --------------------------------------------


def schedules_text(count: int) -> str:
    return "schedules:\n" + "".join(
        f"  - {{name: s{n}, cron: '*/5 * * * *', task: t, queue: q{n % 7}, args: {{n: {n}}}}}\n"
        for n in range(count)
    )


def cpu_seconds(action: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        action()
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.timeout(120)
def test_loading_is_linear_in_the_number_of_schedules() -> None:
    """A ratio in one run, not a timing: 10x the schedules may cost up to 30x (about 11-14x
    measured; a quadratic step that dominates would cost up to 100x)."""
    small, large = schedules_text(2_000), schedules_text(20_000)
    load_config_text(small, import_tasks=False)  # warm up: imports, caches
    t_small = cpu_seconds(lambda: load_config_text(small, import_tasks=False), repeat=3)
    t_large = cpu_seconds(lambda: load_config_text(large, import_tasks=False))
    assert t_large / t_small < 30, (t_small, t_large)


@pytest.mark.timeout(120)
def test_checking_unique_names_is_linear() -> None:
    """The duplicate-name check alone (it counted each name in the whole list: 100x+ for 10x
    the schedules). Linear measures 15-25x at these milliseconds (caches), hence 50."""
    models = [ScheduleConfig(name=f"s{n}", cron="@daily", task="t") for n in range(20_000)]
    t_small = cpu_seconds(lambda: SchedulesConfig(path="x", schedules=models[:2_000]), repeat=5)
    t_large = cpu_seconds(lambda: SchedulesConfig(path="x", schedules=models), repeat=3)
    assert t_large / max(t_small, 1e-4) < 50, (t_small, t_large)


# -- queue, task and schedule names: the bounds of scheduler.limits -----------------------------


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("queue", "q" * 9_000, limits.check_queue),
        ("queue", "q" * 101, limits.check_queue),
        ("queue", "mail,reports", limits.check_queue),
        ("queue", "mail reports", limits.check_queue),
        ("queue", "", limits.check_queue),
        ("task", "", limits.check_task_name),
        ("task", "send mail", limits.check_task_name),
        ("task", "t" * 201, limits.check_task_name),
        ("name", "", limits.check_schedule_name),
        ("name", "n" * 201, limits.check_schedule_name),
        ("name", "bad name!", limits.check_schedule_name),
    ],
)
def test_names_have_the_bounds_of_the_python_api(
    field: str, value: str, check: Callable[[str], str]
) -> None:
    with pytest.raises(InvalidArgumentError) as api:
        check(value)
    values = {"name": "a", "cron": "'@daily'", "task": "t", field: f"'{value}'"}
    text = "schedules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in values.items()) + "\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "f.yaml", import_tasks=False)
    (issue,) = info.value.issues
    assert (issue.field, issue.reason) == (field, str(api.value))
    line = list(values).index(field) + 2
    schedule = "a" if field != "name" else "schedules[0]"
    assert str(info.value) == f"f.yaml:{line}: schedule {schedule!r}: field {field!r}: {api.value}"


def test_valid_names_at_the_bounds_load() -> None:
    config = load_config_text(
        f"schedules:\n  - {{name: {'n' * 200}, cron: '@daily', task: {'t' * 200},"
        f" queue: {'q' * 100}}}\n  - {{name: b, cron: '@daily', task: mail.send/v2:x,"
        " queue: a.b:c/d-e_f}\n",
        import_tasks=False,
    )
    assert [len(s.name) for s in config.schedules] == [200, 1]
    assert config.schedules[1].queue == "a.b:c/d-e_f"


@pytest.mark.parametrize("field", ["backoff_base_s", "backoff_max_s", "misfire_grace_s",
                                   "starting_deadline_s"])  # fmt: skip
def test_durations_are_bounded_so_timestamps_stay_in_range(field: str) -> None:
    """A backoff of 1e300 s used to pass and then overflow now() + interval in every
    completion of the schedule's jobs."""
    text = f"schedules:\n  - {{name: a, cron: '* * * * *', task: t, {field}: 1.0e+300}}\n"
    with pytest.raises(ConfigError, match=f"field '{field}': Input should be less than or equal"):
        load_config_text(text, import_tasks=False)
    ok = f"schedules:\n  - {{name: a, cron: '* * * * *', task: t, {field}: 315360000}}\n"
    assert load_config_text(ok, import_tasks=False).schedules[0]
