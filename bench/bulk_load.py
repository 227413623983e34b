"""Bulk loads: adjustments straight into the database, every invariant kept.

Two plans (common.LoadPlan): S5's 1,000,000 adjustments for cus_bench_big and 4,000 for each
of the 1,000 others (5,000,000), and S7's for cus_bench_big alone (1,000,000; 100,000 with
--quick). Every row follows from its row number n, with nothing disabled (constraints,
foreign keys, triggers and indexes all stay on):

    the big customer:  n in [0, big)                    seq = n + 1
    the others:        n in [big, big + 1,000 x per)    m = n - big,
                                                        customer m / per, seq = m % per + 1
    every row:         type 'adjustment', delta = 1 point, so balance_after = seq x delta;
                       no reference, metadata, expires_at, reverses or pending_id
                       created_at = base + n / 1,000 (ms, never decreasing along a sequence)
                       id = "adj_" + a ULID: created_at's 10 characters, then 8 zeros and n
                            in 8 characters (so ids strictly increase along a sequence and
                            are unique)
                       hash = the service's own chain link (loyalty.ledger.chain) of the
                            customer's previous row's hash and this row's fields (made
                            from chain.canonical's encoding, checked against chain.link
                            on each chunk's first row: make_chunk)
    and its event:     the outbox row the service writes beside each adjustment (type
                       points.adjusted, no copy of the data), at position first + n, where
                       first follows the outbox's last position; id = "evt_" and the
                       adjustment's ULID

One customer after the other, and time with n: each index and the table grow at their end,
so the load does not slow down as they grow.

The hash chain is sequential per customer, so the rows are made in Python: helper processes
make the next chunks (ids, hashes, and for PostgreSQL the COPY text) while this one writes
the last (PostgreSQL: `COPY … FROM STDIN` through psql; SQLite: `executemany`). Each chunk
is one transaction, and sets the balance rows of the customers it touched to their new tip
(balance, last_seq, last adjustment id, time and hash) and the outbox's last position, so
every commit leaves a ledger that `loyalty verify` accepts.

`base` is one millisecond after the newest of these customers was created, and the loader
waits until the whole history lies in the past. The customers must exist already (made
through the API) and have no adjustment yet.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from common import BIG_CUSTOMER, CUSTOMER_COUNT, LoadPlan, customer_id, psql, sqlite_connect

from loyalty import timestamps
from loyalty.ledger import chain, points

CHUNK_ROWS = 50_000  # per transaction (the others': whole customers, about as many)
HELPERS = 2  # processes making chunks (one at a time along the big customer's chain)
DELTA_HUNDREDTHS = 100
ROWS_PER_MS = 1000
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REASON = "bench bulk load"
TYPE = "adjustment"
EVENT_TYPE = "points.adjusted"
EVENT_COLUMNS = ("position", "id", "type", "subject_id", "customer_id", "created_at_ms", "data")
COLUMNS = (
    "id",
    "customer_id",
    "seq",
    "type",
    "delta_hundredths",
    "balance_after_hundredths",
    "reason",
    "reference",
    "metadata",
    "expires_at_ms",
    "reverses",
    "pending_id",
    "created_at_ms",
    "created_by",
    "hash",
)

Progress = Callable[[str], None]
# One row, in COLUMNS' order.
Row = tuple[str, str, int, str, int, int, str, None, None, None, None, None, int, str | None, str]
# A customer's new tip: customer, balance, last_seq, last adjustment id, its time, its hash.
Tip = tuple[str, int, int, str, int, str]
# One event, in EVENT_COLUMNS' order.
EventRow = tuple[int, str, str, str, str, int, None]


@dataclass(frozen=True)
class Job:
    """One chunk to make: rows n in [low, high)."""

    plan: LoadPlan
    dialect: str  # postgresql: COPY text; sqlite: rows
    base_ms: int
    created_by: str | None
    low: int
    high: int
    previous_hash: str | None  # the big customer's tip, when the chunk continues its chain
    first_position: int  # the outbox position of row 0's event


@dataclass(frozen=True)
class Chunk:
    high: int
    rows: list[Row]  # SQLite's
    events: list[EventRow]  # SQLite's
    copy_text: str  # PostgreSQL's
    events_copy_text: str  # PostgreSQL's
    tips: list[Tip]


def _base32(value: int, characters: int) -> str:
    return "".join(CROCKFORD[(value >> (5 * shift)) & 31] for shift in reversed(range(characters)))


def _row_customer(plan: LoadPlan, n: int) -> tuple[str, int]:
    if n < plan.big:
        return BIG_CUSTOMER, n + 1
    m = n - plan.big
    return customer_id(m // plan.per_other), m % plan.per_other + 1


def _fields(
    adjustment_id: str, customer: str, balance_after: int, created_at_ms: int, by: str | None
) -> dict[str, Any]:
    """A loaded row's hashed fields, as the service renders them."""
    return chain.api_fields(
        id=adjustment_id,
        customer_id=customer,
        type=TYPE,
        delta_hundredths=DELTA_HUNDREDTHS,
        balance_after_hundredths=balance_after,
        reason=REASON,
        reference=None,
        metadata=None,
        expires_at_ms=None,
        reverses=None,
        pending_id=None,
        created_by=by,
        created_at_ms=created_at_ms,
    )


