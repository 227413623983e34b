"""A stateful property test: random sequences of customer creation, adjustments (valid,
invalid, keyed, replayed, too large a redemption) and reads, over HTTP against the session's
real server on SQLite and on PostgreSQL, compared after every step with an exact model.

After every step the invariants of SPEC section 6 are checked through the API for the
customers the step touched (all of them while there are few): the balance is the exact sum
of the model's deltas, the history is the model's adjustments newest first, each
balance_after is the previous one plus its delta, ids strictly increase and created_at never
decreases oldest first, and the count is the model's length. A rejected request is never
added to the model, so these checks also show that it changed nothing.

LOYALTY_STATEFUL_EXAMPLES (default 20) and LOYALTY_STATEFUL_STEPS (default 30) make the run
longer; the number of steps run is printed at the end (`pytest -s` shows it).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass
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

from tests.support import Backend

EXAMPLES = int(os.environ.get("LOYALTY_STATEFUL_EXAMPLES", "20"))
STEPS = int(os.environ.get("LOYALTY_STATEFUL_STEPS", "30"))
ADJUST = "/admin/loyalty/points/adjust"
DELTA_MESSAGE = "delta must be a non-zero number"
ADJ_ID = re.compile(r"^adj_[0-9A-HJKMNP-TV-Z]{26}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
PAGE = 100
# Every customer is checked after every step while there are at most this many.
CHECK_ALL_UP_TO = 6
HISTORY_ITEM_KEYS = {"id", "delta", "reason", "balance_after", "created_at"}
ADJUST_KEYS = {"id", "customer_id", "balance_after", "updated_at"}

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

# Invalid adjust bodies: (what, JSON text with {cid} for the customer id, the field blamed).
# Every delta case must get exactly the seed's message.
_INVALID_DELTAS = [
    ("zero", "0"),
    ("zero with places", "0.00"),
    ("negative zero", "-0"),
    ("zero with an exponent", "0e5"),
    ("three places", "1.005"),
    ("three places, negative", "-0.001"),
    ("many places", "2.500001"),
    ("string", '"10"'),
    ("boolean", "true"),
    ("null", "null"),
    ("too large", "1000000000.01"),
    ("too small", "-1000000000.01"),
    ("array", "[1]"),
]
INVALID_BODIES: list[tuple[str, str, str | None]] = [
    *(
        (what, '{"customer_id": "{cid}", "delta": ' + delta + "}", "delta")
        for what, delta in _INVALID_DELTAS
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
    """One adjustment as the model knows it."""

    id: str
    delta: Decimal
    reason: str | None
    created_at: str


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
    """The model: each customer's adjustments in order, exactly; the keys that were kept."""

    backend: ClassVar[Backend]
    runs: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    requests: ClassVar[int] = 0
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

    def teardown(self) -> None:
        self.client.close()

    # -- helpers -------------------------------------------------------------------------

    def _step(self, name: str, *customer_ids: str) -> None:
        type(self).steps += 1
        self.rules_run[name] += 1
        self.touched = set(customer_ids)

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
    ) -> tuple[str, bytes, httpx.Response]:
        """Sends one adjustment and checks the outcome the model predicts; on a 200 the
        model records it. Returns the query, the body and the response."""
        # An explicit null reason is the same as none.
        body = adjust_body(
            customer_id, delta_json(delta, form), reason, reason is not None or form == 2
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
        ledger.append(Entry(result["id"], delta, reason, result["updated_at"]))
        if history in ("true", "1"):
            self._check_items(customer_id, result["history"], newest_first=True, limit=20)
            assert result["history"][0]["id"] == result["id"]
        else:
            assert "history" not in result, "no history key without include_history"
        return query, body, response

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
            assert item["reason"] == entry.reason, item
            assert item["created_at"] == entry.created_at, item

    def _check_customer(self, customer_id: str) -> None:
        """Balance and the whole history through the API against the model (SPEC 6)."""
        ledger = self.ledgers[customer_id]
        response = self._request("GET", f"/admin/loyalty/points/{customer_id}")
        assert response.status_code == 200, response.text
        balance = loads(response.text)
        assert set(balance) == {
            "customer_id",
            "balance",
            "updated_at",
            "pending",
            "next_expiration",
        }, balance
        assert balance["customer_id"] == customer_id
        assert_points(balance["balance"], self._balance(customer_id), f"balance of {customer_id}")
        assert balance["updated_at"] == (ledger[-1].created_at if ledger else None), balance

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
        assert count == len(ledger), f"{customer_id}: count {count}, model {len(ledger)}"
        self._check_items(customer_id, items, newest_first=True, limit=len(items) + 1)
        # The chain, from the API's own numbers: oldest first, each balance_after is the
        # previous one plus its delta, ids strictly increase, created_at never decreases.
        previous_after, previous_id, previous_at = Decimal(0), "", ""
        for item in reversed(items):
            assert item["balance_after"] == previous_after + item["delta"], item
            assert item["id"] > previous_id, item
            assert TIMESTAMP.match(item["created_at"]) and item["created_at"] >= previous_at
            previous_after, previous_id, previous_at = (
                item["balance_after"],
                item["id"],
                item["created_at"],
            )
        assert previous_after == balance["balance"], "the balance is the last balance_after"

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
            assert error["message"] == DELTA_MESSAGE, (what, error)
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

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def ledger_matches_the_model(self) -> None:
        checked = self.ledgers if len(self.ledgers) <= CHECK_ALL_UP_TO else self.touched
        for customer_id in sorted(checked):
            if customer_id in self.ledgers:
                self._check_customer(customer_id)


def test_ledger_state_machine(backend: Backend) -> None:
    machine = type(
        f"LedgerMachine_{backend.kind}",
        (LedgerMachine,),
        {"backend": backend, "rules_run": Counter()},
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
        f" {machine.requests} requests; by rule: {dict(sorted(machine.rules_run.items()))}"
    )
    assert machine.steps > 0
