"""Where the utterances are: file lists, folders, and segment tables (one file per dialogue).

A *unit* is one input file with the utterances cut from it: ``(file,
[(utterance_id, start, end, group), ...])``; ``start``/``end`` are seconds or
``None`` for the whole file. Without a segment table every file is one
utterance whose id is the file name without extension.

Segment table (CSV with a header): ``utterance_id``, ``file`` (relative to the
table's folder), optional ``start`` and ``end`` (seconds), optional
``dialogue``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from imer.errors import DataError

Segment = tuple[str, float | None, float | None, str]
Unit = tuple[str, list[Segment]]


def read_table(path: str | Path, what: str) -> tuple[list[str], list[list[str]]]:
    """Header (stripped) and rows of a CSV file; a clear error when it is absent, empty or not text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV {what} ({exc})") from None
    if not rows:
        raise DataError(f"{path}: {what} is empty")
    return [h.strip() for h in rows[0]], rows[1:]


def column(header: list[str], name: str, path: str | Path, what: str) -> int:
    """Index of column ``name``; the error lists the columns that are there."""
    if name not in header:
        raise DataError(f"{path}: {what} has no '{name}' column (columns: {header[:12]}{' ...' if len(header) > 12 else ''})")
    return header.index(name)


def _seconds(value: str, path: Path, line: int, name: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}: line {line}: '{name}' is not a number of seconds: {value!r}") from None


def read_segments(path: str | Path) -> list[Unit]:
    """Units from a segment table, in table order, files grouped."""
    path = Path(path)
    header, rows = read_table(path, "segment table")
    ic, fc = column(header, "utterance_id", path, "segment table"), column(header, "file", path, "segment table")
    sc = header.index("start") if "start" in header else None
    ec = header.index("end") if "end" in header else None
    dc = header.index("dialogue") if "dialogue" in header else None
    units: dict[str, list[Segment]] = {}
    for n, row in enumerate(rows, start=2):
        row = row + [""] * (len(header) - len(row))
        file = str((path.parent / row[fc].strip()).resolve()) if row[fc].strip() else ""
        if not row[ic].strip() or not file:
            raise DataError(f"{path}: line {n}: empty utterance_id or file")
        start = _seconds(row[sc], path, n, "start") if sc is not None else None
        end = _seconds(row[ec], path, n, "end") if ec is not None else None
        if start is not None and end is not None and end <= start:
            raise DataError(f"{path}: line {n}: end {end} is not after start {start}")
        group = row[dc].strip() if dc is not None else Path(file).stem
        units.setdefault(file, []).append((row[ic].strip(), start, end, group))
    return list(units.items())


def find_files(inputs: list[str], suffixes: tuple[str, ...], what: str) -> list[Unit]:
    """One unit per file: files given, or the matching files inside folders given (sorted)."""
    units: list[Unit] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes and f.is_file())
            if not files:
                raise DataError(f"{p}: no {what} files ({', '.join(suffixes)}) in this folder")
        elif p.exists():
            files = [p]
        else:
            raise DataError(f"{p}: {what} file or folder not found")
        units += [(str(f.resolve()), [(f.stem, None, None, "")]) for f in files]
    return units


def unit_ids(unit: Unit) -> list[str]:
    return [seg[0] for seg in unit[1]]
