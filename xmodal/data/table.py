"""Reading ``captions.csv`` defensively: bytes to a header and records that carry their line numbers.

Whatever the file holds, the result is either a :class:`Table` or a :class:`CatalogueError` with a one-line
message naming the file (and line) and what to do. Rows that cannot be trusted are returned with a
``problem`` instead of being parsed into the wrong columns: bytes that are not UTF-8 (with a guess at the
encoding), NUL bytes, quotes that never close (the parser resynchronises on the next line), and rows
with more or fewer fields than the header.
"""
from __future__ import annotations

import csv
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

MAX_CSV_BYTES = 2 * 1024**3  # refuse larger captions.csv files outright
MAX_RECORD_LINES = 50  # a quoted field running over more lines than this is an unclosed quote
DELIMITERS = (",", "\t", ";", "|")  # tried in this order when the header does not split on commas

# Problems a record can carry: (reason for the load report, advice shown once).
NOT_UTF8 = "not UTF-8 text"
NUL = "NUL byte in row"
UNBALANCED = "broken csv row (unbalanced quotes)"
EXTRA = "broken csv row (extra fields)"
MISSING = "broken csv row (missing fields)"
ADVICE = {
    NUL: "the file holds binary data: check how captions.csv was exported",
    UNBALANCED: 'a field opens a quote that does not close where it should: quote fields that hold commas, '
                'and double quotes inside them ("")',
    EXTRA: "the row has more fields than the header: quote captions that hold commas",
    MISSING: "the row has fewer fields than the header: a comma is missing or a line was split",
}

_SURROGATES = re.compile("[\udc80-\udcff]")  # undecodable bytes under errors="surrogateescape"
_field_limit_lock = threading.Lock()  # csv.field_size_limit is process-wide


class CatalogueError(ValueError):
    """A catalogue that cannot be used at all (no csv, missing columns, no usable rows)."""


@dataclass
class Record:
    """One csv record: the physical line it starts on, and its fields or the reason it cannot be used."""

    line: int  # 1-based line number where the record starts
    fields: list[str]  # values in header order (empty when ``problem`` is set)
    problem: str | None = None  # a reason key (NOT_UTF8, NUL, ...) when the row cannot be used
    detail: str = ""  # shown after the line number in the report's examples
    advice: str = ""  # what to do, shown once per reason


@dataclass
class Table:
    """A parsed captions.csv."""

    path: Path
    columns: list[str]  # header names, stripped; known names lower-cased; "" for unnamed columns
    records: list[Record]  # data records in file order (blank lines dropped)
    header_line: int = 1  # the line the header is on
    delimiter: str = ","
    notes: list[str] = field(default_factory=list)  # file-level remarks (ignored unnamed columns, ...)


def _read_bytes(path: Path) -> bytes:
    where = f"{path}"
    if path.is_dir():
        raise CatalogueError(f"{where} is a folder, not a file: captions.csv must be the csv file itself "
                             "(columns image, caption); rename or remove that folder")
    if path.exists() and not path.is_file():
        raise CatalogueError(f"{where} is not a regular file (a pipe or device?): replace it with the csv file")
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise CatalogueError(f"{where} is {size / 2**30:.1f} GiB, over the {MAX_CSV_BYTES / 2**30:.0f} GiB "
                                 "limit: is it really the captions table?")
        return path.read_bytes()
    except PermissionError as err:
        raise CatalogueError(f"{where} cannot be read (permission denied): make it readable, e.g. "
                             f"chmod a+r {path}") from err
    except OSError as err:
        raise CatalogueError(f"{where} cannot be read ({err.strerror or err}): check the file and the disk") from err


def _looks_utf16(data: bytes) -> bool:
    head = data[:400]
    return len(head) >= 8 and (head[1::2].count(0) > 0.4 * len(head[1::2]) or
                               head[0::2].count(0) > 0.4 * len(head[0::2]))


