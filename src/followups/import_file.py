"""Reading a deal list for `followups import`: CSV with a header row, or JSON Lines.

The file is read as bytes, a bounded line at a time, so a huge line, a NUL, a stray encoding or
a 1 MB field becomes one row's error with its line number, never a traceback or the whole file
in memory. Values are checked further by the core (`DealInput`); here only what the core cannot
see: the line itself, its encoding, and cells that a spreadsheet would run as a formula when the
list is exported again (CSV injection).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from followups.errors import FollowupsError

MAX_LINE_BYTES = 256 * 1024  # a deal with the largest allowed context fits well below
DEAL_COLUMNS = {"external_id", "property_address", "seller_name", "seller_email", "seller_phone", "seller_timezone", "property_state", "offer_amount"}
FORMULA_START = ("=", "@", "\t", "\r")
csv.field_size_limit(MAX_LINE_BYTES)


@dataclass
class Row:
    line: int  # where the record starts (1 = the first line of the file)
    data: dict[str, Any] | None = None
    field: str | None = None  # set with `error`
    error: str = ""


@dataclass
class Reader:
    path: Path
    kind: str = ""  # csv | jsonl
    size: int = 0
    _bad_lines: dict[int, str] = field(default_factory=dict)
    _handle: BinaryIO | None = None

    def position(self) -> int:
        """Bytes read so far (for a progress bar)."""
        handle = self._handle
        return handle.tell() if handle is not None and not handle.closed else self.size

    def rows(self) -> Iterator[Row]:
        """Every record of the file, good or bad. Raises FollowupsError when nothing can be read."""
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise FollowupsError(f"cannot read {self.path.name}: {exc.strerror or exc}") from exc
        with handle:
            self.size = self.path.stat().st_size
            self.kind = _kind(self.path, handle)
            self._handle = handle
            lines = self._lines(handle)
            yield from (self._jsonl(lines) if self.kind == "jsonl" else self._csv(lines))

    def _lines(self, handle: BinaryIO) -> Iterator[tuple[int, str]]:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of an over-long line without holding it
                self._bad_lines[number] = f"the line is longer than {MAX_LINE_BYTES} bytes"
                yield number, "\n"
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark
            if b"\0" in raw:
                self._bad_lines[number] = "contains a NUL byte"
                yield number, "\n"
                continue
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._bad_lines[number] = f"not UTF-8 (byte {exc.start + 1}); save the file as UTF-8"
                yield number, "\n"

    def _jsonl(self, lines: Iterator[tuple[int, str]]) -> Iterator[Row]:
        for number, line in lines:
            if number in self._bad_lines:
                yield Row(number, error=self._bad_lines[number])
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield Row(number, error=f"not JSON ({str(exc).split(':')[0]})")
                continue
            if not isinstance(data, dict):
                yield Row(number, error="each line must be one JSON object (a deal)")
                continue
            yield _checked(Row(number, data))

    def _csv(self, lines: Iterator[tuple[int, str]]) -> Iterator[Row]:
        numbers: list[int] = []

        def text_lines() -> Iterator[str]:
            for number, line in lines:
                numbers.append(number)
                yield line

        reader = csv.reader(text_lines())
        header: list[str] | None = None
        while True:
            numbers.clear()
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Row(numbers[0] if numbers else 0, error=f"unreadable CSV record ({exc})")
                continue
            start = numbers[0] if numbers else 0
            bad = next((self._bad_lines[n] for n in numbers if n in self._bad_lines), None)
            if header is None:
                if bad:
                    raise FollowupsError(f"line {start}: {bad}")
                header = _header(record)
                continue
            if bad:
                yield Row(start, error=bad)
                continue
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                yield Row(start, error=f"{len(record)} cells where the header has {len(header)}")
                continue
            data: dict[str, Any] = {}
            for name, cell in zip(header, record, strict=True):
                if cell.strip() == "":
                    continue
                if name.startswith("context."):
                    data.setdefault("context", {})[name.removeprefix("context.")] = cell
                else:
                    data[name] = cell
            yield _checked(Row(start, data))
        if header is None:
            raise FollowupsError(f"{self.path.name} has no header row")


def _kind(path: Path, handle: BinaryIO) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    start = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    handle.seek(0)
    if not start:
        raise FollowupsError(f"{path.name} is empty")
    return "jsonl" if start.startswith(b"{") else "csv"


def _header(record: list[str]) -> list[str]:
    names = [cell.strip().lower() for cell in record]
    unknown = [name for name in names if name not in DEAL_COLUMNS and not (name.startswith("context.") and len(name) > 8)]
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise FollowupsError(f"unknown column(s) in the header: {shown}; known: {', '.join(sorted(DEAL_COLUMNS))}, context.NAME")
    if "external_id" not in names:
        raise FollowupsError("the header has no external_id column")
    if len(set(names)) != len(names):
        raise FollowupsError("the header names a column twice")
    return names


def _checked(row: Row) -> Row:
    """Refuse a cell a spreadsheet would evaluate (=, @, +/- followed by a non-digit)."""
    assert row.data is not None
    cells = [(k, v) for k, v in row.data.items() if k != "context"]
    context = row.data.get("context")
    if isinstance(context, dict):
        cells += [(f"context.{k}", v) for k, v in context.items()]
    for name, value in cells:
        if isinstance(value, str) and _formula(value):
            return Row(row.line, field=str(name)[:100], error="looks like a spreadsheet formula; remove the leading character")
    return row


def _formula(value: str) -> bool:
    text = value.lstrip(" ")
    if text.startswith(FORMULA_START):
        return True
    return len(text) > 1 and text[0] in "+-" and not (text[1].isdigit() or text[1] in " .(")
