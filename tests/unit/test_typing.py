"""The package is clean under ``mypy --strict`` (it ships ``py.typed``), and so is every
Python example of README.md and docs/*.md.

Doc examples: the fenced blocks whose info string is exactly ``python`` (``text``,
``pycon``, ``bash``, ``yaml``, ``sql``... are not checked). The blocks of one document are
joined, in order, into one module, and all documents are checked in one mypy run. A line
ending with the comment ``# mypy: error`` must get a mypy error (the docs show mistakes mypy
catches that way); every other line must get none. Failures name ``document:line``.

mypy runs in a subprocess from the repository root with its default cache
(``.mypy_cache``, git-ignored): a few seconds cold, well under one warm.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIN_EXPECTED_ERRORS = 2  # the docs show at least two mistakes mypy catches

_OPENING = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_EXPECTED = re.compile(r"#\s*mypy:\s*error\s*$")
_MYPY_LINE = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+):(?:\d+:)? (?P<kind>error|note): (?P<text>.*)$"
)


def _needs_mypy() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    options = ["--strict", "--no-pretty", "--no-error-summary", "--no-color-output"]
    command = [sys.executable, "-m", "mypy", *options, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


@dataclass(frozen=True)
class DocModule:
    """The ``python`` blocks of one document as one module."""

    doc: str  # the document's name in messages, e.g. "README.md"
    lines: list[tuple[int, str]]  # (line in the document, code) of each module line, in order

    @property
    def source(self) -> str:
        return "".join(code + "\n" for _, code in self.lines)

    @property
    def expected(self) -> set[int]:
        """Module lines (1-based) marked ``# mypy: error``."""
        return {n for n, (_, code) in enumerate(self.lines, 1) if _EXPECTED.search(code)}

    def where(self, module_line: int) -> str:
        """``doc:line`` of a module line (1-based)."""
        if 1 <= module_line <= len(self.lines):
            return f"{self.doc}:{self.lines[module_line - 1][0]}"
        return f"{self.doc}:(module line {module_line})"


def python_blocks(text: str) -> list[list[tuple[int, str]]]:
    """The fenced code blocks of a markdown ``text`` whose info string is exactly ``python``:
    per block, ``(line in the document, code)`` of each of its lines (the fence's indentation
    removed). An unclosed block runs to the end of the document, as in CommonMark."""
    blocks: list[list[tuple[int, str]]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _OPENING.match(lines[index])
        index += 1
        fence = opening["fence"] if opening else ""
        if not opening or (fence[0] == "`" and "`" in opening["info"]):
            continue
        indent = len(opening["indent"])
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        block: list[tuple[int, str]] = []
        while index < len(lines) and not closing.match(lines[index]):
            line = lines[index]
            strip = len(line) - len(line.lstrip(" "))
            block.append((index + 1, line[min(indent, strip) :]))
            index += 1
        index += 1  # the closing fence
        if opening["info"].strip() == "python":
            blocks.append(block)
    return blocks


def doc_module(doc: str, text: str) -> DocModule | None:
    """The ``python`` blocks of ``text`` joined in order, or None if it has none."""
    lines = [line for block in python_blocks(text) for line in block]
    return DocModule(doc, lines) if lines else None


@dataclass
class Findings:
    unexpected: list[str]  # "README.md:12: error: ..." of errors on unmarked lines
    missed: list[str]  # "README.md:30: ..." of marked lines without an error
    expected_count: int  # marked lines in all documents


def check_modules(modules: list[DocModule], tmp: Path) -> Findings:
    """Write each module to ``tmp`` and type-check them all in one ``mypy --strict`` run.
    Errors in other files (the package, checked by its own test) are left out; a mypy
    failure other than "errors found" fails the test with mypy's output."""
    by_name: dict[str, DocModule] = {}
    for number, module in enumerate(modules):
        stem = re.sub(r"\W", "_", module.doc.removesuffix(".md"))
        name = f"doc_{number}_{stem}.py"
        (tmp / name).write_text(module.source)
        by_name[name] = module
    findings = Findings([], [], sum(len(m.expected) for m in modules))
    if not by_name:
        return findings
    result = _mypy("--hide-error-context", *(str(tmp / name) for name in by_name))
    output = result.stdout + result.stderr
    if result.returncode not in (0, 1):
        pytest.fail(f"mypy failed (exit {result.returncode}):\n{output}")
    # by file name: errors mypy replays from its cache for an unchanged module carry the
    # path the module was checked at, another run's tmp directory
    errors: dict[str, dict[int, list[str]]] = {name: {} for name in by_name}
    for line in result.stdout.splitlines():
        found = _MYPY_LINE.match(line)
        if found and found["kind"] == "error" and (name := Path(found["path"]).name) in errors:
            errors[name].setdefault(int(found["line"]), []).append(found["text"])
    for name, module in by_name.items():
        for number, texts in sorted(errors[name].items()):
            if number not in module.expected:
                findings.unexpected += [f"{module.where(number)}: error: {t}" for t in texts]
        for number in sorted(module.expected - errors[name].keys()):
            code = module.lines[number - 1][1].strip()
            findings.missed.append(f"{module.where(number)}: no mypy error on `{code}`")
    return findings


def test_package_is_mypy_strict_clean() -> None:
    _needs_mypy()
    result = _mypy("-p", "scheduler")
    assert result.returncode == 0, f"mypy --strict -p scheduler:\n{result.stdout}{result.stderr}"


def test_doc_examples_type_check(tmp_path: Path) -> None:
    _needs_mypy()
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    modules = [
        module
        for path in documents
        if (module := doc_module(str(path.relative_to(ROOT)), path.read_text())) is not None
    ]
    findings = check_modules(modules, tmp_path)
    problems = [f"unexpected {u}" for u in findings.unexpected]
    problems += [f"missed expected error: {m}" for m in findings.missed]
    if findings.expected_count < MIN_EXPECTED_ERRORS:
        problems.append(
            f"{findings.expected_count} line(s) marked `# mypy: error` in the docs; the docs "
            f"should show at least {MIN_EXPECTED_ERRORS} mistakes mypy catches"
        )
    assert not problems, "\n".join(problems)


SYNTHETIC = """\
# Title

```python
def double(x: int) -> int:
    return x * 2
```

Not checked:

```pycon
>>> double("a")
```

```text
double("a")
```

- In a list:

  ```python
  double("2")  # mypy: error
  double(2)  # mypy: error
  ```

~~~python
name: str = double(3)
~~~

```python title="x"
double("not checked")
```
"""


def test_extraction_maps_lines_to_the_document() -> None:
    module = doc_module("guide.md", SYNTHETIC)
    assert module is not None
    assert module.lines == [
        (4, "def double(x: int) -> int:"),
        (5, "    return x * 2"),
        (21, 'double("2")  # mypy: error'),
        (22, "double(2)  # mypy: error"),
        (26, "name: str = double(3)"),
    ]
    assert module.expected == {3, 4}
    assert module.where(5) == "guide.md:26"
    assert doc_module("empty.md", "no code\n```bash\nls\n```\n") is None


def test_expected_errors_caught_missed_and_unexpected_are_told_apart(tmp_path: Path) -> None:
    _needs_mypy()
    module = doc_module("guide.md", SYNTHETIC)
    assert module is not None
    findings = check_modules([module], tmp_path)
    assert findings.expected_count == 2
    assert findings.missed == ["guide.md:22: no mypy error on `double(2)  # mypy: error`"]
    assert len(findings.unexpected) == 1, findings.unexpected
    assert findings.unexpected[0].startswith("guide.md:26: error: Incompatible types")
