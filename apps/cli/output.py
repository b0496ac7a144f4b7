"""Printing for the CLI: one place that turns results into tables or JSON (commands never print directly)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# markup=False: results and messages hold user text (file names, categories, "[...]"), printed as it is; styling is
# done with rich.text.Text (see styled), never with inline markup
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON version of results: numpy scalars/arrays to Python, non-finite floats to null."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
        return f"{v:,.4g}" if abs(v) < 1e3 else f"{v:,.0f}"  # never 6.481e+04 for 64,810
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``result`` as JSON when asked, else through the command's ``render`` function."""
    if as_json:
        print_json(result)
    else:
        render(result)


def whole_samples(amounts: Sequence[float], totals: Sequence[float], n0: float) -> list[tuple[int, int]]:
    """A collection plan in whole samples: ``(collect, cumulative total)`` per round, each total rounded *up* (a
    fractional total is never enough, and more data only lowers the risk of missing the target, so the plan's
    stated risk still holds) and each amount the difference of rounded totals (from ``n0``, today's size)."""
    out, prev = [], math.ceil(n0 - 1e-9)
    for _, t in zip(amounts, totals):
        total = max(prev, math.ceil(float(t) - 1e-9))
        out.append((total - prev, total))
        prev = total
    return out


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain strings and ``(text, style)`` pairs; the text is never read as markup."""
    return Text.assemble(*parts)


def error(message: str) -> None:
    """Print ``error: message`` on stderr; the message is printed literally (``[x]`` and ``[/x]`` survive)."""
    err_console.print(styled(("error:", "bold red"), " ", str(message)))
