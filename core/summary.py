"""What a workflow says about a finished run, for whoever shows it (the CLI prints it)."""

from __future__ import annotations

import attrs


@attrs.frozen
class SummaryTable:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: bool = False  # a rule between rows (for long text cells)


@attrs.frozen
class Summary:
    """Tables, lines of text, and where the run put things: ``blobs`` are (label, blob key)
    pairs, shown as wherever the blob store keeps the key."""

    tables: tuple[SummaryTable, ...] = ()
    notes: tuple[str, ...] = ()
    blobs: tuple[tuple[str, str], ...] = ()


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
