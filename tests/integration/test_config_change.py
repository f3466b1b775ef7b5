"""A new leader that replaces schedules written from another file says so at error level only
while a live replica still runs that other file; an edited file rolled out (even to the only
replica) is an ordinary change, logged at info level."""

from __future__ import annotations

import asyncio

import psycopg
from structlog.testing import capture_logs

from scheduler.config import load_config_text
from scheduler.settings import Settings
from tests.conftest import running_replica, wait_until_async

V1 = "schedules:\n  - {name: digest, cron: '0 9 * * *', task: config_change.noop}\n"
V2 = "schedules:\n  - {name: digest, cron: '0 10 * * *', task: config_change.noop}\n"


async def _lead_once(db_url: str, text: str) -> list[dict]:
    """Run a replica with the file ``text`` until it has reconciled; its log events."""
    config = load_config_text(text, import_tasks=False)
    with capture_logs() as events:
        async with running_replica(db_url, Settings(), config) as replica:
            await wait_until_async(lambda: replica.elector.term is not None, 20)
            await wait_until_async(
                lambda: any(e["event"] == "schedules_reconciled" for e in events), 20
            )
    return events


def test_an_edited_file_on_the_only_replica_is_not_a_mismatch(db_url):
    async def scenario() -> list[dict]:
        await _lead_once(db_url, V1)
        return await _lead_once(db_url, V2)  # the same replica, restarted with an edit

    events = asyncio.run(scenario())
    assert not [e for e in events if e["event"] == "config_mismatch"]
    changed = [e for e in events if e["event"] == "schedules_file_changed"]
    assert changed and changed[0]["schedules"] == ["digest"] and changed[0]["log_level"] == "info"


def test_replicas_running_different_files_are_a_mismatch(db, db_url):
    async def scenario() -> list[dict]:
        await _lead_once(db_url, V1)
        v1_hash = load_config_text(V1, import_tasks=False).config_hash()
        with psycopg.connect(db_url, autocommit=True) as conn:  # another replica, alive, on V1
            conn.execute(
                "INSERT INTO scheduler.replicas (id, host, pid, version, queues, concurrency, "
                "config_hash) VALUES ('other:1:x', 'other', 1, 'v', '{default}', 10, %s)",
                [v1_hash],
            )
        return await _lead_once(db_url, V2)

    events = asyncio.run(scenario())
    mismatch = [e for e in events if e["event"] == "config_mismatch"]
    assert len(mismatch) == 1 and mismatch[0]["log_level"] == "error"
    assert mismatch[0]["replicas"] == ["other:1:x"]  # the new leader's report, naming it
