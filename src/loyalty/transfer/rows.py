"""The rows of an import file (CSV with a header, or JSON Lines), each checked by the same
parser as the adjust route, so a refused row reads exactly as the API would refuse it.

A row without a `reference` gets one derived from its content, so running the same file
twice applies nothing twice: `import:` + 32 hex digits of the SHA-256 of its customer_id,
delta, reason, metadata and expires_at + `:` + which occurrence of that content in the file
it is (1, 2, ...). Two identical rows are two adjustments; editing or moving another row
changes nothing for this one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from loyalty.errors import LoyaltyError
from loyalty.ledger import points
from loyalty.ledger.schemas import AdjustBody, parse_adjust_body

# The columns an import reads; `customer_id` and `delta` are required.
COLUMNS = ("customer_id", "delta", "reason", "reference", "email", "expires_at", "metadata")
REQUIRED = ("customer_id", "delta")
# The other columns of `loyalty export`, ignored so that an export can be imported again.
EXPORT_ONLY = frozenset(
    {"id", "type", "balance_after", "reverses", "pending_id", "created_by", "created_at", "hash"}
)
FIELD_MAX_CHARS = 64 * 1024  # far above any field's own limit: a bound, not a rule
LINE_MAX_BYTES = 256 * 1024
SNIFF_BYTES = 64 * 1024
DERIVED_PREFIX = "import:"

_encode = msgspec.json.encode
_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


class FileRejected(Exception):
    """The file as a whole cannot be imported (exit 2): the message is one line."""


@dataclass(frozen=True, slots=True)
class Row:
    """A valid row: its line, the adjust body, and the email to create its customer with."""

    line: int
    body: AdjustBody
    email: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    line: int
    reason: str


def file_format(path: Path) -> str:
    """`csv` or `jsonl`, by the extension, else by the first line; FileRejected otherwise."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    try:
        with path.open("rb") as file:
            head = file.read(SNIFF_BYTES)
    except OSError as error:
        raise FileRejected(f"cannot read {path}: {error.strerror}") from None
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)[0]
    if first.startswith(b"{"):
        return "jsonl"
    header = {name.strip().strip('"') for name in first.decode("utf-8", "replace").split(",")}
    if set(REQUIRED) <= header:
        return "csv"
    raise FileRejected(
        f"{path} is neither CSV (a header naming customer_id and delta) nor JSON Lines"
    )


def read_rows(path: Path, kind: str) -> Iterator[Row | Refused]:
    """Every data row of the file, in order, valid or refused with its line number."""
    seen: Counter[str] = Counter()
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as file:
            raw_rows = _csv_rows(file, path) if kind == "csv" else _jsonl_rows(file)
            for line, fields in raw_rows:
                yield (
                    _row(line, fields, seen) if isinstance(fields, dict) else Refused(line, fields)
                )
    except UnicodeDecodeError:
        raise FileRejected(f"{path} is not UTF-8 text") from None
    except csv.Error as error:
        raise FileRejected(f"{path} is not valid CSV: {error}") from None
    except OSError as error:
        raise FileRejected(f"cannot read {path}: {error.strerror}") from None


def count_lines(path: Path) -> int:
    """About how many rows the file has (its newlines), for the progress bar."""
    count = 0
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            count += block.count(b"\n")
    return count


RawFields = dict[str, msgspec.Raw]


def _csv_rows(file: IO[str], path: Path) -> Iterator[tuple[int, RawFields | str]]:
    csv.field_size_limit(FIELD_MAX_CHARS)
    reader = csv.reader(file)
    header = next(reader, None)
    if header is None:
        raise FileRejected(f"{path} is empty: a CSV import starts with a header")
    names = [name.strip() for name in header]
    missing = [name for name in REQUIRED if name not in names]
    unknown = [name for name in names if name not in COLUMNS and name not in EXPORT_ONLY]
    if missing or unknown or len(set(names)) != len(names):
        problem = (
            f"has no column {missing[0]}"
            if missing
            else f"has an unknown column {unknown[0]!r}"
            if unknown
            else "names a column twice"
        )
        raise FileRejected(
            f"{path} {problem} (columns: {', '.join(COLUMNS)}; required: {', '.join(REQUIRED)})"
        )
    wanted = [(i, name) for i, name in enumerate(names) if name in COLUMNS]
    line = reader.line_num + 1
    for values in reader:
        start, line = line, reader.line_num + 1
        if not values or values == [""]:
            continue
        if len(values) != len(names):
            yield start, f"has {len(values)} fields, the header {len(names)}"
            continue
        fields: RawFields = {}
        for i, name in wanted:
            value = values[i]
            if name == "delta":
                fields[name] = msgspec.Raw(value.strip().encode())
            elif name == "metadata":
                if value.strip():
                    fields[name] = msgspec.Raw(value.encode())
            elif value != "":
                fields[name] = msgspec.Raw(_encode(value))
        yield start, fields


def _jsonl_rows(file: IO[str]) -> Iterator[tuple[int, RawFields | str]]:
    for line, text in enumerate(file, start=1):
        if not text.strip():
            continue
        if len(text) > LINE_MAX_BYTES:
            yield line, f"is longer than {LINE_MAX_BYTES} characters"
            continue
        try:
            fields = _decoder.decode(text)
        except msgspec.DecodeError:
            yield line, "is not a JSON object"
            continue
        unknown = [name for name in fields if name not in COLUMNS and name not in EXPORT_ONLY]
        if unknown:
            yield line, f"has an unknown field {unknown[0]!r}"
            continue
        delta = fields.get("delta")
        if delta is not None and bytes(delta).startswith(b'"'):
            # "12.50" as a string: the text of the number, read exactly.
            fields["delta"] = msgspec.Raw(bytes(delta)[1:-1])
        yield line, {k: v for k, v in fields.items() if k in COLUMNS}


def _row(line: int, fields: RawFields, seen: Counter[str]) -> Row | Refused:
    email_raw = fields.pop("email", None)
    try:
        body = parse_adjust_body(fields)
    except LoyaltyError as error:
        first = error.errors[0].message if error.errors else error.message
        return Refused(line, first)
    email = None
    if email_raw is not None and bytes(email_raw) != b"null":
        # Checked when a customer is created from it (the same rule), not on every row.
        try:
            email = msgspec.json.decode(email_raw, type=str)
        except msgspec.ValidationError:
            return Refused(line, "email must be a string")
    if body.reference is None:
        body = dataclasses.replace(body, reference=_derived_reference(body, fields, seen))
    return Row(line, body, email)


def _derived_reference(body: AdjustBody, fields: RawFields, seen: Counter[str]) -> str:
    content = hashlib.sha256()
    for part in (
        body.customer_id.encode(),
        points.render(body.delta_hundredths),
        (body.reason or "").encode(),
        bytes(fields.get("metadata") or b""),
        str(body.expires_at_ms).encode(),
    ):
        content.update(len(part).to_bytes(4, "big") + part)
    digest = content.hexdigest()[:32]
    seen[digest] += 1
    return f"{DERIVED_PREFIX}{digest}:{seen[digest]}"
