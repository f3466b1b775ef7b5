"""scheduler.supervision: a crashing loop is restarted; one that keeps crashing stops the
replica and reports why (pure asyncio, no database)."""

from __future__ import annotations

import asyncio

from scheduler import metrics
from scheduler.supervision import Supervisor


def _crashes(name: str) -> float:
    return metrics.LOOP_CRASHES.labels(name)._value.get()


def test_a_loop_that_crashes_is_restarted_and_its_work_goes_on():
    done: list[int] = []

    async def scenario() -> Supervisor:
        stop = asyncio.Event()
        supervisor = Supervisor(stop, first_delay_s=0.01)
        attempts = {"n": 0}

        async def body() -> None:
            attempts["n"] += 1
            if attempts["n"] <= 3:
                raise RuntimeError(f"crash {attempts['n']}")
            done.append(attempts["n"])

        before = _crashes("t-restart")
        await asyncio.wait_for(supervisor.run("t-restart", body), 5)
        assert _crashes("t-restart") - before == 3
        assert not stop.is_set()
        return supervisor

    supervisor = asyncio.run(scenario())
    assert done == [4] and supervisor.health() is None


def test_a_loop_that_keeps_crashing_stops_the_replica_and_says_why():
    async def scenario() -> tuple[Supervisor, asyncio.Event, list[str]]:
        stop = asyncio.Event()
        supervisor = Supervisor(stop, max_crashes=4, window_s=60, first_delay_s=0.01)
        other_ran: list[str] = []

        async def broken() -> None:
            raise ValueError("always")

        async def other() -> None:
            await stop.wait()  # a healthy loop: ends when the replica stops
            other_ran.append("stopped")

        healthy = supervisor.start("t-healthy", other)
        await asyncio.wait_for(supervisor.run("t-broken", broken), 5)
        await asyncio.wait_for(healthy, 5)
        return supervisor, stop, other_ran

    supervisor, stop, other_ran = asyncio.run(scenario())
    assert stop.is_set() and other_ran == ["stopped"]
    assert supervisor.health() == "loop t-broken crashed 4 times in 60 s; last: ValueError: always"


def test_crashes_outside_the_window_do_not_add_up():
    async def scenario() -> Supervisor:
        stop = asyncio.Event()
        supervisor = Supervisor(stop, max_crashes=2, window_s=0.05, first_delay_s=0.1)
        attempts = {"n": 0}

        async def body() -> None:
            attempts["n"] += 1
            if attempts["n"] <= 3:  # three crashes, each more than window_s after the last
                raise RuntimeError("now and then")

        await asyncio.wait_for(supervisor.run("t-window", body), 5)
        return supervisor

    assert asyncio.run(scenario()).health() is None
