"""A stateful property test: random sequences of customer creation, adjustments (valid,
invalid, keyed, replayed, too large a redemption, with references, metadata and expires_at),
reversals (whole, partial, too large, of what cannot be reversed), pending points (released
later, soon or at once, by hand or by the scheduler; voided), bulk adjustments (atomic and
not) and reads, over HTTP against a real server on SQLite and on PostgreSQL whose scheduler
runs every 0.1 s, compared after every step with an exact model.

The model knows each customer's adjustments in order and replays them into what is left of
each expiring credit (debits take the soonest-expiring points first). What the scheduler
records by itself (expirations, releases at release_at) is learned from the history and
checked against the model: an expiration takes exactly what is left of its credit, after its
expires_at, once; a release records the held points after release_at, once. Before each step
the model waits for whatever falls due within GUARD_MS, so that no request races the
scheduler and every outcome is exact.

After every step the invariants of SPEC section 6 are checked through the API for the
customers the step touched (all of them while there are few): the balance is the exact sum
of the model's deltas, `pending` the sum of the held points, `next_expiration` the soonest
credit's remainder; the history is the model's adjustments newest first with every field,
each balance_after is the previous one plus its delta and never below zero, ids strictly
increase and created_at never decreases oldest first. For the customers the step touched,
also each hash is recomputed along the chain, the expirations list is what is left of each
credit, the pending list is the model's, and each reversed adjustment's reversed_points is
the model's total (never above its own amount). A rejected request is never added to the
model, so these checks also show that it changed nothing. At the end `loyalty verify`
passes over the whole database.

LOYALTY_STATEFUL_EXAMPLES (default 20) and LOYALTY_STATEFUL_STEPS (default 30) make the run
longer; the number of steps run is printed at the end (`pytest -s` shows it).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import backend_fixture
from tests.support import (
    ADJ_ID,
    ADJUSTMENT_FIELDS,
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    HASH,
    PENDING_FIELDS,
    PND_ID,
    TIMESTAMP,
    Backend,
    assert_verify,
    chained_hash,
    iso_in,
)

EXAMPLES = int(os.environ.get("LOYALTY_STATEFUL_EXAMPLES", "20"))
STEPS = int(os.environ.get("LOYALTY_STATEFUL_STEPS", "30"))
ADJUST = "/admin/loyalty/points/adjust"
DELTA_MESSAGE = "delta must be a non-zero number"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
PAGE = 100
# Every customer is checked after every step while there are at most this many.
CHECK_ALL_UP_TO = 6
HISTORY_ITEM_KEYS = {"id", "delta", "reason", "balance_after", "created_at"}
ADJUST_KEYS = {"id", "customer_id", "balance_after", "updated_at"}
BALANCE_KEYS = {"customer_id", "balance", "updated_at", "pending", "next_expiration"}
# The server's scheduler runs this often; whatever falls due within GUARD_MS of a step is
# waited for (and recorded by the scheduler) before the step, so that no step races it.
SCHEDULER_INTERVAL = "0.1"
GUARD_MS = 500
SETTLE_TIMEOUT_S = 20.0
# How far ahead credits expire and held points are released: some within a run, some not.
SOON_S = [0.3, 1.0, 3600.0, 3600.0]

# Deltas with at most 2 places within ±1000, leaning positive so balances build up.
_magnitudes = st.decimals(
    min_value=Decimal("0.01"), max_value=Decimal("1000"), places=2, allow_nan=False
)
deltas = st.one_of(_magnitudes, _magnitudes, _magnitudes.map(lambda d: -d))
reasons = st.one_of(
    st.none(),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40),
)
include_history = st.sampled_from([None, "true", "1", "false", "0"])
BULK_KINDS = [
    "ok",
    "ok",
    "ok",
    "unknown",
    "zero",
    "reference",
    "taken reference",
    "expiring",
    "bad expiry",
]
metadatas = st.none() | st.dictionaries(
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    max_size=3,
)

# Invalid adjust bodies: (what, JSON text with {cid} for the customer id, the field blamed).
# Every delta case gets its own precise message; only a zero keeps the seed's (SPEC 8.4).
_TOO_LARGE = "delta must be at most 1000000000 in absolute value; {} is too large"
_INVALID_DELTAS = [
    ("zero", "0", DELTA_MESSAGE),
    ("zero with places", "0.00", DELTA_MESSAGE),
    ("negative zero", "-0", DELTA_MESSAGE),
    ("zero with an exponent", "0e5", DELTA_MESSAGE),
    ("three places", "1.005", "delta must have at most 2 decimal places; 1.005 has 3"),
    ("three places, negative", "-0.001", "delta must have at most 2 decimal places; -0.001 has 3"),
    ("many places", "2.500001", "delta must have at most 2 decimal places; 2.500001 has 6"),
    ("string", '"10"', "delta must be a number, not a string"),
    ("boolean", "true", "delta must be a number, not a boolean"),
    (
        "null",
        "null",
        "delta must be a number, not null (JSON.stringify sends NaN and Infinity as null)",
    ),
    ("too large", "1000000000.01", _TOO_LARGE.format("1000000000.01")),
    ("too small", "-1000000000.01", _TOO_LARGE.format("-1000000000.01")),
    ("array", "[1]", "delta must be a number, not an array"),
]
_DELTA_MESSAGES = {
    '{"customer_id": "{cid}", "delta": ' + delta + "}": message
    for _, delta, message in _INVALID_DELTAS
}
INVALID_BODIES: list[tuple[str, str, str | None]] = [
    *(
        (what, '{"customer_id": "{cid}", "delta": ' + delta + "}", "delta")
        for what, delta, _ in _INVALID_DELTAS
    ),
    ("missing delta", '{"customer_id": "{cid}"}', "delta"),
    ("unknown field", '{"customer_id": "{cid}", "delta": 5, "points": 5}', "points"),
    ("customer_id not a string", '{"customer_id": 12, "delta": 5}', "customer_id"),
    ("missing customer_id", '{"delta": 5}', "customer_id"),
    ("reason not a string", '{"customer_id": "{cid}", "delta": 5, "reason": 7}', "reason"),
    (
        "reason too long",
        '{"customer_id": "{cid}", "delta": 5, "reason": "' + "r" * 1001 + '"}',
        "reason",
    ),
    ("not an object", '[{"customer_id": "{cid}", "delta": 5}]', None),
    ("not JSON", '{"customer_id": "{cid}", "delta": 5', None),
]


def loads(text: str) -> Any:
    """JSON with every number as an exact Decimal (integers too, so renderings can be
    compared: Decimal('150') and Decimal('150.0') differ as text)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def render(points: Decimal) -> str:
    """The one exact rendering SPEC section 2 allows: 150, 100.01, 0.3, -2.5."""
    text = format(points.quantize(Decimal("0.01")), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def assert_points(value: Any, expected: Decimal, what: str) -> None:
    assert isinstance(value, Decimal), f"{what}: {value!r} is not a JSON number"
    assert str(value) == render(expected), f"{what}: got {value}, expected {render(expected)}"


def ms_of(timestamp: str) -> int:
    """Milliseconds since the epoch of an API timestamp."""
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def adjust_body(customer_id: str, delta: str, reason: str | None, with_reason: bool) -> bytes:
    fields = [f'"customer_id": {json.dumps(customer_id)}', f'"delta": {delta}']
    if with_reason:
        fields.append(f'"reason": {json.dumps(reason)}')
    return ("{" + ", ".join(fields) + "}").encode()


def delta_json(delta: Decimal, form: int) -> str:
    """The delta as a JSON number in one of several exact spellings."""
    if form == 1:  # hundredths with an exponent: 1250e-2
        return f"{int(delta * 100)}e-2"
    if form == 2:  # always two places: 12.50
        return format(delta.quantize(Decimal("0.01")), "f")
    return render(delta)


@dataclass
class Entry:
    """One adjustment as the model knows it. A reversal's default reason is the service's
    choice: `reason_known` is False until the first read shows it."""

    id: str
    delta: Decimal
    reason: str | None
    created_at: str
    type: str = "adjustment"
    created_by: str | None = None
    reference: str | None = None
    metadata: dict[str, str] | None = None
    expires_at: str | None = None
    reverses: str | None = None
    pending_id: str | None = None
    reason_known: bool = True


@dataclass
class Lot:
    """What is left of a credit that expires."""

    adjustment_id: str
    expires_at: str
    remaining: Decimal

    @property
    def order(self) -> tuple[int, str]:
        return ms_of(self.expires_at), self.adjustment_id


@dataclass
class Held:
    """Pending points as the model knows them."""

    id: str
    customer_id: str
    points: Decimal
    reason: str | None
    reference: str | None
    metadata: dict[str, str] | None
    expires_at: str | None
    release_at: str
    status: str = "pending"
    adjustment_id: str | None = None


@dataclass
class Kept:
    """A kept Idempotency-Key: the first request and the response it got."""

    customer_id: str
    delta: Decimal
    reason: str | None
    with_reason: bool
    form: int
    query: str
    body: bytes
    response: str


class LedgerMachine(RuleBasedStateMachine):
    """The model: each customer's adjustments in order, exactly; the keys that were kept;
    the pending points; the references; how much of each adjustment was reversed."""

    backend: ClassVar[Backend]
    admin_id: ClassVar[str]
    runs: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    requests: ClassVar[int] = 0
    waited_s: ClassVar[float] = 0.0
    rules_run: ClassVar[Counter[str]]

    customers = Bundle("customers")
    kept_keys = Bundle("kept_keys")

    def __init__(self) -> None:
        super().__init__()
        type(self).runs += 1
        self.client = self.backend.client()
        self.ledgers: dict[str, list[Entry]] = {}
        self.emails: dict[str, str] = {}
        self.keys: dict[str, Kept] = {}
        # Keys sent only with requests that failed: never kept, so free to use again.
        self.unused_keys: list[str] = []
        self.touched: set[str] = set()
        self.held: dict[str, Held] = {}
        # Each customer's references, and what holds each (an adjustment or pending points).
        self.references: dict[str, dict[str, str]] = {}
        self.reversed: dict[str, Decimal] = {}

    def teardown(self) -> None:
        self.client.close()

    # -- helpers -------------------------------------------------------------------------

    def _step(self, name: str, *customer_ids: str) -> None:
        """Counts the step, and brings the model of each customer it touches up to what the
        scheduler has recorded meanwhile, so that nothing falls due while it runs."""
        type(self).steps += 1
        self.rules_run[name] += 1
        self.touched = set(customer_ids)
        for customer_id in sorted(self.touched):
            if customer_id in self.ledgers:
                self._settle(customer_id)

    def _entry(self, adjustment_id: str) -> Entry | None:
        for ledger in self.ledgers.values():
            for entry in ledger:
                if entry.id == adjustment_id:
                    return entry
        return None

    def _lots(self, customer_id: str, upto: int | None = None) -> dict[str, Lot]:
        """What is left of each expiring credit after the customer's first `upto` adjustments
        (all by default): debits take the soonest-expiring points first (SPEC 7.3)."""
        lots: dict[str, Lot] = {}
        for entry in self.ledgers[customer_id][:upto]:
            if entry.type == "expiration":
                assert entry.metadata is not None
                lots[entry.metadata["adjustment_id"]].remaining += entry.delta
            elif entry.delta > 0:
                if entry.expires_at is not None:
                    lots[entry.id] = Lot(entry.id, entry.expires_at, entry.delta)
            else:
                wanted = -entry.delta
                for lot in sorted(lots.values(), key=lambda lot: lot.order):
                    taken = min(wanted, lot.remaining)
                    lot.remaining -= taken
                    wanted -= taken
        return {key: lot for key, lot in lots.items() if lot.remaining > 0}

    def _pending_sum(self, customer_id: str) -> Decimal:
        return sum(
            (
                held.points
                for held in self.held.values()
                if held.customer_id == customer_id and held.status == "pending"
            ),
            Decimal(0),
        )

    def _due(self, customer_id: str, within_ms: int) -> tuple[list[Lot], list[Held]]:
        """The credits that expire and the pending points that are released within
        `within_ms` from now."""
        limit = now_ms() + within_ms
        lots = [lot for lot in self._lots(customer_id).values() if ms_of(lot.expires_at) <= limit]
        held = [
            h
            for h in self.held.values()
            if h.customer_id == customer_id
            and h.status == "pending"
            and ms_of(h.release_at) <= limit
        ]
        return lots, held

    def _settle(self, customer_id: str) -> None:
        """Waits until whatever of the customer falls due within GUARD_MS has fallen due and
        the scheduler has recorded it (expirations, releases), and learns those adjustments,
        each checked against the model: an expiration takes exactly what is left of its
        credit, once, after its expires_at; a release records the held points, once, after
        release_at."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            lots, held = self._due(customer_id, GUARD_MS)
            if not lots and not held:
                return
            latest = max(
                [ms_of(lot.expires_at) for lot in lots] + [ms_of(h.release_at) for h in held]
            )
            wait_s = (latest - now_ms()) / 1000
            if wait_s > 0:
                type(self).waited_s += wait_s + 0.02
                time.sleep(wait_s + 0.02)
            if not self._learn(customer_id):
                assert time.monotonic() < deadline, (
                    f"{customer_id}: the scheduler did not record {lots} {held}"
                )
                type(self).waited_s += 0.05
                time.sleep(0.05)

    def _learn(self, customer_id: str) -> bool:
        """Takes in the adjustments the service recorded by itself since the model's last
        one; True when there were any."""
        ledger = self.ledgers[customer_id]
        items = list(reversed(self._history(customer_id)))
        known = [item["id"] for item in items[: len(ledger)]]
        assert known == [entry.id for entry in ledger], f"{customer_id}: {known}"
        for item in items[len(ledger) :]:
            assert item["created_by"] is None, item
            assert item["reverses"] is None, item
            if item["type"] == "expiration":
                lots = self._lots(customer_id)
                credit = item["metadata"]["adjustment_id"]
                assert credit in lots, f"an expiration of nothing left: {item}, {lots}"
                lot = lots[credit]
                assert item["created_at"] >= lot.expires_at, ("expired early", item, lot)
                assert item["metadata"] == {"adjustment_id": credit}, item
                assert item["reason"] == "Points expired", item
                assert item["pending_id"] is None, item
                assert_points(item["delta"], -lot.remaining, f"expiration of {credit}")
                entry = Entry(
                    item["id"],
                    -lot.remaining,
                    item["reason"],
                    item["created_at"],
                    type="expiration",
                    metadata=item["metadata"],
                    reference=item["reference"],
                    expires_at=item["expires_at"],
                )
            else:
                assert item["type"] == "release", f"an adjustment the model did not make: {item}"
                held = self.held.get(item["pending_id"])
                assert held is not None and held.customer_id == customer_id, item
                assert held.status == "pending", ("released twice", item, held)
                assert item["created_at"] >= held.release_at, ("released early", item, held)
                held.status, held.adjustment_id = "released", item["id"]
                entry = self._release_entry(held, item["id"], item["created_at"], None)
            ledger.append(entry)
        return len(items) > len(known)

    def _release_entry(
        self, held: Held, adjustment_id: str, created_at: str, created_by: str | None
    ) -> Entry:
        return Entry(
            adjustment_id,
            held.points,
            held.reason,
            created_at,
            type="release",
            created_by=created_by,
            reference=held.reference,
            metadata=held.metadata,
            expires_at=held.expires_at,
            pending_id=held.id,
        )

    def _history(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's whole history, newest first, in pages."""
        items: list[dict[str, Any]] = []
        count = None
        while count is None or len(items) < count:
            response = self._request(
                "GET",
                f"/admin/loyalty/points/{customer_id}/history",
                params={"limit": PAGE, "offset": len(items)},
            )
            assert response.status_code == 200, response.text
            page = loads(response.text)
            assert page["limit"] == PAGE and page["offset"] == len(items), page
            count = int(page["count"])
            assert page["adjustments"] or len(items) >= count, page
            items.extend(page["adjustments"])
        assert count == len(items)
        return items

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        type(self).requests += 1
        response = self.client.request(method, url, **kwargs)
        assert response.status_code < 500, f"{method} {url}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json"), response.headers
        return response

    def _post_adjust(self, query: str, body: str | bytes, key: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        content = body.encode() if isinstance(body, str) else body
        return self._request("POST", ADJUST + query, content=content, headers=headers)

    def _balance(self, customer_id: str) -> Decimal:
        return sum((entry.delta for entry in self.ledgers[customer_id]), Decimal(0))

    @staticmethod
    def _error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body: dict[str, Any] = loads(response.text)
        assert body["type"] == kind, body
        assert isinstance(body["message"], str) and body["message"], body
        assert "Idempotent-Replayed" not in response.headers
        return body

    def _adjust(
        self,
        customer_id: str,
        delta: Decimal,
        reason: str | None,
        history: str | None,
        form: int,
        key: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, bytes, httpx.Response]:
        """Sends one adjustment and checks the outcome the model predicts; on a 200 the
        model records it. Returns the query, the body and the response. `extra`: the
        body's reference, metadata and expires_at."""
        # An explicit null reason is the same as none.
        body = adjust_body(
            customer_id, delta_json(delta, form), reason, reason is not None or form == 2
        )
        extra = extra or {}
        if extra:
            body = (
                body[:-1]
                + b"".join(
                    f", {json.dumps(name)}: {json.dumps(value)}".encode()
                    for name, value in extra.items()
                )
                + b"}"
            )
        query = "" if history is None else f"?include_history={history}"
        response = self._post_adjust(query, body, key)
        balance = self._balance(customer_id)
        if balance + delta < 0:  # negative balances are forbidden by default
            error = self._error(response, 400, "not_allowed")
            numbers = NUMBER.findall(error["message"])
            assert render(balance) in numbers, f"the message must say the balance: {error}"
            if key is not None:
                self.unused_keys.append(key)
            return query, body, response
        assert response.status_code == 200, response.text
        assert "Idempotent-Replayed" not in response.headers
        result = loads(response.text)
        assert ADJUST_KEYS <= set(result) <= ADJUST_KEYS | {"history"}, result
        assert ADJ_ID.match(result["id"]), result
        assert result["customer_id"] == customer_id
        assert_points(result["balance_after"], balance + delta, "balance_after")
        assert TIMESTAMP.match(result["updated_at"]), result
        ledger = self.ledgers[customer_id]
        if ledger:
            assert result["id"] > ledger[-1].id, "ids must strictly increase"
            assert result["updated_at"] >= ledger[-1].created_at, "time must not go back"
        self._record(
            customer_id,
            Entry(
                result["id"],
                delta,
                reason,
                result["updated_at"],
                created_by=self.admin_id,
                reference=extra.get("reference"),
                metadata=extra.get("metadata"),
                expires_at=extra.get("expires_at"),
            ),
        )
        if history in ("true", "1"):
            self._check_items(customer_id, result["history"], newest_first=True, limit=20)
            assert result["history"][0]["id"] == result["id"]
            assert all(set(item) == HISTORY_ITEM_KEYS for item in result["history"])
        else:
            assert "history" not in result, "no history key without include_history"
        return query, body, response

    def _record(self, customer_id: str, entry: Entry) -> None:
        """`entry` last in the customer's ledger, and its reference (if any) taken by it."""
        self.ledgers[customer_id].append(entry)
        if entry.reference is not None:
            self.references[customer_id][entry.reference] = entry.id

    def _check_items(
        self,
        customer_id: str,
        items: list[dict[str, Any]],
        newest_first: bool,
        limit: int = PAGE,
        offset: int = 0,
        entries: list[Entry] | None = None,
    ) -> None:
        """`items` are the model's adjustments (or `entries`), in the order asked."""
        ledger = self.ledgers[customer_id]
        afters: dict[str, Decimal] = {}
        running = Decimal(0)
        for entry in ledger:
            running += entry.delta
            afters[entry.id] = running
        expected = list(ledger if entries is None else entries)
        if newest_first:
            expected.reverse()
        expected = expected[offset : offset + limit]
        assert [item["id"] for item in items] == [e.id for e in expected], (
            f"{customer_id}: ids {[item['id'] for item in items]} != {[e.id for e in expected]}"
        )
        for item, entry in zip(items, expected, strict=True):
            assert set(item) >= HISTORY_ITEM_KEYS, item
            assert_points(item["delta"], entry.delta, f"delta of {entry.id}")
            assert_points(item["balance_after"], afters[entry.id], f"balance_after of {entry.id}")
            if not entry.reason_known:
                assert item["reason"] is None or isinstance(item["reason"], str), item
                entry.reason, entry.reason_known = item["reason"], True
            assert item["reason"] == entry.reason, item
            assert item["created_at"] == entry.created_at, item
            if set(item) == HISTORY_ITEM_KEYS:
                continue  # the seed's item, in the adjust response
            assert set(item) == ADJUSTMENT_FIELDS, item
            assert item["customer_id"] == customer_id, item
            expected_fields = {
                "type": entry.type,
                "created_by": entry.created_by,
                "reference": entry.reference,
                "metadata": entry.metadata,
                "expires_at": entry.expires_at,
                "reverses": entry.reverses,
                "pending_id": entry.pending_id,
            }
            assert {name: item[name] for name in expected_fields} == expected_fields, item
            assert HASH.match(item["hash"]), item

    def _check_customer(self, customer_id: str, in_full: bool) -> None:
        """Balance and the whole history through the API against the model (SPEC 6), and
        when `in_full` the hash chain, the expiring credits, the pending points and the
        reversed totals too (SPEC 6, invariants 7 and 8)."""
        self._settle(customer_id)
        ledger = self.ledgers[customer_id]
        response = self._request("GET", f"/admin/loyalty/points/{customer_id}")
        assert response.status_code == 200, response.text
        balance = loads(response.text)
        assert set(balance) == BALANCE_KEYS, balance
        assert balance["customer_id"] == customer_id
        assert_points(balance["balance"], self._balance(customer_id), f"balance of {customer_id}")
        assert balance["updated_at"] == (ledger[-1].created_at if ledger else None), balance
        assert_points(balance["pending"], self._pending_sum(customer_id), "pending")
        lots = sorted(self._lots(customer_id).values(), key=lambda lot: lot.order)
        if lots:
            soonest = balance["next_expiration"]
            assert soonest is not None and soonest["expires_at"] == lots[0].expires_at, balance
            assert_points(soonest["points"], lots[0].remaining, "next_expiration")
        else:
            assert balance["next_expiration"] is None, balance

        items = self._history(customer_id)
        assert len(items) == len(ledger), f"{customer_id}: count {len(items)}, model {len(ledger)}"
        self._check_items(customer_id, items, newest_first=True, limit=len(items) + 1)
        # The chain, from the API's own numbers: oldest first, each balance_after is the
        # previous one plus its delta, ids strictly increase, created_at never decreases.
        previous_after, previous_id, previous_at = Decimal(0), "", ""
        previous_hash = "0" * 64
        for item in reversed(items):
            assert item["balance_after"] == previous_after + item["delta"], item
            assert item["id"] > previous_id, item
            assert TIMESTAMP.match(item["created_at"]) and item["created_at"] >= previous_at
            assert item["balance_after"] >= 0, item
            if in_full:
                assert item["hash"] == chained_hash(previous_hash, item), ("hash", item)
            previous_after, previous_id, previous_at, previous_hash = (
                item["balance_after"],
                item["id"],
                item["created_at"],
                item["hash"],
            )
        assert previous_after == balance["balance"], "the balance is the last balance_after"
        if in_full:
            if any(entry.expires_at is not None for entry in ledger):
                self._check_expirations(customer_id, lots)
            if any(held.customer_id == customer_id for held in self.held.values()):
                self._check_pending(customer_id)
            self._check_reversed(customer_id)

    def _check_expirations(self, customer_id: str, lots: list[Lot]) -> None:
        response = self._request(
            "GET", f"/admin/loyalty/points/{customer_id}/expirations", params={"limit": 100}
        )
        assert response.status_code == 200, response.text
        page = loads(response.text)
        assert page["count"] == len(lots), (page, lots)
        assert [e["adjustment_id"] for e in page["expirations"]] == [
            lot.adjustment_id for lot in lots
        ], (page, lots)
        for shown, lot in zip(page["expirations"], lots, strict=True):
            assert shown["expires_at"] == lot.expires_at, shown
            assert_points(shown["points"], lot.remaining, f"what is left of {lot.adjustment_id}")

    def _check_pending(self, customer_id: str) -> None:
        response = self._request(
            "GET", f"/admin/loyalty/points/{customer_id}/pending", params={"limit": 100}
        )
        assert response.status_code == 200, response.text
        page = loads(response.text)
        mine = sorted(
            (h for h in self.held.values() if h.customer_id == customer_id),
            key=lambda h: h.id,
            reverse=True,
        )
        assert page["count"] == len(mine), page
        assert [(p["id"], p["status"], p["adjustment_id"]) for p in page["pending"]] == [
            (h.id, h.status, h.adjustment_id) for h in mine
        ], page
        for shown, held in zip(page["pending"], mine, strict=True):
            assert_points(shown["points"], held.points, f"points of {held.id}")

    def _check_reversed(self, customer_id: str) -> None:
        """Each reversed adjustment's reversed_points is the model's total, never above its
        own amount, and its reversals' deltas add up to it."""
        ledger = self.ledgers[customer_id]
        for entry in ledger:
            total = self.reversed.get(entry.id, Decimal(0))
            if not total:
                continue
            assert total <= abs(entry.delta), f"{entry.id} reversed past its own amount"
            reversals = [e.delta for e in ledger if e.reverses == entry.id]
            assert abs(sum(reversals, Decimal(0))) == total, (entry, reversals)
            detail = self._adjustment(entry.id)
            assert_points(detail["reversed_points"], total, f"reversed of {entry.id}")

    def _adjustment(self, adjustment_id: str) -> dict[str, Any]:
        """GET /admin/loyalty/adjustments/{id}: the object and its reversed_points."""
        response = self._request("GET", f"/admin/loyalty/adjustments/{adjustment_id}")
        assert response.status_code == 200, response.text
        body = loads(response.text)
        assert set(body) == {"adjustment"}, body
        detail: dict[str, Any] = body["adjustment"]
        assert set(detail) == ADJUSTMENT_FIELDS | {"reversed_points"}, detail
        assert detail["id"] == adjustment_id
        return detail

    # -- rules ---------------------------------------------------------------------------

    @initialize(target=customers, chosen=st.booleans())
    def first_customer(self, chosen: bool) -> str:
        return self.create_customer(chosen, None)

    @rule(target=customers, chosen=st.booleans(), name=st.none() | st.text(max_size=10))
    def create_customer(self, chosen: bool, name: str | None) -> str:
        body: dict[str, Any] = {"email": f"sm-{uuid.uuid4().hex[:12]}@Example.com"}
        if chosen:  # a caller-chosen id, as when mirroring another system's customers
            body["id"] = f"sm_{uuid.uuid4().hex[:16]}-X"
        if name is not None and "\x00" not in name:
            body["first_name"] = name
        response = self._request("POST", "/admin/customers", json=body)
        assert response.status_code == 200, response.text
        customer = loads(response.text)["customer"]
        if chosen:
            assert customer["id"] == body["id"]
        else:
            assert customer["id"].startswith("cus_") and len(customer["id"]) == 30, customer
        assert customer["email"] == body["email"]
        assert customer["created_at"] == customer["updated_at"], customer
        customer_id: str = customer["id"]
        assert customer_id not in self.ledgers
        self.ledgers[customer_id] = []
        self.references[customer_id] = {}
        self.emails[customer_id] = body["email"]
        self._step("create_customer", customer_id)
        return customer_id

    @rule(customer=customers, same_id=st.booleans())
    def create_duplicate(self, customer: str, same_id: bool) -> None:
        """The same id, or the same email in another case: 409, and nothing changes."""
        self._step("create_duplicate", customer)
        if same_id:
            body = {"email": f"sm-{uuid.uuid4().hex[:12]}@example.com", "id": customer}
        else:
            body = {"email": self.emails[customer].swapcase()}
        self._error(self._request("POST", "/admin/customers", json=body), 409, "conflict")
        response = self._request("GET", f"/admin/customers/{customer}")
        assert response.status_code == 200, response.text
        assert loads(response.text)["customer"]["email"] == self.emails[customer]

    @rule(
        customer=customers,
        delta=deltas,
        reason=reasons,
        history=include_history,
        form=st.integers(0, 2),
    )
    def adjust(
        self, customer: str, delta: Decimal, reason: str | None, history: str | None, form: int
    ) -> None:
        self._step("adjust", customer)
        self._adjust(customer, delta, reason, history, form)

    @rule(customer=customers, delta=_magnitudes, reason=reasons, history=include_history)
    def earn(self, customer: str, delta: Decimal, reason: str | None, history: str | None) -> None:
        """Points in: so that balances grow and redemptions have something to take."""
        self._step("earn", customer)
        self._adjust(customer, delta, reason, history, 0)

    @rule(customer=customers, over=_magnitudes, reason=reasons)
    def redeem_more_than_the_balance(
        self, customer: str, over: Decimal, reason: str | None
    ) -> None:
        """400 not_allowed naming the balance, and nothing recorded."""
        self._step("redeem_more_than_the_balance", customer)
        delta = -(self._balance(customer) + over)
        _, _, response = self._adjust(customer, delta, reason, None, 0)
        assert response.status_code == 400

    @rule(
        customer=customers,
        case=st.sampled_from(INVALID_BODIES),
        keyed=st.booleans(),
        history=include_history,
    )
    def adjust_invalid(
        self, customer: str, case: tuple[str, str, str | None], keyed: bool, history: str | None
    ) -> None:
        """Each invalid body: the exact 400, and nothing changes."""
        self._step("adjust_invalid", customer)
        what, template, field = case
        key = f"bad-{uuid.uuid4()}" if keyed else None
        query = "" if history is None else f"?include_history={history}"
        response = self._post_adjust(query, template.replace("{cid}", customer), key)
        error = self._error(response, 400, "invalid_data")
        if field == "delta":
            expected = _DELTA_MESSAGES.get(template, "delta is required")
            assert error["message"] == expected, (what, error)
        if field is not None:
            assert field in [e["field"] for e in error.get("errors", [])], (what, error)
        if key is not None:
            self.unused_keys.append(key)

    @rule(customer=customers, how=st.sampled_from(["content type", "query"]))
    def adjust_badly_sent(self, customer: str, how: str) -> None:
        """A valid body with another content type, or a bad include_history: 400."""
        self._step("adjust_badly_sent", customer)
        body = f'{{"customer_id": {json.dumps(customer)}, "delta": 5}}'.encode()
        if how == "content type":
            response = self._request(
                "POST", ADJUST, content=body, headers={"Content-Type": "text/plain"}
            )
        else:
            response = self._post_adjust("?include_history=yes", body)
        self._error(response, 400, "invalid_data")

    @rule(delta=deltas, keyed=st.booleans())
    def adjust_unknown_customer(self, delta: Decimal, keyed: bool) -> None:
        """404 with the seed's message, and no customer appears."""
        customer = f"nobody-{uuid.uuid4().hex[:12]}"
        self._step("adjust_unknown_customer")
        key = f"unknown-{uuid.uuid4()}" if keyed else None
        body = f'{{"customer_id": "{customer}", "delta": {render(delta)}}}'
        error = self._error(self._post_adjust("", body, key), 404, "not_found")
        assert error["message"] == f"Customer with id: {customer} was not found", error
        for path in (
            f"/admin/loyalty/points/{customer}",
            f"/admin/loyalty/points/{customer}/history",
        ):
            self._error(self._request("GET", path), 404, "not_found")
        if key is not None:
            self.unused_keys.append(key)

    @rule(
        target=kept_keys,
        customer=customers,
        delta=deltas,
        reason=reasons,
        history=include_history,
        form=st.integers(0, 2),
        reuse=st.booleans(),
    )
    def adjust_with_key(
        self,
        customer: str,
        delta: Decimal,
        reason: str | None,
        history: str | None,
        form: int,
        reuse: bool,
    ) -> Any:
        """A fresh key, or one only failed requests used (those are never kept): it runs."""
        self._step("adjust_with_key", customer)
        key = self.unused_keys.pop() if reuse and self.unused_keys else f"sm-{uuid.uuid4()}"
        query, body, response = self._adjust(customer, delta, reason, history, form, key)
        if response.status_code != 200:
            return multiple()
        with_reason = reason is not None or form == 2
        kept = Kept(customer, delta, reason, with_reason, form, query, body, response.text)
        self.keys[key] = kept
        return key

    @rule(key=kept_keys)
    def replay(self, key: str) -> None:
        """The same key and request: the first response again, byte for byte, flagged, and
        nothing recorded."""
        kept = self.keys[key]
        self._step("replay", kept.customer_id)
        response = self._post_adjust(kept.query, kept.body, key)
        assert response.status_code == 200, response.text
        assert response.headers.get("Idempotent-Replayed") == "true", response.headers
        assert response.text == kept.response

    @rule(
        key=kept_keys,
        other=customers,
        change=st.sampled_from(["delta", "reason", "query", "customer", "unknown customer"]),
    )
    def replay_changed(self, key: str, other: str, change: str) -> None:
        """The same key with another request: 422 idempotency_error, and nothing changes."""
        kept = self.keys[key]
        self._step("replay_changed", kept.customer_id, other)
        customer_id, delta, query = kept.customer_id, kept.delta, kept.query
        reason, with_reason = kept.reason, kept.with_reason
        if change == "delta":  # still valid: a 400 would come before the key is looked at
            delta += Decimal("0.01") if delta != Decimal("-0.01") else Decimal("0.02")
        elif change == "reason":
            reason, with_reason = f"{reason or ''} again", True
        elif change == "query":
            query = "?include_history=true" if query == "" else ""
        elif change == "customer":
            customer_id = other if other != customer_id else f"{other}-x"
        else:
            customer_id = f"nobody-{uuid.uuid4().hex[:12]}"
        body = adjust_body(customer_id, delta_json(delta, kept.form), reason, with_reason)
        self._error(self._post_adjust(query, body, key), 422, "idempotency_error")

    @rule(
        customer=customers,
        newest_first=st.booleans(),
        limit=st.integers(1, 100),
        offset=st.integers(0, 25),
        bound=st.sampled_from([None, "gte", "lte"]),
        pick=st.integers(0, 1000),
    )
    def read_history_page(
        self,
        customer: str,
        newest_first: bool,
        limit: int,
        offset: int,
        bound: str | None,
        pick: int,
    ) -> None:
        """A page of history in either order, optionally bounded by a created_at: the
        model's slice. Reads change nothing."""
        self._step("read_history_page", customer)
        ledger = self.ledgers[customer]
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if not newest_first:
            params["order"] = "created_at"
        entries = ledger
        if bound is not None and ledger:
            at = ledger[pick % len(ledger)].created_at
            params[f"created_at[{bound}]"] = at
            entries = [
                e for e in ledger if (e.created_at >= at if bound == "gte" else e.created_at <= at)
            ]
        response = self._request("GET", f"/admin/loyalty/points/{customer}/history", params=params)
        assert response.status_code == 200, response.text
        page = loads(response.text)
        assert (page["count"], page["limit"], page["offset"]) == (len(entries), limit, offset)
        self._check_items(customer, page["adjustments"], newest_first, limit, offset, entries)

    # -- references, expiring credits, reversals, pending points, bulk --------------------

    @rule(
        customer=customers,
        delta=_magnitudes,
        offset=st.sampled_from(SOON_S),
        referenced=st.booleans(),
        metadata=metadatas,
    )
    def earn_expiring(
        self,
        customer: str,
        delta: Decimal,
        offset: float,
        referenced: bool,
        metadata: dict[str, str] | None,
    ) -> None:
        """A credit with expires_at (soon, or much later): debits take it first, and the
        scheduler expires what is left of it."""
        self._step("earn_expiring", customer)
        extra: dict[str, Any] = {"expires_at": iso_in(offset), "metadata": metadata}
        if referenced:
            extra["reference"] = f"order-{uuid.uuid4().hex[:10]}"
        self._adjust(customer, delta, None, None, 0, extra=extra)

    @rule(customer=customers, other=customers, delta=deltas, pick=st.integers(0, 1000))
    def adjust_with_reference(self, customer: str, other: str, delta: Decimal, pick: int) -> None:
        """A reference new to this customer (possibly another customer's): it is recorded
        like any adjustment. One this customer used already, by an adjustment or pending
        points: 409 naming that one's id, and nothing recorded."""
        self._step("adjust_with_reference", customer, other)
        mine = sorted(self.references[customer])
        theirs = sorted(set(self.references[other]) - set(mine))
        if mine and pick % 3 == 0:
            reference = mine[pick % len(mine)]
            body = {"customer_id": customer, "delta": float(abs(delta)), "reference": reference}
            response = self._request("POST", ADJUST, json=body)
            error = self._error(response, 409, "conflict")
            assert self.references[customer][reference] in error["message"], error
            return
        reference = (
            theirs[pick % len(theirs)]
            if theirs and pick % 2
            else f"ref-{pick}-{uuid.uuid4().hex[:8]}"
        )
        self._adjust(customer, delta, "referenced", None, 0, extra={"reference": reference})

    @rule(
        customer=customers,
        pick=st.integers(0, 1000),
        how=st.sampled_from(["all", "all", "part", "part", "too much", "invalid", "unknown"]),
        percent=st.integers(1, 99),
        reason=st.none() | st.just("refund"),
        invalid=st.sampled_from([0, -1, "5", 1.001, True]),
        keyed=st.booleans(),
    )
    def reverse(
        self,
        customer: str,
        pick: int,
        how: str,
        percent: int,
        reason: str | None,
        invalid: Any,
        keyed: bool,
    ) -> None:
        """Reverses all, part or too much of one of the customer's adjustments (SPEC 7.2);
        with an Idempotency-Key, the same request again replays the first response."""
        self._step("reverse", customer)
        ledger = self.ledgers[customer]
        if how == "unknown" or not ledger:
            unknown = f"adj_{'0' * 26}"
            response = self._request(
                "POST", f"/admin/loyalty/adjustments/{unknown}/reverse", json={}
            )
            self._error(response, 404, "not_found")
            return
        target = ledger[pick % len(ledger)]
        left = abs(target.delta) - self.reversed.get(target.id, Decimal(0))
        body: dict[str, Any] = {} if reason is None else {"reason": reason}
        if how == "part":
            body["points"] = float(
                max(
                    Decimal("0.01"),
                    (left * percent / 100).quantize(Decimal("0.01"), rounding="ROUND_DOWN"),
                )
            )
        elif how == "too much":
            body["points"] = float(left + Decimal("0.01") * percent)
        elif how == "invalid":
            body["points"] = invalid
        url = f"/admin/loyalty/adjustments/{target.id}/reverse"
        key = f"reverse-{uuid.uuid4()}" if keyed else None
        response = self._post_keyed(url, body, key)
        if how == "invalid":
            error = self._error(response, 400, "invalid_data")
            assert "points" in [e["field"] for e in error.get("errors", [])], error
            return
        if target.type not in ("adjustment", "release"):
            self._error(response, 400, "not_allowed")
            return
        if left == 0:
            if "points" in body:
                assert response.status_code in (400, 409), response.text
                assert loads(response.text)["type"] in ("not_allowed", "conflict"), response.text
            else:
                self._error(response, 409, "conflict")
            return
        points = left if "points" not in body else Decimal(str(body["points"]))
        if points > left:
            self._error(response, 400, "not_allowed")
            return
        delta = -points if target.delta > 0 else points
        balance = self._balance(customer)
        if balance + delta < 0:
            error = self._error(response, 400, "not_allowed")
            assert render(balance) in NUMBER.findall(error["message"]), error
            return
        assert response.status_code == 200, response.text
        result = loads(response.text)
        assert set(result) == ADJUST_KEYS | {"reverses"}, result
        assert result["reverses"] == target.id and result["customer_id"] == customer, result
        assert ADJ_ID.match(result["id"]) and result["id"] > ledger[-1].id, result
        assert result["updated_at"] >= ledger[-1].created_at, result
        assert_points(result["balance_after"], balance + delta, "balance_after of a reversal")
        ledger.append(
            Entry(
                result["id"],
                delta,
                reason,
                result["updated_at"],
                type="reversal",
                created_by=self.admin_id,
                reverses=target.id,
                reason_known=reason is not None,
            )
        )
        self.reversed[target.id] = self.reversed.get(target.id, Decimal(0)) + points
        self._replay(url, body, key, response)

    def _post_keyed(self, url: str, body: Any, key: str | None) -> httpx.Response:
        headers = {} if key is None else {"Idempotency-Key": key}
        return self._request("POST", url, json=body, headers=headers)

    def _replay(self, url: str, body: Any, key: str | None, first: httpx.Response) -> None:
        """The same keyed request again: the first response, byte for byte, flagged as a
        replay; the model's checks after the step show that nothing more was recorded."""
        if key is None:
            return
        again = self._post_keyed(url, body, key)
        assert again.status_code == first.status_code, again.text
        assert again.headers.get("Idempotent-Replayed") == "true", again.headers
        assert again.text == first.text

    @rule(
        customer=customers,
        amount=_magnitudes,
        release_in=st.sampled_from([-1.0, -1.0, *SOON_S]),
        expires=st.sampled_from([None, 0.5, 7200.0]),
        referenced=st.booleans(),
        reason=st.none() | st.just("return window"),
        metadata=metadatas,
    )
    def hold(
        self,
        customer: str,
        amount: Decimal,
        release_in: float,
        expires: float | None,
        referenced: bool,
        reason: str | None,
        metadata: dict[str, str] | None,
    ) -> None:
        """Pending points, released later, soon or at once (release_at in the past), some
        expiring after their release: not in the balance, only in `pending`."""
        self._step("hold", customer)
        release_at = iso_in(release_in)
        body: dict[str, Any] = {
            "customer_id": customer,
            "points": float(amount),
            "release_at": release_at,
        }
        expires_at = None
        if expires is not None:
            expires_at = iso_in(max(release_in, 0) + expires)
            body["expires_at"] = expires_at
        if reason is not None:
            body["reason"] = reason
        if metadata is not None:
            body["metadata"] = metadata
        reference = f"hold-{uuid.uuid4().hex[:10]}" if referenced else None
        if reference is not None:
            body["reference"] = reference
        response = self._request("POST", "/admin/loyalty/pending", json=body)
        assert response.status_code == 200, response.text
        pending = loads(response.text)["pending"]
        assert set(pending) == PENDING_FIELDS, pending
        assert PND_ID.match(pending["id"]), pending
        assert pending["status"] == "pending" and pending["adjustment_id"] is None, pending
        assert_points(pending["points"], amount, "points")
        assert (pending["release_at"], pending["expires_at"]) == (release_at, expires_at), pending
        assert (pending["reason"], pending["reference"], pending["metadata"]) == (
            reason,
            reference,
            metadata,
        ), pending
        self.held[pending["id"]] = Held(
            pending["id"], customer, amount, reason, reference, metadata, expires_at, release_at
        )
        if reference is not None:
            self.references[customer][reference] = pending["id"]

    @rule(
        pick=st.integers(0, 1000),
        action=st.sampled_from(["release", "void"]),
        keyed=st.booleans(),
    )
    def release_or_void(self, pick: int, action: str, keyed: bool) -> None:
        """Releasing records the held points as a `release` adjustment, once; voiding
        records nothing; either on points no longer pending: 409; unknown: 404. With an
        Idempotency-Key, the same request again replays the first response."""
        if not self.held:
            self._step(f"{action}_unknown")
            unknown = f"pnd_{'0' * 26}"
            response = self._request("POST", f"/admin/loyalty/pending/{unknown}/{action}", json={})
            self._error(response, 404, "not_found")
            return
        held = self.held[sorted(self.held)[pick % len(self.held)]]
        self._step(action, held.customer_id)
        url = f"/admin/loyalty/pending/{held.id}/{action}"
        key = f"{action}-{uuid.uuid4()}" if keyed else None
        response = self._post_keyed(url, {}, key)
        if held.status != "pending":
            self._error(response, 409, "conflict")
            return
        assert response.status_code == 200, response.text
        pending = loads(response.text)["pending"]
        assert set(pending) == PENDING_FIELDS, pending
        if action == "void":
            assert pending["status"] == "voided" and pending["adjustment_id"] is None, pending
            held.status = "voided"
            self._replay(url, {}, key, response)
            return
        assert pending["status"] == "released", pending
        assert ADJ_ID.match(pending["adjustment_id"]), pending
        ledger = self.ledgers[held.customer_id]
        detail = self._adjustment(pending["adjustment_id"])
        assert detail["type"] == "release" and detail["pending_id"] == held.id, detail
        assert not ledger or detail["id"] > ledger[-1].id, detail
        held.status, held.adjustment_id = "released", detail["id"]
        ledger.append(self._release_entry(held, detail["id"], detail["created_at"], self.admin_id))
        self._replay(url, {}, key, response)

    @rule(
        items=st.lists(
            st.tuples(st.integers(0, 1000), deltas, st.sampled_from(BULK_KINDS)),
            min_size=1,
            max_size=5,
        ),
        atomic=st.booleans(),
    )
    def bulk(self, items: list[tuple[int, Decimal, str]], atomic: bool) -> None:
        """Several adjustments at once (some with a reference or an expiry, some refused),
        applied in order: not atomic, each gets the outcome its own adjust would; atomic, all
        are recorded or none (400 naming each failing item)."""
        ids = sorted(self.ledgers)
        bodies: list[dict[str, Any]] = []
        for pick, delta, kind in items:
            customer = ids[pick % len(ids)] if kind != "unknown" else f"nobody-{pick}"
            body: dict[str, Any] = {"customer_id": customer, "delta": float(delta)}
            if kind == "zero":
                body["delta"] = 0
            elif kind == "reference":
                body["reference"] = f"bulk-{uuid.uuid4().hex[:10]}"
            elif kind == "taken reference" and self.references.get(customer):
                body["delta"] = float(abs(delta))
                taken = sorted(self.references[customer])
                body["reference"] = taken[pick % len(taken)]
            elif kind == "expiring":
                body["delta"] = float(abs(delta))
                body["expires_at"] = iso_in(SOON_S[pick % len(SOON_S)])
            elif kind == "bad expiry":
                body["delta"] = float(-abs(delta))
                body["expires_at"] = iso_in(3600)
            bodies.append(body)
        self._step("bulk", *{b["customer_id"] for b in bodies if b["customer_id"] in self.ledgers})
        balances = {c: self._balance(c) for c in self.ledgers}
        references = {c: set(refs) for c, refs in self.references.items()}
        expected: list[str | None] = []  # each item's error type, None when recorded
        for body in bodies:
            customer, delta = body["customer_id"], Decimal(str(body["delta"]))
            if delta == 0 or (delta < 0 and "expires_at" in body):
                expected.append("invalid_data")
            elif customer not in balances:
                expected.append("not_found")
            elif body.get("reference") in references[customer]:
                expected.append("conflict")
            elif balances[customer] + delta < 0:
                expected.append("not_allowed")
            else:
                balances[customer] += delta
                if "reference" in body:
                    references[customer].add(body["reference"])
                expected.append(None)
        response = self._request(
            "POST",
            "/admin/loyalty/points/bulk-adjust",
            json={"adjustments": bodies, "atomic": atomic},
        )
        failing = [i for i, kind in enumerate(expected) if kind is not None]
        if atomic and failing:
            error = self._error(response, 400, "invalid_data")
            fields = [e["field"] for e in error.get("errors", [])]
            assert fields == [f"adjustments[{i}]" for i in failing], error
            return
        assert response.status_code == 200, response.text
        results = loads(response.text)["results"]
        assert [r["index"] for r in results] == list(range(len(bodies))), results
        for result, body, kind in zip(results, bodies, expected, strict=True):
            if kind is not None:
                assert "adjustment" not in result and result["error"]["type"] == kind, result
                continue
            assert "error" not in result, result
            adjustment = result["adjustment"]
            assert set(adjustment) == ADJUST_KEYS, adjustment
            customer, delta = body["customer_id"], Decimal(str(body["delta"]))
            ledger = self.ledgers[customer]
            assert adjustment["customer_id"] == customer, adjustment
            assert_points(adjustment["balance_after"], self._balance(customer) + delta, "bulk")
            assert not ledger or adjustment["id"] > ledger[-1].id, adjustment
            self._record(
                customer,
                Entry(
                    adjustment["id"],
                    delta,
                    None,
                    adjustment["updated_at"],
                    created_by=self.admin_id,
                    reference=body.get("reference"),
                    expires_at=body.get("expires_at"),
                ),
            )

    @rule(customer=customers, pick=st.integers(0, 1000), shift_ms=st.sampled_from([-1, 0, 1]))
    def read_balance_as_of(self, customer: str, pick: int, shift_ms: int) -> None:
        """The balance at a point in time (SPEC 7.5): the balance_after of the last
        adjustment created at or before it, 0 and no updated_at before the first."""
        self._step("read_balance_as_of", customer)
        ledger = self.ledgers[customer]
        if not ledger:
            at_ms = now_ms() - 60_000
        else:
            at_ms = ms_of(ledger[pick % len(ledger)].created_at) + shift_ms
        at = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        response = self._request("GET", f"/admin/loyalty/points/{customer}", params={"as_of": at})
        assert response.status_code == 200, response.text
        body = loads(response.text)
        assert set(body) == {"customer_id", "balance", "updated_at", "as_of"}, body
        assert body["as_of"] == at and body["customer_id"] == customer, body
        balance, updated_at = Decimal(0), None
        for entry in ledger:
            if ms_of(entry.created_at) <= at_ms:
                balance += entry.delta
                updated_at = entry.created_at
        assert_points(body["balance"], balance, f"balance of {customer} as of {at}")
        assert body["updated_at"] == updated_at, (body, updated_at)

    @rule(customer=customers, limit=st.integers(1, 7))
    def read_whole_ledger(self, customer: str, limit: int) -> None:
        """GET /admin/loyalty/adjustments for one customer, paged by cursor: the model's
        adjustments newest first, each page continuing where the last ended."""
        self._step("read_whole_ledger", customer)
        seen: list[str] = []
        cursor = None
        for _ in range(len(self.ledgers[customer]) // limit + 2):
            params: dict[str, Any] = {"customer_id": customer, "limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            response = self._request("GET", "/admin/loyalty/adjustments", params=params)
            assert response.status_code == 200, response.text
            page = loads(response.text)
            assert len(page["adjustments"]) <= limit, page
            seen += [item["id"] for item in page["adjustments"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert cursor is None, "the pages did not end"
        assert seen == [entry.id for entry in reversed(self.ledgers[customer])]

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def ledger_matches_the_model(self) -> None:
        checked = self.ledgers if len(self.ledgers) <= CHECK_ALL_UP_TO else self.touched
        for customer_id in sorted(checked):
            if customer_id in self.ledgers:
                self._check_customer(customer_id, in_full=customer_id in self.touched)


ledger_backend = backend_fixture(
    "ledger_backend",
    "A one-worker server of its own whose scheduler runs every 0.1 s, so that expirations"
    " and releases happen within a run.",
    LOYALTY_SCHEDULER_INTERVAL_SECONDS=SCHEDULER_INTERVAL,
)


def test_ledger_state_machine(ledger_backend: Backend) -> None:
    backend = ledger_backend
    response = httpx.post(
        f"{backend.server.base_url}/admin/auth/token",
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    machine = type(
        f"LedgerMachine_{backend.kind}",
        (LedgerMachine,),
        {"backend": backend, "rules_run": Counter(), "admin_id": response.json()["user"]["id"]},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(
        f"\nstate machine on {backend.kind}: {machine.runs} runs, {machine.steps} steps,"
        f" {machine.requests} requests, {machine.waited_s:.1f} s waiting for the scheduler;"
        f" by rule: {dict(sorted(machine.rules_run.items()))}"
    )
    assert machine.steps > 0
    # Invariants 1-8 over the whole database, hash chains included.
    assert_verify(backend.database_url)