def _decode(path: Path, data: bytes) -> tuple[str, bool]:
    """The text of ``data`` and whether some bytes were not UTF-8 (kept as surrogates for the rows to report)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte-order mark (Excel "Unicode text")
        return data.decode("utf-16", errors="replace").lstrip("\ufeff"), False
    if _looks_utf16(data):
        raise CatalogueError(f"{path} looks like UTF-16 text without a byte-order mark: re-save it as UTF-8, "
                             f"e.g. iconv -f utf-16le -t utf-8 {path.name} > utf8.csv")
    while data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark (Excel "CSV UTF-8"), sometimes doubled
        data = data[3:]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), True


def _guess_encoding(raw: bytes) -> tuple[str, str]:
    """(name to show, iconv name) of the likely 8-bit encoding of bytes that are not UTF-8."""
    if any(0x80 <= b <= 0x9F for b in raw):
        try:
            raw.decode("cp1252")
            return "Windows-1252", "cp1252"
        except UnicodeDecodeError:
            pass
    return "latin-1", "latin1"


def _not_utf8(path: Path, line: int, text: str, encoding: tuple[str, str] | None = None) -> Record:
    """The record for a row holding bytes that are not UTF-8, with a guess at the encoding (the file's,
    when given, so every row gets the same advice)."""
    raw = text.encode("utf-8", errors="surrogateescape")
    shown, iconv = encoding or _guess_encoding(raw)
    snippet = raw.decode(iconv, errors="replace").strip()
    snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
    return Record(line, [], NOT_UTF8, f"looks like {shown}?: {snippet!r}",
                  f"re-save {path.name} as UTF-8, e.g. iconv -f {iconv} -t utf-8 {path.name} > utf8.csv, "
                  "or in Excel Save As 'CSV UTF-8'")


def _parse(lines: list[str], delimiter: str) -> list[tuple[int, int, list[str] | None, str]]:
    """(first line index, end line index, fields or None, error) per record, resynchronising after a bad one."""
    out: list[tuple[int, int, list[str] | None, str]] = []
    start = 0
    while start < len(lines):
        reader = csv.reader((lines[i] for i in range(start, len(lines))), delimiter=delimiter)
        first = start
        restart = None
        try:
            for fields in reader:
                end = start + reader.line_num
                if end - first > 1 and not _strict_ok(lines[first:end], delimiter):
                    out.append((first, end, None, "unbalanced quotes"))
                    restart = first + 1  # the quote swallowed the lines after it: parse them again
                    break
                out.append((first, end, fields, ""))
                first = end
        except csv.Error as err:
            out.append((first, first + 1, None, str(err)))
            restart = first + 1
        if restart is None:
            break
        start = restart
    return out


def _strict_ok(lines: list[str], delimiter: str) -> bool:
    """Whether a record spanning several lines is one well-formed record (its quotes open and close)."""
    if len(lines) > MAX_RECORD_LINES:
        return False
    try:
        return len(list(csv.reader(lines, delimiter=delimiter, strict=True))) == 1
    except csv.Error:
        return False


def _delimiter(header_line: str, required: tuple[str, ...]) -> str:
    for d in DELIMITERS:
        try:
            names = {h.strip().lower() for h in next(csv.reader([header_line], delimiter=d), [])}
        except csv.Error:
            continue
        if set(required) <= names:
            return d
    return ","


def _columns(path: Path, raw: list[str], known: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Header names (stripped, known ones lower-cased) and notes; duplicate names are an error."""
    cols = []
    for h in raw:
        name = h.strip().strip("\ufeff").strip()
        cols.append(name.lower() if name.lower() in known else name)
    seen: dict[str, int] = {}
    for i, c in enumerate(cols, start=1):
        if c and c in seen:
            raise CatalogueError(f"{path}: columns {seen[c]} and {i} are both named {c!r}; rename or delete one "
                                 "(every column needs its own name)")
        seen.setdefault(c, i)
    notes = [f"column {i} has no name: its values are ignored (name it to keep it as an attribute)"
             for i, c in enumerate(cols, start=1) if not c]
    return cols, notes


