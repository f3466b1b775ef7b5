"""scheduler.retry.Backoff: capped exponential backoff with jitter (pure)."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from scheduler.retry import Backoff


def test_defaults() -> None:
    assert Backoff() == Backoff(base_s=1.0, max_s=3600.0, jitter=0.1)


def test_delay_doubles_per_attempt_without_jitter() -> None:
    backoff = Backoff(base_s=2.0, max_s=10_000.0, jitter=0.0)
    assert [backoff.delay_s(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def test_delay_is_capped_at_max_s() -> None:
    backoff = Backoff(base_s=1.0, max_s=60.0, jitter=0.0)
    assert [backoff.delay_s(n) for n in (6, 7, 8, 50)] == [32.0, 60.0, 60.0, 60.0]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(jitter=0.0).delay_s(100_000) == 3600.0
    assert Backoff(jitter=0.5).delay_s(10**9, random.Random(1)) <= 3600.0 * 1.5


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jitter_stays_within_its_bounds(jitter: float) -> None:
    backoff = Backoff(base_s=1.0, max_s=300.0, jitter=jitter)
    rand = random.Random(1234)
    for attempt in range(1, 15):
        nominal = min(300.0, 2.0 ** (attempt - 1))
        samples = [backoff.delay_s(attempt, rand) for _ in range(200)]
        assert all(nominal * (1 - jitter) <= d <= nominal * (1 + jitter) for d in samples)
        assert all(0.0 <= d <= 300.0 * (1 + jitter) for d in samples)
        assert max(samples) - min(samples) > nominal * jitter  # it does spread


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    backoff = Backoff(base_s=1.0, max_s=100.0, jitter=0.2)
    first = [backoff.delay_s(n, random.Random(42)) for n in range(1, 10)]
    again = [backoff.delay_s(n, random.Random(42)) for n in range(1, 10)]
    assert first == again
    assert first != [backoff.delay_s(n, random.Random(43)) for n in range(1, 10)]


def test_module_random_is_used_by_default() -> None:
    backoff = Backoff(base_s=10.0, max_s=100.0, jitter=0.1)
    state = random.getstate()
    try:
        random.seed(7)
        first = backoff.delay_s(1)
        random.seed(7)
        assert backoff.delay_s(1) == first and 9.0 <= first <= 11.0
    finally:
        random.setstate(state)


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_below_one_is_an_error(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        Backoff().delay_s(attempt)


@pytest.mark.parametrize("attempt", [1.0, "1", True])
def test_attempt_must_be_an_int(attempt: object) -> None:
    with pytest.raises(TypeError, match="attempt must be an int"):
        Backoff().delay_s(attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"base_s": 0}, ValueError),
        ({"max_s": -1}, ValueError),
        ({"jitter": 1.5}, ValueError),
        ({"jitter": -0.1}, ValueError),
        ({"base_s": math.nan}, ValueError),
        ({"max_s": math.inf}, ValueError),
        ({"base_s": "1"}, TypeError),
        ({"jitter": None}, TypeError),
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_numeric_column_values_become_floats() -> None:
    backoff = Backoff(Decimal("2.5"), 60, Decimal("0.0"))  # type: ignore[arg-type]
    assert (backoff.base_s, backoff.max_s, backoff.jitter) == (2.5, 60.0, 0.0)
    assert isinstance(backoff.delay_s(2), float) and backoff.delay_s(2) == 5.0
