"""Plain-text tables for the benchmarks' reports (imported by the scripts beside it)."""
from __future__ import annotations


def print_table(rows: list[list[str]]) -> None:
    """Right-aligned columns; the first row is the header, underlined."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    print()
    for number, row in enumerate(rows):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if number == 0:
            print("  ".join("-" * width for width in widths))
