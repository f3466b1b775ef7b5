"""YAML for schedules files: parsed with the line of every key, and measured before it is
built, so hostile documents are refused fast (see :mod:`scheduler.config` for the bounds).

* :data:`Loader` is PyYAML's safe loader (libyaml's when PyYAML has it, else the
  pure-Python one; both compose the same nodes) whose mappings (:class:`LineMapping`) and
  lists (:class:`LineSequence`) remember the line of each key and item and the duplicate
  keys, and whose scalar constructors raise ``ConstructorError`` with the node's line instead
  of a ValueError or KeyError (``!!int abc``, the date ``2025-13-45``).
* :func:`prescan` counts the parser's events (no recursion, nothing composed) and
  :func:`measure` walks the composed node graph once per distinct node, so a document that
  expands through aliases beyond :data:`MAX_VALUES` values or :data:`MAX_DEPTH` levels, or
  into itself, is refused before anything is built from it.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import yaml
from yaml.constructor import ConstructorError

MAX_VALUES = 1_000_000  # keys, values, lists and mappings, aliases expanded
MAX_DEPTH = 100  # nested lists and mappings, aliases expanded (the file itself is 1)
INT_LITERAL_MAX = 1_000  # characters of an integer literal


class LineMapping(dict):  # type: ignore[type-arg]
    line: int  # 1-based, like every line below
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]  # (key, line, line of the first occurrence)


class LineSequence(list):  # type: ignore[type-arg]
    line: int
    item_lines: list[int]


class PureLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember their line numbers."""


# The same constructors on libyaml's parser (PyYAML's own C binding, several times faster),
# when PyYAML was built with it; the pure-Python parser otherwise. Both compose the same nodes.
Loader: type[yaml.SafeLoader | yaml.CSafeLoader] = PureLoader
if getattr(yaml, "CSafeLoader", None) is not None:

    class _CLoader(yaml.CSafeLoader):
        """CSafeLoader whose mappings and sequences remember their line numbers."""

    Loader = _CLoader


def _construct_mapping(
    loader: yaml.SafeLoader | yaml.CSafeLoader, node: yaml.MappingNode
) -> Iterator[LineMapping]:
    data = LineMapping()
    data.line, data.key_lines, data.duplicates = node.start_mark.line + 1, {}, []
    yield data
    explicit = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # '<<' merges: merged pairs come first and may be overridden
    merged = len(node.value) - explicit
    from_merge: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            context, problem = "while constructing a mapping", "found unhashable key"
            raise ConstructorError(context, node.start_mark, problem, key_node.start_mark) from None
        line = key_node.start_mark.line + 1
        if index < merged:
            from_merge.add(key)
        else:
            if key in data and key not in from_merge:
                data.duplicates.append((key, line, data.key_lines[key]))
            from_merge.discard(key)
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = line


def _construct_sequence(
    loader: yaml.SafeLoader | yaml.CSafeLoader, node: yaml.SequenceNode
) -> Iterator[LineSequence]:
    data = LineSequence()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


