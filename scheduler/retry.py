"""Pure retry backoff policy: how long a failed job waits before its next attempt.

Capped exponential backoff with proportional ("equal-ish") jitter, after Marc Brooker,
"Exponential Backoff And Jitter", AWS Architecture Blog, 2015
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/): the delay doubles
per attempt up to a cap, and a random factor spreads retries of jobs that failed together so
they do not hit the failing dependency in lock-step.

No clock is read here; the caller adds the delay to the database's ``now()``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Retry delay policy; every duration is in seconds.

    Attributes:
        base_s: delay after the first failed attempt, before jitter; > 0. Default 1.0.
        max_s: cap on the un-jittered delay; > 0. Default 3600.0 (one hour).
        jitter: relative spread in [0, 1]; the delay is multiplied by a uniform factor in
            ``[1 - jitter, 1 + jitter]``. Default 0.1 (±10 %). 0 disables jitter.

    Raises:
        ValueError: a value outside the ranges above (or NaN / infinite).
        TypeError: a value that is not a number (ints and Decimals are converted to float).
    """

    base_s: float = 1.0
    max_s: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("base_s", "max_s", "jitter"):
            value = getattr(self, name)
            if isinstance(value, (bool, str, bytes)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            try:
                number = float(value)  # also accepts Decimal from a numeric column
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, number)
        if self.base_s <= 0:
            raise ValueError(f"base_s must be > 0, got {self.base_s!r}")
        if self.max_s <= 0:
            raise ValueError(f"max_s must be > 0, got {self.max_s!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter!r}")

    def delay_s(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds to wait after ``attempt`` failed, before the next attempt runs.

        ``min(max_s, base_s * 2 ** (attempt - 1))`` multiplied by a uniform factor in
        ``[1 - jitter, 1 + jitter]``; so the result lies in ``[0, max_s * (1 + jitter)]``.

        Args:
            attempt: 1-based number of the attempt that just failed (1 = first run).
            rand: source of randomness (pass ``random.Random(seed)`` for reproducible
                delays); default: the module-level ``random`` generator.

        Raises:
            ValueError: ``attempt`` < 1.
            TypeError: ``attempt`` is not an int.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise TypeError(f"attempt must be an int, got {attempt!r}")
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (the attempt that just failed), got {attempt}")
        try:
            delay = min(self.max_s, math.ldexp(self.base_s, attempt - 1))
        except OverflowError:  # 2 ** (attempt - 1) beyond float range: long past the cap
            delay = self.max_s
        if self.jitter:
            uniform = (rand or random).uniform
            delay *= uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return min(max(delay, 0.0), self.max_s * (1.0 + self.jitter))
