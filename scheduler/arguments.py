"""Job arguments as JSON: checked against what JSON and PostgreSQL ``jsonb`` can store, and
encoded once.

Used by every way a job's arguments reach the database: ``schedule_at`` / ``enqueue`` and the
bulk calls (:mod:`scheduler.jobs`), and the ``args`` of a schedules file
(:mod:`scheduler.config`). A problem raises :class:`~scheduler.errors.InvalidArgumentError`
naming its path (``args.to[0]``) and the reason, before any SQL runs.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from psycopg.types.json import Jsonb

from .errors import InvalidArgumentError
from .limits import shown

JsonPath = tuple[str | int, ...]
_INT_BITS_MAX = 13_000  # ~3,900 digits: below Python's int-to-str limit (4,300 by default)


def json_problems(
    value: Any, path: (), _active: set[int] | None = None
) -> Iterator[tuple[JsonPath, str]]:
    """Yield ``(path, reason)`` for every part of ``value`` that JSON or PostgreSQL ``jsonb``
    cannot store: NaN/Infinity, strings or keys with ``\\u0000`` or unpaired surrogates,
    non-string keys, dates/timestamps (YAML reads unquoted ones), sets, bytes, other types."""
    active = set() if _active is None else _active
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if value.bit_length() > _INT_BITS_MAX:  # str() of it would raise ValueError
            yield path, f"an integer of {value.bit_length():,} bits is too large to store"
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value!r} is not valid JSON (PostgreSQL jsonb rejects NaN and Infinity)"
    elif isinstance(value, str):
        if "\x00" in value:
            yield path, "contains \\u0000, which PostgreSQL jsonb rejects"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            yield path, "contains an unpaired surrogate, which PostgreSQL jsonb rejects"
    elif isinstance(value, (list, dict)):
        if id(value) in active:
            yield path, "recursive structure (a YAML alias used inside its own anchor)"
            return
        active.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                kind = type(key).__name__
                yield (*path, str(key)), f"key {key!r} is a {kind}; JSON keys must be strings"
                continue
            if isinstance(key, str):
                for _, reason in json_problems(key, (), active):
                    yield (*path, key), f"key {reason}"
            yield from json_problems(item, (*path, key), active)
        active.discard(id(value))
    elif isinstance(value, (_dt.date, _dt.time)):  # datetime is a date
        kind = type(value).__name__
        yield path, f"{value.isoformat()} is a {kind}, not JSON; quote it in YAML, or pass a string"
    elif isinstance(value, (set, frozenset)):
        yield path, "a set is not JSON; use a list"
    elif not isinstance(value, float):
        yield path, f"a {type(value).__name__} is not JSON"


def dotted_path(path: tuple[Any, ...]) -> str:
    """``("args", "to", 0)`` → ``"args.to[0]"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # built once, not per call


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


_SCALARS = (str, int, bool, type(None))


def _checked_args(args: Mapping[str, Any] | None, what: str = "args") -> tuple[dict[str, Any], str]:
    """Validated copy of ``args`` and its JSON text.

    Fast path (most job arguments: one level of strings, numbers, booleans, nulls): the JSON
    text itself shows the two things the encoder lets through, ``\\u0000`` and surrogates
    (escaped as ``\\ud...``; a false alarm only falls back to the full check). Anything else
    is checked by :func:`json_problems`, which names every problem with its path (the first
    ten of them).
    """
    if args is None:
        return {}, "{}"
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(
            f"{what} must be a mapping of keyword arguments, not {type(args).__name__} "
            f"{shown(args)}"
        )
    checked = dict(args)
    if all(type(k) is str for k in checked) and all(
        type(v) in _SCALARS or (type(v) is float and math.isfinite(v)) for v in checked.values()
    ):
        try:
            text = _dumps(checked)
        except ValueError:  # an int too long for str(): the full check names it
            pass
        else:
            if "\\u0000" not in text and "\\ud" not in text:
                return checked, text
    try:
        found = list(itertools.islice(json_problems(checked, (what,)), 11))
        text = "" if found else _dumps(checked)
    except RecursionError:
        raise InvalidArgumentError(f"{what} is nested too deeply to be stored") from None
    if found:
        problems = [f"{dotted_path(p)}: {r}" for p, r in found[:10]]
        more = "; ..." if len(found) > 10 else ""
        raise InvalidArgumentError(
            f"{what} cannot be stored as JSON: " + "; ".join(problems) + more
        )
    return checked, text


def args_json(args: Mapping[str, Any] | None, what: str = "args") -> str:
    """:func:`to_jsonb`'s checks, returning the JSON text (for ``COPY``); same errors."""
    return _checked_args(args, what)[1]


def to_jsonb(args: Mapping[str, Any] | None) -> Jsonb:
    """Validate job arguments and wrap them for a jsonb parameter.

    Raises:
        InvalidArgumentError: ``args`` is not a mapping, or holds a value JSON or PostgreSQL
            ``jsonb`` cannot store (see :func:`json_problems`; the first ten problems are
            listed with their paths), or is nested too deeply. It is also a ``ValueError``
            and a ``TypeError``.
    """
    checked, text = _checked_args(args)
    return Jsonb(checked, dumps=lambda _: text)  # encoded once, while checking