def read_table(path: str | Path, required: tuple[str, ...] = (), known: tuple[str, ...] = ()) -> Table:
    """Read a csv whose first non-blank line is the header.

    Args:
        path: the csv file.
        required: column names that decide the delimiter (comma, tab, semicolon or bar).
        known: column names matched case-insensitively (returned lower-cased).

    Raises:
        CatalogueError: a folder or unreadable file, empty, UTF-16 without a byte-order mark, a header
            that is not text, or duplicate column names.
    """
    path = Path(path)
    text, has_bad_bytes = _decode(path, _read_bytes(path))
    if not text.strip():
        raise CatalogueError(f"{path} is empty: it needs a header line (image,caption) and one row per product")
    lines = [line + "\n" for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    if lines[-1] == "\n":
        lines.pop()  # the file's final newline
    header_at = next(i for i, line in enumerate(lines) if line.strip())
    sep = re.fullmatch(r'\s*"?sep=([^"\w\s]|\t)"?\s*', lines[header_at])  # Excel's "sep=;" line
    if sep:
        header_at = next((i for i in range(header_at + 1, len(lines)) if lines[i].strip()), None)
        if header_at is None:
            raise CatalogueError(f"{path} has only a 'sep=' line: it needs a header line (image,caption) and "
                                 "one row per product")
    if "\x00" in lines[header_at]:
        raise CatalogueError(f"{path} line {header_at + 1}: the header holds NUL bytes (a binary file, or UTF-16?): "
                             "export the table again as CSV UTF-8")
    if _SURROGATES.search(lines[header_at]):
        bad = _not_utf8(path, header_at + 1, lines[header_at])
        raise CatalogueError(f"{path} line {header_at + 1}: the header is not UTF-8 text ({bad.detail}); {bad.advice}")
    with _field_limit_lock:  # let the parser read any field: over-long captions are refused per row later
        old = csv.field_size_limit()
        csv.field_size_limit(max(old, len(text) + 1))
        try:
            delimiter = sep.group(1) if sep else _delimiter(lines[header_at], required)
            parsed = _parse(lines[header_at:], delimiter)
        finally:
            csv.field_size_limit(old)
    (_, _, header, _), body = parsed[0], parsed[1:]
    if header is None:
        raise CatalogueError(f"{path} line {header_at + 1}: the header line is not valid csv; it should read "
                             "image,caption[,item_id,...]")
    columns, notes = _columns(path, header, known)
    encoding = None
    if has_bad_bytes:  # one guess for the whole file, from every byte that is not UTF-8
        bad = "".join(_SURROGATES.findall(text)).encode("utf-8", errors="surrogateescape")
        encoding = _guess_encoding(bad)
    records = []
    for first, end, fields, error in body:
        line = header_at + first + 1
        chunk = "".join(lines[header_at + first:header_at + end])
        if has_bad_bytes and _SURROGATES.search(chunk):
            records.append(_not_utf8(path, line, chunk, encoding))
        elif "\x00" in chunk:
            records.append(Record(line, [], NUL, "", ADVICE[NUL]))
        elif fields is None:
            detail = f"runs over lines {line}-{header_at + end}" if error == "unbalanced quotes" else error
            records.append(Record(line, [], UNBALANCED, detail, ADVICE[UNBALANCED]))
        elif not fields or not "".join(fields).strip():
            continue  # a blank line (or only delimiters)
        elif len(fields) > len(columns) and any(f.strip() for f in fields[len(columns):]):
            records.append(Record(line, [], EXTRA, f"{len(fields)} fields, header has {len(columns)}", ADVICE[EXTRA]))
        elif len(fields) < len(columns) and any(columns[len(fields):]):
            records.append(Record(line, [], MISSING, f"{len(fields)} fields, header has {len(columns)}",
                                  ADVICE[MISSING]))
        else:
            records.append(Record(line, (fields + [""] * len(columns))[:len(columns)]))
    return Table(path=path, columns=columns, records=records, header_line=header_at + 1,
                 delimiter=delimiter, notes=notes)
