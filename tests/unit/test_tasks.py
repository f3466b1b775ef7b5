import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import DuplicateTaskError, UnknownTaskError, task
from scheduler.tasks import get_task, task_name


@task
def plain_task(x: int) -> int:
    return x * 2


@task(name="unit.named", queue="q", max_attempts=2)
async def named_task() -> None:
    pass


def test_bare_decorator_registers_under_function_name():
    t = get_task("plain_task")
    assert t.func(3) == 6 and plain_task(3) == 6 and not t.is_async


def test_options_and_async_detection():
    t = get_task("unit.named")
    assert (t.queue, t.max_attempts, t.is_async) == ("q", 2, True)
    assert task_name(named_task) == "unit.named"


def test_duplicate_name_for_a_different_function_is_an_error():
    with pytest.raises(DuplicateTaskError, match="plain_task"):

        @task(name="plain_task")
        def other() -> None:
            pass


def test_unknown_task_and_unregistered_function():
    with pytest.raises(UnknownTaskError, match="nope"):
        get_task("nope")

    def not_registered() -> None:
        pass

    with pytest.raises(UnknownTaskError, match="not registered"):
        task_name(not_registered)


def test_settings_reject_heartbeat_slower_than_half_the_session_timeout():
    from pydantic import ValidationError

    from scheduler.settings import Settings

    with pytest.raises(ValidationError, match="heartbeat_s"):
        Settings(heartbeat_s=6, leader_session_timeout_s=10)
    with pytest.raises(ValidationError, match="lower-case SQL identifier"):
        Settings(schema_name="Robert'); DROP TABLE jobs;--")
    assert Settings(queues="a, b").queues == ["a", "b"]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=8),
            st.lists(st.text(max_size=3), max_size=2),
        ),
        max_size=4,
    )
)
def test_args_fast_path_agrees_with_the_full_check(args):
    """args_json's fast path for flat arguments rejects exactly what json_problems rejects,
    and what it accepts round-trips through JSON."""
    import json

    from scheduler.arguments import args_json, json_problems

    problems = list(json_problems(args, ("args",)))
    try:
        text = args_json(args)
    except ValueError:
        assert problems
    else:
        assert not problems
        assert json.loads(text) == args


# ---- hostile @task options: refused when the decorator runs, nothing registered ------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"name": ""}, "@task name is empty"),
        ({"name": "two words"}, "@task name .* whitespace"),
        ({"name": "a\x00b"}, "@task name .* NUL"),
        ({"name": "\udcff"}, "@task name .* surrogate"),
        ({"name": "x" * 201}, "@task name .* too long"),
        ({"name": 3}, "@task name must be a string"),
        ({"queue": "a,b"}, "@task queue"),
        ({"queue": "q\x00"}, "@task queue .* NUL"),
        ({"queue": ""}, "@task queue is empty"),
        ({"priority": 10**12}, "@task priority .* out of range"),
        ({"priority": "high"}, "@task priority must be an int, not str"),
        ({"priority": True}, "@task priority must be an int, not bool"),
        ({"priority": 1.5}, "@task priority must be an int, not float"),
        ({"max_attempts": 0}, "@task max_attempts 0 is out of range"),
        ({"max_attempts": "3"}, "@task max_attempts must be an int, not str"),
        ({"backoff_base_s": 0}, "@task backoff_base_s must be finite, > 0"),
        ({"backoff_base_s": -1.0}, "@task backoff_base_s"),
        ({"backoff_base_s": float("nan")}, "@task backoff_base_s"),
        ({"backoff_max_s": float("inf")}, "@task backoff_max_s"),
        ({"backoff_max_s": 10**400}, "@task backoff_max_s"),
        ({"backoff_max_s": 1e12}, "@task backoff_max_s .* <= 3.1536e"),
        ({"backoff_base_s": 10, "backoff_max_s": 5}, "backoff_max_s .* smaller than"),
        ({"backoff_jitter": 1.5}, "@task backoff_jitter must be finite, >= 0 and <= 1"),
        ({"backoff_jitter": -0.1}, "@task backoff_jitter"),
        ({"backoff_jitter": True}, "@task backoff_jitter must be a number, not bool"),
        ({"timeout_s": 0}, "@task timeout_s"),
        ({"timeout_s": float("nan")}, "@task timeout_s"),
        ({"timeout_s": "5"}, "@task timeout_s must be a number, not str"),
        ({"retries": 3}, "unknown option.*'retries'"),
    ],
)
def test_task_options_are_checked_when_the_decorator_runs(options, fragment):
    from scheduler.errors import InvalidArgumentError
    from scheduler.tasks import registered_tasks

    before = registered_tasks()
    with pytest.raises(InvalidArgumentError, match=fragment) as info:

        @task(**{"name": "unit.bad_options", **options})
        def bad() -> None:
            pass

    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert registered_tasks() == before


def test_task_decorator_misuse_is_an_invalid_argument():
    import functools

    from scheduler.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"write @task\(name=...\)"):
        task("unit.forgot_the_keyword")
    with pytest.raises(InvalidArgumentError, match="decorates a function, not int"):
        task(42)
    partial = functools.partial(print, "x")
    with pytest.raises(InvalidArgumentError, match="no __name__"):
        task(partial)
    assert task(name="unit.partial")(partial).name == "unit.partial"


def test_task_options_at_their_bounds_are_accepted():
    t = task(
        name="unit.bounds",
        queue="a-Z_0.9:/x",
        priority=-(2**31),
        max_attempts=2**31 - 1,
        backoff_base_s=1,
        backoff_max_s=1,
        backoff_jitter=0,
        timeout_s=0.001,
    )(lambda: None)
    assert (t.priority, t.max_attempts, t.backoff_jitter) == (-(2**31), 2**31 - 1, 0)
    assert task(name="unit.bounds_1", backoff_jitter=1)(lambda: None).backoff_jitter == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "task must be a @task function, its Task, or a task name, not NoneType"),
        (3, "not int"),
        ("a\x00b", "task 'a\\\\x00b' contains"),
        ("", "task is empty"),
        ("\udcff", "surrogate"),
    ],
)
def test_task_name_refuses_what_is_not_a_task(value, fragment):
    from scheduler.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=fragment):
        task_name(value)