# The four fields that differ from one loaded row to the next.
_VARYING = ("id", "customer_id", "balance_after", "created_at")


def _canonical_format(created_by: str | None) -> str:
    """chain.canonical's own encoding of a loaded row, with {0} … {3} where _VARYING's values
    go: formatting it costs a microsecond where the whole encoding costs 20 or more."""
    fields = _fields("adj_x", BIG_CUSTOMER, DELTA_HUNDREDTHS, 0, created_by)
    fields.update({name: f"@@{index}@@" for index, name in enumerate(_VARYING)})
    text = chain.canonical(fields).decode()
    text = text.replace("{", "{{").replace("}", "}}")
    return re.sub(r"@@(\d)@@", r"{\1}", text)


def make_chunk(job: Job) -> Chunk:
    """The rows of `job` and the tips they leave (run in a helper process).

    Each hash is chain.link's: SHA-256 of the previous hash (chain.GENESIS for a customer's
    first row) and the canonical encoding. The encoding comes from _canonical_format, checked
    on the chunk's first row against chain.link itself; should they ever differ, every row of
    the chunk is hashed by chain.link (slower, the same result)."""
    rows: list[Row] = []
    events: list[EventRow] = []
    tips: dict[str, Tip] = {}
    previous: str | None = job.previous_hash
    last_customer = BIG_CUSTOMER if job.previous_hash is not None else ""
    encoding = _canonical_format(job.created_by)
    fast = True
    for n in range(job.low, job.high):
        customer, seq = _row_customer(job.plan, n)
        if customer != last_customer:
            previous = None  # a customer's first row: the chain starts at GENESIS
            last_customer = customer
        created_at_ms = job.base_ms + n // ROWS_PER_MS
        adjustment_id = f"adj_{_base32(created_at_ms, 10)}00000000{_base32(n, 8)}"
        balance_after = seq * DELTA_HUNDREDTHS
        digest = ""
        if fast:
            canonical = encoding.format(
                adjustment_id,
                customer,
                points.render(balance_after).decode(),
                timestamps.render(created_at_ms),
            )
            digest = hashlib.sha256(f"{previous or chain.GENESIS}{canonical}".encode()).hexdigest()
        if not fast or n == job.low:
            fields = _fields(adjustment_id, customer, balance_after, created_at_ms, job.created_by)
            reference = chain.link(previous, fields)
            fast = fast and digest == reference
            digest = reference
        previous = digest
        rows.append(
            (
                *(adjustment_id, customer, seq, TYPE, DELTA_HUNDREDTHS, balance_after, REASON),
                *(None, None, None, None, None),
                *(created_at_ms, job.created_by, digest),
            )
        )
        tips[customer] = (customer, balance_after, seq, adjustment_id, created_at_ms, digest)
        event_id = "evt_" + adjustment_id.removeprefix("adj_")
        position = job.first_position + n
        events.append(
            (position, event_id, EVENT_TYPE, adjustment_id, customer, created_at_ms, None)
        )
    if job.dialect != "postgresql":
        return Chunk(job.high, rows, events, "", "", list(tips.values()))
    return Chunk(job.high, [], [], _copy_text(rows), _copy_text(events), list(tips.values()))


