"""Cron expressions parsed into fields: the grammar, checked field by field, and the values
each field matches (:class:`CronFields`). The zone, the DST rules and the fire times are
:mod:`scheduler.cron`, whose :class:`~scheduler.cron.Cron` parses its expression here.

Grammar
-------
* Five fields ``minute hour day-of-month month day-of-week`` (ranges 0-59, 0-23, 1-31, 1-12,
  0-7 with 0 and 7 both Sunday), or six fields with the **seconds field first** (0-59), as in
  Quartz, Spring and node-cron: ``*/5 * * * * *`` fires every 5 seconds, ``30 0 9 * * *`` at
  09:00:30. Four or fewer fields, or seven or more, are errors.
* Each field is a comma-separated list of ``*``, ``*/step``, ``n``, ``a-b``, ``a-b/step`` or
  ``a/step``. Month names ``JAN``..``DEC`` and day names ``SUN``..``SAT`` (any case) are
  allowed in their fields. A range must not run backwards (``FRI-MON`` is an error, as in
  cronie); a step must be between 1 and the number of values in the field.
* ``a/step`` means ``a-<field maximum>/step``. So ``59/15`` in the minute field is minute 59
  only (once an hour at :59), which is what croniter 7.0.0 computes (older croniter releases
  read it as :00/:15/:30/:45; cronie's parser, src/entry.c ``get_range``, rejects it).
  Likewise ``10/15`` is :10, :25, :40, :55.
* Macros: ``@yearly`` = ``@annually`` = ``0 0 1 1 *``, ``@monthly`` = ``0 0 1 * *``,
  ``@weekly`` = ``0 0 * * 0``, ``@daily`` = ``@midnight`` = ``0 0 * * *``, ``@hourly`` =
  ``0 * * * *`` (any case). ``@reboot`` and the Quartz/Jenkins extensions ``L``, ``W``, ``#``, ``?`` and
  ``H`` are not supported.
* An expression that can never fire (``0 0 30 2 *``, ``0 0 31 4 *``) is rejected: validity is
  checked by computing a fire time (croniter's 50-year bounded search), not with
  ``croniter.is_valid``, which accepts them.

Fields are parsed here and handed to croniter (pinned to 7.0.x) as explicit value lists, so
croniter quirks such as ``5-5`` meaning "every minute" do not leak through.

Day of month and day of week (Vixie cron, crontab(5))
------------------------------------------------------
When both fields are restricted the day matches if **either** matches (``0 0 1,15 * MON``: the
1st, the 15th and every Monday). When either field starts with ``*`` (``*``, ``*/2``) the two
are **ANDed**: ``0 0 */2 * 1`` fires on odd days of the month that are Mondays. This is the
``DOM_STAR``/``DOW_STAR`` test of Vixie cron / cronie ``find_jobs()``; croniter's default
would OR ``*/2`` with Monday, so we pass it ``day_or=False`` in that case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CronError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}

_ELEMENT = re.compile(r"^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$")
_EXTENSION = re.compile(r"[#?]|^(?:[LlWwHh]|[Ll][Ww]|\d+[Ww]|[Ll]-?\d*|[Hh]\(.*)$")


@dataclass(frozen=True)
class _Spec:
    name: str
    low: int
    high: int  # highest value accepted in the text (7 for day-of-week)
    top: int  # highest distinct value (6 for day-of-week); '*' and 'a/step' stop here
    names: dict[str, int] | None = None
    kind: str = ""

    @property
    def size(self) -> int:
        return self.top - self.low + 1


_SECONDS = _Spec("second", 0, 59, 59)
_MINUTES = _Spec("minute", 0, 59, 59)
_HOURS = _Spec("hour", 0, 23, 23)
_DOM = _Spec("day-of-month", 1, 31, 31)
_MONTH = _Spec("month", 1, 12, 12, _MONTHS, "month")
_DOW = _Spec("day-of-week", 0, 7, 6, _DAYS, "day")


def _extension_hint(element: str) -> str:
    if _EXTENSION.search(element):
        return " (the Quartz/Jenkins extensions L, W, #, ? and H are not supported)"
    return ""


def _value(token: str, spec: _Spec, element: str) -> int:
    if token.isdigit():
        value = int(token)
    elif spec.names is not None and token.lower() in spec.names:
        return spec.names[token.lower()]
    else:
        what = (
            f"a number or a {spec.kind} name (e.g. {next(iter(spec.names)).upper()})"
            if spec.names
            else "a number"
        )
        raise CronError(f"{spec.name} field: {token!r} is not {what}{_extension_hint(element)}")
    if not spec.low <= value <= spec.high:
        raise CronError(f"{spec.name} field: value {value} is out of range {spec.low}-{spec.high}")
    return value


def _parse_field(text: str, spec: _Spec) -> frozenset[int]:
    values: set[int] = set()
    for element in text.split(","):
        match = _ELEMENT.match(element)
        if match is None:
            if not element:
                raise CronError(f"{spec.name} field {text!r} has an empty list element")
            raise CronError(
                f"{spec.name} field: {element!r} is not a value, range or "
                f"step{_extension_hint(element)}"
            )
        star, first, last, step_text = match.groups()
        step = 1
        if step_text is not None:
            step = int(step_text)
            if not 1 <= step <= spec.size:
                raise CronError(
                    f"{spec.name} field: step {step} in {element!r} must be between "
                    f"1 and {spec.size}"
                )
        if star:
            start, end = spec.low, spec.top
        else:
            start = _value(first, spec, element)
            if last is not None:
                end = _value(last, spec, element)
                if start > end:
                    raise CronError(
                        f"{spec.name} field: range {element!r} runs backwards "
                        f"({start} > {end}); split it into a list"
                    )
            elif step_text is not None:
                start = start % 7 if spec is _DOW else start
                end = spec.top
            else:
                end = start
        values.update(v % 7 if spec is _DOW else v for v in range(start, end + 1, step))
    return frozenset(values)


def _render(values: frozenset[int], spec: _Spec, starred: bool) -> str:
    if starred and len(values) == spec.size:
        return "*"
    return ",".join(str(v) for v in sorted(values))


@dataclass(frozen=True)
class CronFields:
    """The values each field of a :class:`Cron` matches (day of week: 0 = Sunday), and
    whether day of month and day of week are ORed (Vixie cron, see the module docstring).
    ``seconds`` is ``{0}`` for the 5-field form."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    day_or: bool


