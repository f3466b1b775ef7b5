"""scheduler.config on hostile schedules files: every one is refused with a ConfigError that
names the file and the reason, fast, and nothing else escapes (pure: no database)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from scheduler import config, config_yaml, registry
from scheduler.config import load_config
from scheduler.errors import ConfigError

SAMPLE = "tests.unit.sample_tasks"
HEAD = 'schedules:\n  - name: a\n    cron: "@daily"\n    task: t\n'
MB = 1_000_000


def extra(line: str) -> str:
    """A valid schedule plus one more line of its own."""
    return HEAD + f"    {line}\n"


def field(name: str, value: str) -> str:
    """The schedule with ``name: value`` (replacing the valid value, if any)."""
    values = {"name": "a", "cron": '"@daily"', "task": "t", name: value}
    return "schedules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in values.items()) + "\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs: each level lists the previous one ``width`` times (a few hundred bytes)."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def args_bomb(levels: int = 9) -> str:
    anchors = "".join(
        f"      - &l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]\n" for n in range(1, levels)
    )
    return (
        HEAD
        + "    args:\n"
        + "      - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + anchors
    )


def deep_flow(depth: int) -> str:
    return extra("args: {x: " + "[" * depth + "]" * depth + "}")


def deep_block(depth: int) -> str:
    return HEAD + "    args:\n" + "".join("  " * (3 + n) + f"k{n}:\n" for n in range(depth)) + "\n"


def alias_chain(links: int) -> str:
    """Mappings that each nest the previous one through an alias: shallow in the file, deep
    once the aliases are expanded."""
    lines = ["c0: &c0 {x: 1}"] + [f"c{n}: &c{n} {{x: *c{n - 1}}}" for n in range(1, links)]
    return "\n".join(lines) + "\n" + extra(f"args: {{x: *c{links - 1}}}")


def merge_chain(links: int) -> str:
    lines = ["m0: &m0 {queue: q}"] + [f"m{n}: &m{n} {{<<: *m{n - 1}}}" for n in range(1, links)]
    last = f"m{links - 1}"
    return (
        "\n".join(lines) + f"\nschedules:\n  - {{<<: *{last}, name: a, cron: '@daily', task: t}}\n"
    )


def long_key(key: str, value: str = "1") -> str:
    """``key`` as an explicit key (``? key``): a plain key is limited to 1,024 characters."""
    return HEAD + f"    ? {key}\n    : {value}\n"


# A YAML escape for a lone surrogate (the file itself is valid UTF-8). libyaml refuses the
# escape while parsing; PyYAML's pure-Python parser builds the string, and the checks refuse it.
SURROGATE = '"\\udcff"'
SURROGATE_REFUSED = "surrogate|invalid unicode character escape|\\udcff"
NUL = '"a\\0b"'
LONG = "x" * MB
HUGE_INT = "9" * 5_000  # more digits than Python converts
HUGE_HEX = "0x" + "f" * 5_000  # 20,000 bits: converts, but its decimal text would not

Case = Callable[[], str | bytes]

# name: (the file's content, fragments of the expected reason separated by |)
CASES: dict[str, tuple[Case, str]] = {
    # bytes that are not a YAML text
    "nul byte in the file": (lambda: HEAD.encode() + b"    queue: a\x00b\n", "U+0000"),
    "nul byte at the start": (lambda: b"\x00schedules: []\n", "U+0000"),
    "binary garbage": (lambda: bytes(range(256)) * 64, "utf-8"),
    "invalid utf-8 in a value": (lambda: HEAD.encode() + b"    queue: \xff\xfe\n", "utf-8"),
    "utf-16 file": (lambda: "schedules: []\n".encode("utf-16"), "utf-8"),
    "control character": (lambda: HEAD + "    queue: a\x07b\n", "U+0007"),
    "20 MB file": (lambda: "# " + "x" * (20 * MB) + "\nschedules: []\n", "larger than"),
    "20 MB of newlines": (lambda: "\n" * (20 * MB) + "schedules: []\n", "larger than"),
    # the top level
    "top-level integer": (lambda: "42\n", "top level is a int"),
    "top-level string": (lambda: "hello world\n", "top level is a str"),
    "top-level list": (lambda: "- schedules: []\n", "top level is a list"),
    "top-level bool": (lambda: "true\n", "top level is a bool"),
    "two documents": (lambda: "schedules: []\n---\nschedules: []\n", "single document"),
    "python object tag": (lambda: "!!python/object:os.system {}\n", "constructor"),
    # lone surrogates (YAML "\udcff" escapes) and NUL everywhere
    "surrogate in name": (lambda: field("name", SURROGATE), SURROGATE_REFUSED),
    "surrogate in cron": (lambda: field("cron", SURROGATE), SURROGATE_REFUSED),
    "surrogate in task": (lambda: field("task", SURROGATE), SURROGATE_REFUSED),
    "surrogate in timezone": (lambda: field("timezone", SURROGATE), SURROGATE_REFUSED),
    "surrogate in queue": (lambda: field("queue", SURROGATE), SURROGATE_REFUSED),
    "surrogate in an args key": (lambda: extra(f"args: {{{SURROGATE}: 1}}"), SURROGATE_REFUSED),
    "surrogate in an args value": (lambda: extra(f"args: {{k: {SURROGATE}}}"), SURROGATE_REFUSED),
    "surrogate in a policy": (lambda: extra(f"misfire_policy: {SURROGATE}"), SURROGATE_REFUSED),
    "surrogate in an unknown key": (lambda: extra(f"{SURROGATE}: 1"), SURROGATE_REFUSED),
    "surrogate in the file zone": (
        lambda: f"timezone: {SURROGATE}\nschedules: []\n",
        SURROGATE_REFUSED,
    ),
    "surrogate in imports": (lambda: f"imports: [{SURROGATE}]\nschedules: []\n", SURROGATE_REFUSED),
    "nul in name": (lambda: field("name", NUL), "nul"),
    "nul in task": (lambda: field("task", NUL), "nul"),
    "nul in queue": (lambda: field("queue", NUL), "nul"),
    "nul in cron": (lambda: field("cron", NUL), "cron"),
    "nul in timezone": (lambda: field("timezone", NUL), "time zone"),
    # numbers
    "huge decimal priority": (lambda: extra(f"priority: {HUGE_INT}"), "too large"),
    "huge hex priority": (lambda: extra(f"priority: {HUGE_HEX}"), "too large"),
    "huge hex args key": (lambda: extra(f"args:\n      ? {HUGE_HEX}\n      : 1"), "too large"),
    "huge hex unknown key": (lambda: long_key(HUGE_HEX), "too large"),
    "1,000-digit hex args key": (lambda: extra(f"args: {{0x{'f' * 998}: 1}}"), "keys must be"),
    "1,000-digit backoff_base_s": (lambda: extra(f"backoff_base_s: {'9' * 1_000}"), "valid number"),
    "long base-60 integer": (lambda: extra("args: {x: 1" + ":59" * 300_000 + "}"), "too large"),
    "priority above int32": (lambda: extra("priority: 2147483648"), "less than or equal"),
    "priority below int32": (lambda: extra("priority: -2147483649"), "greater than or equal"),
    "max_attempts 2**63": (lambda: extra("max_attempts: 9223372036854775808"), "less than"),
    "max_catch_up negative": (lambda: extra("max_catch_up: -1"), "greater than"),
    "nan backoff_base_s": (lambda: extra("backoff_base_s: .nan"), "finite"),
    "inf backoff_max_s": (lambda: extra("backoff_max_s: .inf"), "finite"),
    "nan backoff_jitter": (lambda: extra("backoff_jitter: .NaN"), "finite"),
    "-inf misfire_grace_s": (lambda: extra("misfire_grace_s: -.inf"), "finite"),
    "1e999 starting_deadline_s": (lambda: extra("starting_deadline_s: 1.0e+999"), "finite"),
    "bool priority": (lambda: extra("priority: true"), "valid integer"),
    "bool max_attempts": (lambda: extra("max_attempts: false"), "valid integer"),
    "bool max_catch_up": (lambda: extra("max_catch_up: yes"), "valid integer"),
    "bool backoff_base_s": (lambda: extra("backoff_base_s: true"), "valid number"),
    "string enabled": (lambda: extra("enabled: 'true'"), "valid boolean"),
    # values YAML cannot build
    "impossible date in args": (lambda: extra("args: {d: 2025-13-45}"), "month"),
    "bad explicit int": (lambda: extra("priority: !!int abc"), "!!int"),
    "bad explicit float": (lambda: extra("backoff_base_s: !!float abc"), "!!float"),
    "bad explicit bool": (lambda: extra("enabled: !!bool maybe"), "!!bool"),
    "bad explicit timestamp": (lambda: extra("args: {d: !!timestamp soon}"), "!!timestamp"),
    "binary args": (lambda: extra("args: {b: !!binary 'AAAA'}"), "not json"),
    "binary name": (lambda: field("name", "!!binary 'AAAA'"), "valid string"),
    "python object in args": (lambda: extra("args: {x: !!python/name:os.system ''}"), "tag"),
    "empty explicit int": (lambda: extra("priority: !!int ''"), "!!int"),
    "unhashable key": (lambda: extra("args: {? [1, 2] : x}"), "unhashable"),
    "undefined alias": (lambda: extra("args: *nowhere"), "undefined alias"),
    # very long strings in every string field
    "long name": (lambda: field("name", LONG), "too long"),
    "long cron": (lambda: field("cron", LONG), "too long"),
    "long task": (lambda: field("task", LONG), "too long"),
    "long timezone": (lambda: field("timezone", LONG), "too long"),
    "long queue": (lambda: field("queue", LONG), "too long"),
    "9,000-character queue": (lambda: field("queue", "q" * 9_000), "too long"),
    "long misfire_policy": (lambda: extra(f"misfire_policy: {LONG}"), "is not one of"),
    "long overlap_policy": (lambda: extra(f"overlap_policy: {LONG}"), "is not one of"),
    "long unknown key": (lambda: long_key(LONG), "unknown key"),
    "long plain key": (lambda: extra(f"{LONG}: 1"), "simple key"),
    "long top-level key": (lambda: f"? {LONG}\n: 1\nschedules: []\n", "unknown key"),
    "long file zone": (lambda: f"timezone: {LONG}\nschedules: []\n", "too long"),
    "10,000 imports": (
        lambda: "imports: [" + ", ".join(f"m{n}" for n in range(10_000)) + "]\nschedules: []\n",
        "at most 1,000",
    ),
    "long import": (lambda: f"imports: [{LONG}]\nschedules: []\n", "module"),
    # names the service could never work
    "queue list": (lambda: field("queue", "mail,reports"), "split on commas"),
    "empty queue": (lambda: field("queue", "''"), "empty"),
    "queue with a space": (lambda: field("queue", "'mail reports'"), "may only contain"),
    "task with a space": (lambda: field("task", "'send mail'"), "whitespace"),
    "empty task": (lambda: field("task", "''"), "empty"),
    "empty name": (lambda: field("name", "''"), "empty"),
    # nesting and aliases
    "10,000 nested lists": (lambda: deep_flow(10_000), "nest"),
    "500 nested lists": (lambda: deep_flow(500), "nest"),
    "2,000 nested mappings": (lambda: deep_block(2_000), "nest"),
    "deep unknown key": (lambda: extra("x: " + "[" * 5_000 + "]" * 5_000), "nest"),
    "alias chain": (lambda: alias_chain(5_000), "nest"),
    "merge chain": (lambda: merge_chain(3_000), "nest"),
    "alias bomb in an unknown key": (lambda: alias_bomb() + HEAD, "through aliases"),
    "alias bomb in args": (lambda: args_bomb(), "through aliases"),
    "wide alias bomb": (lambda: alias_bomb(levels=4, width=1_000) + HEAD, "through aliases"),
    "alias bomb in imports": (lambda: alias_bomb() + "imports: *l8\nschedules: []\n", "aliases"),
    "alias bomb merged": (
        lambda: (
            alias_bomb()
            + "d: &d {args: {a: *l8, b: *l8}}\n"
            + "schedules: [{<<: *d, name: a, cron: '@daily', task: t}]\n"
        ),
        "through aliases",
    ),
    "recursive args": (lambda: extra("args: &r {x: *r}"), "recursive"),
    "recursive unknown key": (lambda: "x: &r [*r]\n" + HEAD, "recursive"),
    "recursive merge": (lambda: "schedules:\n  - &r {<<: *r, name: a}\n", "recursive"),
    "a million values": (lambda: "x: [" + "0," * MB + "0]\n" + HEAD, "values"),
    # many problems at once
    "5,000 broken schedules": (
        lambda: "schedules:\n" + "  - {name: a, cron: '61 * * * *', task: t}\n" * 5_000,
        "more problems",
    ),
    "5,000 duplicate keys": (lambda: HEAD + "    queue: q\n" * 5_000, "more problems"),
}


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    sys.modules.pop(SAMPLE, None)


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a file must never connect: fail the test if anything tries."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_config opened a database connection")

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(refuse))


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "hostile.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


# The pure-Python parser is PyYAML's fallback without libyaml: the same checks run on it, but
# it parses several times slower, so the cases that are large on purpose run on libyaml only.
LARGE = {
    "a million values",
    "5,000 broken schedules",
    "5,000 duplicate keys",
    "long base-60 integer",
}
VARIANTS = [
    pytest.param("libyaml", False, id="lint"),
    pytest.param("libyaml", True, id="import"),
    pytest.param("python", False, id="python-lint"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("parser", "import_tasks"), VARIANTS)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_refused_fast_and_clearly(
    name: str,
    parser: str,
    import_tasks: bool,
    tmp_path: Path,
    no_database: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if parser == "python":
        if name in LARGE:
            pytest.skip("large on purpose: libyaml only")
        monkeypatch.setattr(config, "Loader", config_yaml.PureLoader)
    elif not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    make, fragments = CASES[name]
    path = write(tmp_path, make())
    with pytest.raises(ConfigError) as info:
        load_config(path, import_tasks=import_tasks)
    issues = info.value.issues
    assert issues
    for issue in issues:
        assert issue.file == str(path)
        assert issue.reason.strip() and issue.line >= 0
        assert len(issue.reason) <= 2_000 and len(issue.field or "") <= 200
    text = str(info.value)
    text.encode("utf-8")  # printable: no lone surrogates, whatever the input held
    assert "\x00" not in text and len(issues) <= 1_001  # MAX_ISSUES and "... more"
    assert any(f.lower() in text.lower() for f in fragments.split("|")), text[:2_000]


def test_the_table_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.timeout(10)
def test_a_valid_file_loads_without_a_database(tmp_path: Path, no_database: None) -> None:
    path = write(
        tmp_path,
        "imports: [tests.unit.sample_tasks]\nschedules:\n"
        "  - {name: a, cron: '@daily', task: sample.digest, args: {edition: daily}}\n",
    )
    assert [s.name for s in load_config(path).schedules] == ["a"]
