"""Job arguments with nested values (lists, dicts) take the fast check, which must accept and
refuse exactly what the full check (``json_problems``) does; and they reach the table intact.
"""

import asyncio
import json
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import arguments, connections, enqueue, enqueue_many
from scheduler.arguments import args_json, json_problems
from scheduler.errors import InvalidArgumentError
from scheduler.service import migrate
from scheduler.settings import Settings
from tests import pooler, servers

REALISTIC = {
    "user_id": 123456,
    "email": "someone@example.com",
    "template": "welcome",
    "locale": "en-GB",
    "tags": ["a", "b"],
    "amount": 12.5,
    "meta": {"source": "signup", "ids": [1, 2, 3], "flags": {"beta": True, "ref": None}},
}

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.just(2**13_500),  # over _INT_BITS_MAX, yet str() works: refused by both checks
    st.floats(),  # NaN and infinities included
    st.text(max_size=6),  # NUL, lone surrogates and non-BMP characters included
    st.binary(max_size=2),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=2).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),
    ),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _values, max_size=4))
def test_nested_args_fast_check_agrees_with_the_full_check(args):
    problems = list(json_problems(args, ("args",)))
    try:
        text = args_json(args)
    except InvalidArgumentError:
        assert problems
    else:
        assert not problems
        assert json.loads(text) == json.loads(json.dumps(args))


def test_realistic_nested_args_do_not_take_the_full_check(monkeypatch):
    """The full check walks the value with a generator per node (about 20 µs for a few keys
    and a list, 4 times the encoder): plain nested arguments must not need it."""

    def full_check(*_a, **_k):
        raise AssertionError("json_problems was called for plain arguments")

    monkeypatch.setattr(arguments, "json_problems", full_check)
    assert json.loads(args_json(REALISTIC)) == REALISTIC
    monkeypatch.undo()
    assert json.loads(args_json({"emoji": "🙂"})) == {"emoji": "🙂"}  # a false alarm: full check


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"meta": {"ids": [1, "x\x00"]}}, r"args\.meta\.ids\[1\]: contains \\u0000"),
        ({"tags": ["\udcff"]}, r"args\.tags\[0\]: contains an unpaired surrogate"),
        ({"tags": [float("nan")]}, r"args\.tags\[0\]: nan is not valid JSON"),
        ({"tags": [("a", "b")]}, r"args\.tags\[0\]: a tuple is not JSON"),
        ({"meta": {1: "a"}}, r"args\.meta\.1: key 1 is a int"),
        ({"meta": {"n": 2**13_500}}, r"args\.meta\.n: an integer of 13,501 bits"),
        ({"meta": {"k\x00": 1}}, r"args\.meta\.k\x00: key contains \\u0000"),
    ],
)
def test_hostile_nested_args_are_named(args, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment):
        args_json(args)


def test_recursive_args_are_refused():
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(InvalidArgumentError, match=r"args\.x\[0\]: recursive structure"):
        args_json({"x": loop})


def test_nested_args_reach_the_table_intact(db, db_url):
    with psycopg.connect(db_url) as conn:
        single = enqueue("test_enqueue_speed.noop", args=REALISTIC, connection=conn)
        many = enqueue_many("test_enqueue_speed.noop", [REALISTIC, {"x": [1]}], connection=conn)
        conn.commit()
    rows = dict(db.execute("SELECT id, args FROM scheduler.jobs").fetchall())
    assert rows == {single: REALISTIC, many[0]: REALISTIC, many[1]: {"x": [1]}}


# ---- prepared statements on the default enqueue pool, never behind a transaction pooler ------


@pytest.fixture
def default_url():
    """Sets the default URL for the test; closes the pools afterwards."""
    yield connections.set_default_database_url
    connections.close_default_pools()
    connections.set_default_database_url(None)


def _prepared_inserts(url: str) -> int:
    with connections._pools[url].connection() as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%INSERT INTO%'",
            prepare=False,
        ).fetchone()[0]


def test_default_pool_prepares_on_a_direct_server(db, db_url, default_url):
    default_url(db_url)
    ids = [enqueue("test_enqueue_speed.noop", args={"n": n}) for n in range(3)]
    assert _prepared_inserts(db_url) == 1
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == len(set(ids)) == 3


@pytest.fixture(scope="module")
def bounced_db() -> Iterator[tuple[servers.Cluster, pooler.PgBouncer, str]]:
    """A migrated database on a PostgreSQL 15 cluster behind a transaction-mode PgBouncer
    with one server connection (every client shares it)."""
    if servers.bin_dir("15") is None or not pooler.installed():
        pytest.skip("needs PostgreSQL 15 and PgBouncer")
    with servers.cluster("15") as cluster:
        asyncio.run(migrate(cluster.url(), Settings()))
        with pooler.pgbouncer(cluster, "transaction", pool_size=1) as bouncer:
            yield cluster, bouncer, bouncer.url("postgres")


def _count(cluster: servers.Cluster) -> int:
    with psycopg.connect(cluster.url()) as conn:
        return conn.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0]


def test_default_pool_does_not_prepare_behind_a_transaction_pooler(bounced_db, default_url):
    cluster, _, url = bounced_db
    before = _count(cluster)
    default_url(url)
    ids = [enqueue("test_enqueue_speed.noop", args={"n": n}) for n in range(8)]
    ids += enqueue_many("test_enqueue_speed.noop", [{"n": 8}, {"n": 9}])
    assert connections._pools[url].kwargs["prepare_threshold"] is None
    assert _count(cluster) - before == len(set(ids)) == 10


def test_a_pooler_the_check_missed_stops_the_preparing(bounced_db, default_url, monkeypatch):
    """Another client of the pooler's only server session already holds a statement named
    like ours: the INSERT fails before it runs, and is run again unprepared, once."""
    cluster, _, url = bounced_db
    monkeypatch.setattr(connections, "_prepare_threshold", lambda *_: 0)  # the check missed
    before = _count(cluster)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as other:
        other.execute("DEALLOCATE ALL")
        other.execute('PREPARE "_pg3_0" AS SELECT 1')
        default_url(url)
        ids = [enqueue("test_enqueue_speed.noop", args={"n": n}) for n in range(3)]
        other.execute("DEALLOCATE ALL")
    assert connections._pools[url].kwargs["prepare_threshold"] is None
    assert _count(cluster) - before == len(set(ids)) == 3