def parse_cron(expression: str) -> tuple[str, CronFields, bool, bool]:
    """Parse a stripped expression (5 fields, 6 with seconds first, or a macro): the
    normalised expression handed to croniter (explicit value lists), its :class:`CronFields`,
    whether it has a seconds field and whether it is fixed-time (see :mod:`scheduler.cron`).

    Raises:
        CronError: every field's problem, joined with ``"; "``.
    """
    text = expression
    if not text:
        raise CronError("the expression is empty")
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            raise CronError(f"unknown macro; supported: {', '.join(MACROS)}")
        text = macro
    if any(ch.isspace() and ch not in " \t" for ch in text):
        raise CronError("fields must be separated by spaces or tabs only")
    fields = text.split()
    if len(fields) not in (5, 6):
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or "
            f"6 with seconds first, got {len(fields)}"
        )
    has_seconds = len(fields) == 6
    specs = ([_SECONDS] if has_seconds else []) + [_MINUTES, _HOURS, _DOM, _MONTH, _DOW]
    errors: list[str] = []
    rendered: list[str] = []
    parsed: list[frozenset[int]] = [] if has_seconds else [frozenset({0})]
    for field, spec in zip(fields, specs, strict=True):
        try:
            parsed.append(_parse_field(field, spec))
            rendered.append(_render(parsed[-1], spec, field.startswith("*")))
        except CronError as exc:
            errors.append(str(exc))
    if errors:
        raise CronError("; ".join(errors))
    minute, hour, dom, dow = fields[-5], fields[-4], fields[-3], fields[-1]
    fixed_time = not (minute.startswith("*") or hour.startswith("*"))
    day_or = not (dom.startswith("*") or dow.startswith("*"))
    seconds, minutes, hours, days_of_month, months, days_of_week = parsed
    cron_fields = CronFields(
        seconds, minutes, hours, days_of_month, months, days_of_week, day_or=day_or
    )
    return " ".join(rendered), cron_fields, has_seconds, fixed_time
