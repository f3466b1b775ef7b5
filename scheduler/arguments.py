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
from .limits import RESULT_MAX, shown

JsonPath = tuple[str | int, ...]
_INT_BITS_MAX = 13_000  # ~3,900 digits: below Python's int-to-str limit (4,300 by default)


def json_problems(
    value: Any, path: JsonPath, _active: set[int] | None = None
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


_LEAVES = frozenset((str, bool, float, type(None)))  # int: its size is checked


def _plain(value: Any) -> bool:
    """True when ``value`` is built only of the exact types the encoder writes as they are
    (dicts with ``str`` keys, lists, ``str``, ``int`` of at most ``_INT_BITS_MAX`` bits,
    ``float``, ``bool``, ``None``): no tuple, set, subclass or non-string key, which the
    encoder would convert or which :func:`json_problems` names. Caller checks NaN, NUL,
    surrogates and recursion (the encoder refuses the first and the last)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item):
                return False
        return True
    if kind is list:
        for item in value:
            if not _plain(item):
                return False
        return True
    if kind is int:
        bits: int = value.bit_length()
        return bits <= _INT_BITS_MAX
    return kind in _LEAVES


def _checked_args(args: Mapping[str, Any] | None, what: str = "args") -> tuple[dict[str, Any], str]:
    """Validated copy of ``args`` and its JSON text.

    Fast path (job arguments made of dicts, lists, strings, numbers, booleans and nulls, at
    any depth): the encoder refuses NaN, Infinity and recursion, :func:`_plain` refuses every
    other type, and the JSON text itself shows the two things left, ``\\u0000`` and
    surrogates (escaped as ``\\ud...``; a false alarm, e.g. an emoji, only falls back to the
    full check). It accepts only what :func:`json_problems` accepts (subclasses and the
    like take the full check), in 5-10 µs for six keys and a list instead of 20. Anything
    else is checked by :func:`json_problems`, which names every problem with its path (the
    first ten of them).
    """
    if args is None:
        return {}, "{}"
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(
            f"{what} must be a mapping of keyword arguments, not {type(args).__name__} "
            f"{shown(args)}"
        )
    checked = dict(args)
    try:
        text = _dumps(checked)  # ValueError: NaN, recursion, a huge int; TypeError: a type
        if _plain(checked) and "\\u0000" not in text and "\\ud" not in text:
            return checked, text
    except (ValueError, TypeError, RecursionError):
        pass  # the full check names the problem
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


def result_json(value: Any) -> tuple[str | None, str | None]:
    """A handler's return value as ``(JSON text, None)``, ``(None, None)`` for ``None``, or
    ``(None, reason)`` when it cannot be stored: not JSON (the reason names the first
    problems, as :func:`json_problems` finds them) or longer than
    :data:`~scheduler.limits.RESULT_MAX` characters of JSON text. Never raises."""
    if value is None:
        return None, None
    try:
        text = _dumps(value)
        if not (_plain(value) and "\\u0000" not in text and "\\ud" not in text):
            found = list(itertools.islice(json_problems(value, ("result",)), 3))
            if found:
                return None, "; ".join(f"{dotted_path(p)}: {r}" for p, r in found)
    except (ValueError, TypeError, RecursionError):
        try:
            found = list(itertools.islice(json_problems(value, ("result",)), 3))
        except RecursionError:
            found = []
        reasons = "; ".join(f"{dotted_path(p)}: {r}" for p, r in found)
        return None, reasons or "result is not JSON"
    if len(text) > RESULT_MAX:
        return None, f"result is {len(text):,} characters of JSON, more than {RESULT_MAX:,}"
    return text, None
