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

    from scheduler.jobs import args_json, json_problems

    problems = list(json_problems(args, ("args",)))
    try:
        text = args_json(args)
    except ValueError:
        assert problems
    else:
        assert not problems
        assert json.loads(text) == args
