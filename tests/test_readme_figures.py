"""Every figure in the README's "Measured figures" summary and in ``docs/benchmarks.md`` (all of its tables) is read
from a committed bench JSON (#25 item 7 moved the long tables to docs/).

Format (see either file): each table row is ``| what | figure | source |``; the source cell is
``file.json: key.path, key.path ÷ 1024, …`` inside backticks, the file is in ``bench/``, and each key path names a
JSON value: a number (matched, in order, against the numbers in the figure cell, to the precision shown), a
string (must appear verbatim in the figure cell) or a list of numbers (its elements are matched in order). A key
path is dotted; a key that itself holds dots (``0.5-1%``) is matched whole. ``× N`` / ``÷ N`` after a key converts
units. Numbers in the "what" cell are labels and not checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Measured figures"
NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])-?\d+(?:\.\d+)?(?![\w])")
SOURCE = re.compile(r"^`([\w./-]+\.json):\s*(.+)`$")
REF = re.compile(r"^(.+?)(?:\s*([×÷])\s*([\d.]+))?$")


def section(text: str) -> str:
    """The README text from the "Measured figures" heading to the next level-2 heading."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end >= 0 else len(text)]


def figure_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number in the section, cells) of every data row of every table in the section."""
    rows, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):  # separator row
            continue
        if i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):  # header row
            continue
        rows.append((i + 1, cells))
    return rows


def resolve(data, path: str):
    """The value at a dotted key path; a key holding dots is matched whole (longest key first)."""
    node, rest = data, path
    while rest:
        if isinstance(node, list):
            head, _, tail = rest.partition(".")
            node, rest = node[int(head)], tail
            continue
        if not isinstance(node, dict):
            raise KeyError(f"{path}: {rest!r} below a {type(node).__name__}")
        for key in sorted(node, key=len, reverse=True):
            if rest == key or rest.startswith(key + "."):
                node, rest = node[key], rest[len(key) + 1:]
                break
        else:
            raise KeyError(f"{path}: no key at {rest!r} (keys: {', '.join(sorted(node)[:20])})")
    return node


def shown_numbers(cell: str) -> list[tuple[float, int]]:
    """(value, decimals shown) of each number in a figure cell, left to right."""
    out = []
    for m in NUMBER.finditer(cell):
        s = m.group(0).replace(",", "")
        out.append((float(s), len(s.split(".")[1]) if "." in s else 0))
    return out


def check_row(cells: list[str], bench: Path) -> list[str]:
    """Problems with one row (empty when every figure matches its JSON)."""
    if len(cells) < 3:
        return [f"expected | what | figure | source |, got {cells}"]
    figure, source = cells[1], cells[-1]
    m = SOURCE.match(source)
    if not m:
        return [f"source {source!r} is not `file.json: key.path, …`"]
    path = bench / m.group(1)
    if not path.is_file():
        return [f"{path} does not exist"]
    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("smoke"):
        return [f"{path} holds a --smoke run"]
    expected: list[float] = []
    rest = figure
    for ref in (r.strip() for r in m.group(2).split(",")):
        key, op, factor = REF.match(ref).groups()
        try:
            value = resolve(data, key.strip())
        except (KeyError, IndexError, ValueError) as e:
            return [f"{m.group(1)}: {e}"]
        if isinstance(value, str):
            if value not in rest:
                return [f"{key}: {value!r} not shown in {figure!r}"]
            rest = rest.replace(value, " ", 1)
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return [f"{key}: {v!r} is not a number"]
            f = float(factor) if factor else 1.0
            expected.append(v * f if op == "×" else v / f if op == "÷" else v)
    shown = shown_numbers(rest)
    if len(shown) != len(expected):
        return [f"{figure!r} shows {len(shown)} numbers, {source} names {len(expected)} values"]
    problems = []
    for (s, d), v in zip(shown, expected):
        if abs(v - s) > 0.5 * 10 ** -d * (1 + 1e-9) + 1e-12:
            problems.append(f"{figure!r}: shows {s} but the JSON gives {v} ({d} decimals)")
    return problems


# (file, the text whose tables are figure tables, the fewest rows it may hold)
FIGURE_DOCS = [("README.md", section, 8), ("docs/benchmarks.md", lambda text: text, 100)]


def problems_in(name: str, text: str, bench: Path) -> list[str]:
    """Every mismatch between the figure rows of ``text`` (the contents of ``name``) and the JSONs in ``bench``."""
    return [f"{name}, row {n} ({cells[0]!r}): {p}" for n, cells in figure_rows(text) for p in check_row(cells, bench)]


@pytest.mark.parametrize("name,part,min_rows", FIGURE_DOCS, ids=[d[0] for d in FIGURE_DOCS])
def test_every_figure_matches_its_bench_json(name, part, min_rows):
    text = part((ROOT / name).read_text())
    assert len(figure_rows(text)) >= min_rows, f"{name} lost its figure tables"
    problems = problems_in(name, text, ROOT / "bench")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name,part,min_rows", FIGURE_DOCS, ids=[d[0] for d in FIGURE_DOCS])
def test_a_wrong_figure_in_either_file_fails(name, part, min_rows):
    """The check bites on the real files: one figure nudged in its last digit is reported."""
    text = part((ROOT / name).read_text())
    n, cells = next((n, c) for n, c in figure_rows(text) if NUMBER.search(c[1]))
    line = text.splitlines()[n - 1]
    m = NUMBER.search(cells[1])
    wrong = cells[1][:m.start()] + _nudge(m.group(0)) + cells[1][m.end():]
    bad = text.replace(line, line.replace(f"| {cells[1]} |", f"| {wrong} |", 1), 1)
    assert bad != text and problems_in(name, bad, ROOT / "bench")


def _nudge(number: str) -> str:
    """``number`` changed in its last digit (``0.539`` -> ``0.538``, ``10`` -> ``11``)."""
    return number[:-1] + ("8" if number[-1] == "9" else str(int(number[-1]) + 1))


@pytest.fixture
def bench(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"a": {"0.5-1%": {"r": 0.12345}, "n": 1250, "f": "Flat",
                                                       "s": [0.7, 1.0]}, "b": 2048.0, "runs": [{"t": 3.0}]}))
    return tmp_path


@pytest.mark.parametrize("figure,source,ok", [
    ("0.123 at 1,250 images", "`x.json: a.0.5-1%.r, a.n`", True),
    ("0.124 at 1,250 images", "`x.json: a.0.5-1%.r, a.n`", False),  # drifted in the last digit
    ("0.12 at 1,251 images", "`x.json: a.0.5-1%.r, a.n`", False),
    ("2.0 KiB, index Flat, scales 0.7/1.0", "`x.json: b ÷ 1024, a.f, a.s`", True),
    ("Flat", "`x.json: a.f`", True),
    ("IVF", "`x.json: a.f`", False),
    ("3 s", "`x.json: runs.0.t`", True),
    ("0.123 and an unbacked 7", "`x.json: a.0.5-1%.r`", False),
    ("0.123", "`x.json: a.missing`", False),
    ("0.123", "`y.json: a.0.5-1%.r`", False),
    ("0.123", "bench/x.json", False),
])
def test_checker_catches_drift_and_unbacked_numbers(bench, figure, source, ok):
    assert (check_row(["what", figure, source], bench) == []) is ok


def test_smoke_json_is_not_a_source(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"smoke": True, "v": 1.0}))
    assert check_row(["what", "1.0", "`s.json: v`"], tmp_path)


def test_rows_come_from_every_table_in_the_section():
    text = "## Measured figures\n\nintro 123\n\n| what | figure | source |\n|---|---|---|\n| a | 1 | `x.json: v` |\n" \
           "\n### more\n| what | figure | source |\n|---|---|---|\n| b | 2 | `x.json: w` |\n\n## Next\n| c | 3 | z |\n"
    assert [c[0] for _, c in figure_rows(section(text))] == ["a", "b"]