def _guarded(tag: str, build: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``build`` (a scalar constructor of SafeConstructor) raising ``ConstructorError`` with
    the node's line instead of the ValueError, KeyError... it raises on ``!!int abc``,
    ``!!bool maybe`` or the date ``2025-13-45``; integer literals longer than
    ``INT_LITERAL_MAX`` characters are refused unbuilt (a long ``1:2:3...`` base-60 literal
    takes quadratic time, and Python cannot print a decimal of over 4,300 digits)."""
    kind = "!!" + tag.rsplit(":", 1)[-1]

    def construct(loader: Any, node: Any) -> Any:
        problem = None
        if kind == "!!int" and isinstance(node.value, str) and len(node.value) > INT_LITERAL_MAX:
            problem = f"an integer of {len(node.value):,} characters is too large"
            problem += f" (at most {INT_LITERAL_MAX:,})"
        else:
            try:
                return build(loader, node)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                problem = f"cannot read {short(node.value)} as {kind}"
                problem += f": {exc}" if isinstance(exc, ValueError) else ""
                problem += "; quote it to keep it text" if kind == "!!timestamp" else ""
        raise ConstructorError(None, None, problem, node.start_mark)

    return construct


_loaders: set[type[yaml.SafeLoader | yaml.CSafeLoader]] = {PureLoader, Loader}
for _cls in _loaders:
    _cls.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
    _cls.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
    for _kind in ("null", "bool", "int", "float", "binary", "timestamp", "str"):
        _tag = f"tag:yaml.org,2002:{_kind}"
        _cls.add_constructor(_tag, _guarded(_tag, yaml.SafeLoader.yaml_constructors[_tag]))
del _cls, _kind, _tag, _loaders

_COUNTED = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
_OPENING = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSING = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class _EventParser(Protocol):
    """The part of PyYAML's parser API :func:`prescan` uses: both parsers have it (the stubs
    leave the pure-Python parser's ``get_event`` untyped)."""

    def check_event(self, *choices: type[yaml.Event]) -> bool: ...
    def get_event(self) -> yaml.Event | None: ...
    def dispose(self) -> None: ...


def prescan(text: str, loader: type[yaml.SafeLoader | yaml.CSafeLoader]) -> tuple[int, str] | None:
    """``(line, reason)`` if the file has more than MAX_VALUES nodes or nests deeper than
    MAX_DEPTH, found from the parser's events alone (no recursion, nothing composed, stops at
    the first excess); YAML syntax errors raise ``yaml.YAMLError``."""
    parser: _EventParser = loader(text)
    try:
        depth = values = 0
        while not parser.check_event(yaml.StreamEndEvent):
            event = parser.get_event()
            if isinstance(event, _CLOSING):
                depth -= 1
            elif isinstance(event, _COUNTED):  # only these raise the counts
                values += 1
                depth += isinstance(event, _OPENING)
                if depth > MAX_DEPTH or values > MAX_VALUES:
                    line = 0 if event.start_mark is None else event.start_mark.line + 1
                    return line, _TOO_DEEP if depth > MAX_DEPTH else _TOO_MANY
        return None
    finally:
        parser.dispose()


_TOO_DEEP = f"the document nests lists and mappings deeper than {MAX_DEPTH} levels"
_TOO_MANY = f"the document has more than {MAX_VALUES:,} values (keys, values, lists, mappings)"


def measure(root: yaml.Node) -> tuple[int, str] | None:
    """``(line, reason)`` if ``root`` expands through its aliases to more than MAX_VALUES
    nodes, deeper than MAX_DEPTH, or into itself; else None. Composed YAML shares an anchored
    node between its aliases: the size and depth of each distinct list and mapping are
    computed once (an iterative post-order walk; scalars count 1), so this is linear in the
    file however large the expansion."""
    size: dict[yaml.Node, int] = {}
    depth: dict[yaml.Node, int] = {}
    open_: set[yaml.Node] = set()  # the current path: a child among them is a cycle
    stack = [root]
    while stack:
        node = stack[-1]
        if node in open_:  # its children are done: finish it
            stack.pop()
            open_.discard(node)
            children = _collections(node)
            size[node] = _size = _scalars(node) + sum(size[child] for child in children) + 1
            depth[node] = _depth = 1 + max((depth[child] for child in children), default=0)
            if _size > MAX_VALUES:
                reason = f"the document expands to more than {MAX_VALUES:,} values through"
                return node.start_mark.line + 1, reason + " aliases (YAML anchors '&' and '*')"
            if _depth > MAX_DEPTH:
                return node.start_mark.line + 1, _TOO_DEEP + " once its aliases are expanded"
        elif node in size:  # shared by an alias, measured already
            stack.pop()
        else:
            open_.add(node)
            for child in _collections(node):
                if child in open_:
                    reason = "this value contains itself through an alias (a recursive"
                    return child.start_mark.line + 1, reason + " structure), which JSON cannot hold"
                if child not in size:
                    stack.append(child)
    return None


def _collections(node: yaml.Node) -> list[yaml.Node]:
    """The lists and mappings directly in ``node`` (keys and values), repeats included."""
    if isinstance(node, yaml.SequenceNode):
        return [child for child in node.value if not isinstance(child, yaml.ScalarNode)]
    if isinstance(node, yaml.MappingNode):
        parts = (part for pair in node.value for part in pair)
        return [part for part in parts if not isinstance(part, yaml.ScalarNode)]
    return []


def _scalars(node: yaml.Node) -> int:
    if isinstance(node, yaml.SequenceNode):
        return sum(isinstance(child, yaml.ScalarNode) for child in node.value)
    if isinstance(node, yaml.MappingNode):
        return sum(isinstance(p, yaml.ScalarNode) for pair in node.value for p in pair)
    return 0


def line_of(node: Any, path: tuple[Any, ...], default: int) -> int:
    """Line of the deepest key or item along ``path`` that the loader recorded."""
    line = default
    for part in path:
        if isinstance(node, LineMapping) and part in node.key_lines:
            line, node = node.key_lines[part], node[part]
        elif isinstance(node, LineSequence) and isinstance(part, int) and 0 <= part < len(node):
            line, node = node.item_lines[part], node[part]
        else:
            break
    return line


class _Repr(reprlib.Repr):
    """reprlib, which bounds containers, also for the loader's dict and list subclasses."""

    repr_LineMapping = reprlib.Repr.repr_dict
    repr_LineSequence = reprlib.Repr.repr_list


_REPR = _Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def short(value: Any) -> str:
    """A repr of ``value`` of at most 60 characters, in time bounded by that (a value may be
    a megabyte of text or a list of a million items); NUL and surrogates appear escaped."""
    text = repr(value[:61]) if isinstance(value, str) else _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


