"""Rich tables that fit the terminal: ``runs``, ``compare`` and the sweep tables use these.

The rule: a table is tried in several shapes, widest first, and the first whose full width fits
the console is printed; where even the narrowest does not fit, its columns are split over several
tables (each repeating the key column). Figures sit in ``no_wrap`` columns, so a number is never
split over two lines; only columns of words may wrap (between words). Rich is imported inside the
functions: the CLI does not pay for it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def fit(con: Any, tables: Sequence[Callable[[], Any]]) -> Any:
    """The first table (widest first) that fits the console's width; else the narrowest."""
    table = None
    for make in tables:
        table = make()
        if width(con, table) <= con.width:
            return table
    return table


def width(con: Any, renderable: Any) -> int:
    """The width ``renderable`` takes with room to spare (``console.measure`` caps it at the console's)."""
    from rich.measure import Measurement

    return Measurement.get(con, con.options.update_width(10_000), renderable).maximum


def table(box: bool = True, **kwargs: Any) -> Any:
    from rich import box as boxes
    from rich.table import Table

    if box:
        return Table(title_justify="left", **kwargs)
    # Borderless: 2 spaces between columns instead of 3 box characters.
    return Table(title_justify="left", box=boxes.SIMPLE_HEAD, show_edge=False, pad_edge=False, **kwargs)


def column_chunks(con: Any, columns: Sequence[T], make: Callable[[list[T]], Any]) -> list[list[T]]:
    """``columns`` in consecutive groups, each as many as ``make(group)`` fits in the console's width
    (a column too wide even alone gets a group of its own)."""
    chunks: list[list[T]] = []
    for c in columns:
        if chunks and width(con, make([*chunks[-1], c])) <= con.width:
            chunks[-1].append(c)
        else:
            chunks.append([c])
    return chunks