def _copy_text(rows: list[Row] | list[EventRow]) -> str:
    """COPY's text format: tab-separated, \\N for NULL (no value here holds a tab, a newline
    or a backslash)."""
    return "".join(
        "\t".join("\\N" if value is None else str(value) for value in row) + "\n" for row in rows
    )


def _ranges(plan: LoadPlan) -> list[tuple[int, int]]:
    """[low, high) of each chunk: the big customer's, then whole customers of the others."""
    ranges = [(low, min(low + CHUNK_ROWS, plan.big)) for low in range(0, plan.big, CHUNK_ROWS)]
    if plan.per_other:
        step = max(1, CHUNK_ROWS // plan.per_other) * plan.per_other
        ranges += [(low, min(low + step, plan.total)) for low in range(plan.big, plan.total, step)]
    return ranges


def _chunks(
    plan: LoadPlan, dialect: str, base_ms: int, created_by: str | None, first_position: int
) -> Iterator[Chunk]:
    """Each chunk in order, the next ones made by the helper processes while this one is
    written. A big-customer chunk continues the previous one's chain, so it is asked for
    only once every chunk before it is back; the others' chunks (whole customers, each
    chain from its start) are made HELPERS at a time."""
    ranges = _ranges(plan)
    in_flight: deque[Future[Chunk]] = deque()
    following = 0  # the next range to ask for
    big_tip: str | None = None
    with ProcessPoolExecutor(max_workers=HELPERS) as helpers:

        def ask() -> None:
            nonlocal following
            while following < len(ranges) and len(in_flight) < HELPERS:
                low, high = ranges[following]
                continues = 0 < low < plan.big
                if continues and in_flight:
                    return  # it needs the big customer's tip from the chunk in flight
                tip = big_tip if continues else None
                job = Job(plan, dialect, base_ms, created_by, low, high, tip, first_position)
                in_flight.append(helpers.submit(make_chunk, job))
                following += 1

        ask()
        while in_flight:
            chunk = in_flight.popleft().result()
            big_tip = next((t[5] for t in chunk.tips if t[0] == BIG_CUSTOMER), big_tip)
            ask()
            yield chunk


_PRECONDITION = f"""
SELECT (SELECT count(*) FROM loyalty_balances
         WHERE last_seq = 0 AND (customer_id = '{BIG_CUSTOMER}' OR customer_id
               BETWEEN '{customer_id(0)}' AND '{customer_id(CUSTOMER_COUNT - 1)}')),
       (SELECT count(*) FROM loyalty_adjustments),
       (SELECT max(created_at_ms) FROM customers),
       (SELECT id FROM users ORDER BY created_at_ms, id LIMIT 1),
       (SELECT last_position FROM loyalty_event_sequence WHERE id = 1)
"""


def _base_ms(plan: LoadPlan, newest_customer_ms: int, say: Progress) -> int:
    base_ms = newest_customer_ms + 1
    wait_s = (base_ms + plan.total // ROWS_PER_MS + 1 - time.time() * 1000) / 1000
    if wait_s > 0:
        say(f"waiting {wait_s:.1f}s so that the loaded history lies in the past")
        time.sleep(wait_s)
    return base_ms


def _check_precondition(customers: int, adjustments: int) -> None:
    if customers != CUSTOMER_COUNT + 1 or adjustments != 0:
        raise RuntimeError(
            f"bulk load needs {CUSTOMER_COUNT + 1} bench customers without adjustments;"
            f" found {customers} such customers and {adjustments} adjustments"
        )


def _tips_sql(tips: list[Tip]) -> str:
    values = ",\n".join(
        f"('{c}', {balance}, {seq}, '{aid}', {ms}, '{h}')" for c, balance, seq, aid, ms, h in tips
    )
    return f"""
UPDATE loyalty_balances AS b
   SET balance_hundredths = v.balance, last_seq = v.seq, last_adjustment_id = v.id,
       updated_at_ms = v.ms, last_hash = v.hash
  FROM (VALUES {values}) AS v(customer_id, balance, seq, id, ms, hash)
 WHERE b.customer_id = v.customer_id;
"""


def _last_position_sql(first_position: int, chunk: Chunk) -> str:
    last = first_position + chunk.high - 1
    return f"UPDATE loyalty_event_sequence SET last_position = {last} WHERE id = 1;\n"


def load_postgresql(url: str, plan: LoadPlan, say: Progress) -> None:
    customers, adjustments, newest, created_by, last = psql(url, _PRECONDITION).split("|")
    _check_precondition(int(customers), int(adjustments))
    base_ms = _base_ms(plan, int(newest), say)
    started = time.monotonic()
    copy = f"COPY loyalty_adjustments ({', '.join(COLUMNS)}) FROM STDIN;\n"
    copy_events = f"COPY loyalty_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN;\n"
    first = int(last) + 1
    for chunk in _chunks(plan, "postgresql", base_ms, created_by or None, first):
        # The data follows COPY in psql's own input, up to the \. line.
        psql(
            url,
            f"{copy}{chunk.copy_text}\\.\n{copy_events}{chunk.events_copy_text}\\.\n"
            f"{_tips_sql(chunk.tips)}{_last_position_sql(first, chunk)}",
            single_transaction=True,
        )
        say(f"loaded {chunk.high:,} of {plan.total:,} ({time.monotonic() - started:.0f}s)")
    # What autovacuum would do soon after such a load, done now so that it does not run in
    # the middle of a measurement: visibility map, hint bits and planner statistics.
    psql(url, "VACUUM (ANALYZE) loyalty_adjustments;")
    psql(url, "VACUUM (ANALYZE) loyalty_balances;")
    psql(url, "VACUUM (ANALYZE) loyalty_events;")
    say(f"vacuumed and analyzed ({time.monotonic() - started:.0f}s)")


_SQLITE_INSERT = (
    f"INSERT INTO loyalty_adjustments ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in COLUMNS)})"
)
_SQLITE_EVENT = (
    f"INSERT INTO loyalty_events ({', '.join(EVENT_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)
_SQLITE_TIP = (
    "UPDATE loyalty_balances SET balance_hundredths = ?, last_seq = ?, last_adjustment_id = ?,"
    " updated_at_ms = ?, last_hash = ? WHERE customer_id = ?"
)


def load_sqlite(path: str, plan: LoadPlan, say: Progress) -> None:
    conn = sqlite_connect(path)
    try:
        row = conn.execute(_PRECONDITION).fetchone()
        customers, adjustments, newest, created_by, last = row
        _check_precondition(customers, adjustments)
        base_ms = _base_ms(plan, newest, say)
        started = time.monotonic()
        first = last + 1
        for chunk in _chunks(plan, "sqlite", base_ms, created_by, first):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_SQLITE_INSERT, chunk.rows)
                conn.executemany(_SQLITE_EVENT, chunk.events)
                conn.execute(
                    "UPDATE loyalty_event_sequence SET last_position = ? WHERE id = 1",
                    (first + chunk.high - 1,),
                )
                conn.executemany(
                    _SQLITE_TIP, [(b, s, a, ms, h, c) for c, b, s, a, ms, h in chunk.tips]
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            say(f"loaded {chunk.high:,} of {plan.total:,} ({time.monotonic() - started:.0f}s)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
