"""SPEC section 5: every validation rule of POST /admin/loyalty/points/adjust, each rejected
request proven to have recorded nothing, and the negative-balance rule."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Server,
    adjust,
    adjust_raw,
    login,
    new_customer,
)
from tests.test_http_errors import watch_responses

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

ADJUST = "/admin/loyalty/points/adjust"
DELTA_MESSAGE = "delta must be a non-zero number"
BODY_MAX = 64 * 1024


@pytest.fixture(autouse=True)
def _no_internals_in_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    watch_responses(monkeypatch)


def ledger(api: httpx.Client, customer_id: str) -> tuple[Any, ...]:
    """Everything an adjustment would change: the balance body and the full history."""
    balance = api.get(f"/admin/loyalty/points/{customer_id}")
    history = api.get(f"/admin/loyalty/points/{customer_id}/history", params={"limit": "100"})
    assert balance.status_code == 200, balance.text
    assert history.status_code == 200, history.text
    page = history.json()
    return balance.content, page["count"], [item["id"] for item in page["adjustments"]]


class Funded:
    """A customer holding 100 points (one adjustment), and the ledger as it stood then."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.id: str = new_customer(api)["id"]
        assert adjust(api, self.id, 100).status_code == 200
        self.before = ledger(api, self.id)

    def body(self, template: str) -> str:
        """The template with CID replaced by the customer's id as a JSON string."""
        return template.replace("CID", json.dumps(self.id))

    def assert_unchanged(self) -> None:
        after = ledger(self.api, self.id)
        assert after == self.before, "a rejected request changed the ledger"
        assert after[1] == 1


@pytest.fixture
def funded(api: httpx.Client) -> Funded:
    return Funded(api)


def assert_invalid(response: httpx.Response, field: str | None = None) -> dict[str, Any]:
    """400 invalid_data in the envelope; with `field`, an errors list naming it."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["type"] == "invalid_data"
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"type", "message", "errors"}
    if field is not None:
        errors = body["errors"]
        assert all(set(e) == {"field", "message"} for e in errors), errors
        assert field in {e["field"] for e in errors}, errors
    return body


def raw_number(response: httpx.Response, name: str) -> str:
    """A number exactly as the server wrote it."""
    match = re.search(rb'"' + name.encode() + rb'":(-?[0-9][0-9.eE+-]*)', response.content)
    assert match is not None, response.text
    return match.group(1).decode()


# --- delta -------------------------------------------------------------------------------

ZERO_DELTAS = ["0", "0.0", "0.00", "-0", "-0.0", "-0.00", "0e10", "0E-5", "0e999"]
_NOT_NULL = "delta must be a number, not null (JSON.stringify sends NaN and Infinity as null)"
_FLOAT_HINT = " (a binary float's rounding, as 0.1 + 0.2 gives in JavaScript?)"


def _places(literal: str, places: int, hint: str = "") -> tuple[str, str]:
    return literal, f"delta must have at most 2 decimal places; {literal} has {places}{hint}"


def _too_large(literal: str) -> tuple[str, str]:
    return literal, f"delta must be at most 1000000000 in absolute value; {literal} is too large"


# Every other invalid delta, with the message that says on its own what is wrong with it
# (Medusa's SDK keeps only the message, SPEC 8.4).
INVALID_DELTAS = [
    # not numbers
    ('"100"', "delta must be a number, not a string"),
    ('"0"', "delta must be a number, not a string"),
    ('""', "delta must be a number, not a string"),
    ('"1e2"', "delta must be a number, not a string"),
    ("true", "delta must be a number, not a boolean"),
    ("false", "delta must be a number, not a boolean"),
    ("null", _NOT_NULL),
    ("{}", "delta must be a number, not an object"),
    ('{"value": 1}', "delta must be a number, not an object"),
    ("[]", "delta must be a number, not an array"),
    ("[1]", "delta must be a number, not an array"),
    # more than 2 fractional digits
    _places("0.001", 3),
    _places("-0.001", 3),
    _places("1.005", 3),
    _places("-1.005", 3),
    _places("100.001", 3),
    _places("1e-3", 3),
    _places("1E-3", 3),
    _places("0.0001", 4),
    _places("1e-400", 400),
    _places("0.30000000000000004", 17, _FLOAT_HINT),  # JavaScript's 0.1 + 0.2
    _places("-99.99000000000001", 14, _FLOAT_HINT),
    # too large
    _too_large("1000000000.01"),
    _too_large("-1000000000.01"),
    _too_large("1000000001"),
    _too_large("-1000000001"),
    _too_large("1e10"),
    _too_large("-1e10"),
    _too_large("1E+400"),  # beyond a double: not finite
    _too_large("1e400"),
    _too_large("123456789012345678901234567890"),
    ("1" * 65, "delta must be a number written in at most 64 characters"),
]


@pytest.mark.parametrize("literal", ZERO_DELTAS)
def test_zero_delta_is_rejected_with_the_seed_message(funded: Funded, literal: str) -> None:
    """A zero delta in any spelling is 400 with the seed's exact message and records nothing."""
    response = adjust_raw(funded.api, funded.body(f'{{"customer_id": CID, "delta": {literal}}}'))
    body = assert_invalid(response, "delta")
    assert body["message"] == DELTA_MESSAGE
    funded.assert_unchanged()


@pytest.mark.parametrize(("literal", "message"), INVALID_DELTAS)
def test_invalid_delta_is_rejected_with_its_precise_message(
    funded: Funded, literal: str, message: str
) -> None:
    """Any other invalid delta is 400 whose message says exactly what is wrong with it (not
    the zero's message), and records nothing."""
    response = adjust_raw(funded.api, funded.body(f'{{"customer_id": CID, "delta": {literal}}}'))
    body = assert_invalid(response, "delta")
    assert body["message"] == message
    assert body["errors"][0] == {"field": "delta", "message": message}
    funded.assert_unchanged()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_delta_written_raw_is_rejected(funded: Funded, literal: str) -> None:
    """Raw NaN/Infinity (as json.dumps writes them) is not JSON: 400 invalid_data saying so,
    no record."""
    response = adjust_raw(funded.api, funded.body(f'{{"customer_id": CID, "delta": {literal}}}'))
    message = assert_invalid(response)["message"]
    assert message.startswith(
        "Request body must be a JSON object; NaN and Infinity are not JSON numbers (at byte "
    ), message
    funded.assert_unchanged()


def test_missing_delta_is_rejected(funded: Funded) -> None:
    """A body without delta is 400 saying delta is required, errors naming delta."""
    response = adjust_raw(funded.api, funded.body('{"customer_id": CID, "reason": "x"}'))
    assert assert_invalid(response, "delta")["message"] == "delta is required"
    funded.assert_unchanged()


def test_invalid_delta_is_reported_before_an_unknown_customer(api: httpx.Client) -> None:
    """Validation comes first: a zero delta for an unknown customer is 400, not 404."""
    response = adjust_raw(api, '{"customer_id": "cus_does_not_exist", "delta": 0}')
    assert assert_invalid(response, "delta")["message"] == DELTA_MESSAGE


def test_delta_message_wins_when_several_fields_are_invalid(funded: Funded) -> None:
    """With delta and other fields invalid, the message is the delta's and delta is listed."""
    response = adjust_raw(funded.api, '{"customer_id": "", "delta": 0, "reason": 5}')
    body = assert_invalid(response, "delta")
    assert body["message"] == DELTA_MESSAGE
    funded.assert_unchanged()


@pytest.mark.parametrize(
    ("literal", "rendered"),
    [
        ("1000000000", "1000000000"),
        ("1e9", "1000000000"),
        ("1000000000.00", "1000000000"),
        ("999999999.99", "999999999.99"),
    ],
)
def test_largest_delta_is_accepted(api: httpx.Client, literal: str, rendered: str) -> None:
    """|delta| of exactly 1,000,000,000 is accepted, both ways when the balance allows."""
    customer_id = json.dumps(new_customer(api)["id"])
    response = adjust_raw(api, f'{{"customer_id": {customer_id}, "delta": {literal}}}')
    assert response.status_code == 200, response.text
    assert raw_number(response, "balance_after") == rendered
    response = adjust_raw(api, f'{{"customer_id": {customer_id}, "delta": -{literal}}}')
    assert response.status_code == 200, response.text
    assert raw_number(response, "balance_after") == "0"


# --- customer_id -------------------------------------------------------------------------

INVALID_CUSTOMER_IDS = ['""', "123", "null", "true", "[]", '["CID"]', '{"id": "x"}', "1.5"]


@pytest.mark.parametrize("literal", INVALID_CUSTOMER_IDS)
def test_invalid_customer_id_is_rejected(funded: Funded, literal: str) -> None:
    """A customer_id that is not a non-empty string is 400 naming it, and records nothing."""
    literal = literal.replace('"CID"', json.dumps(funded.id))
    response = adjust_raw(funded.api, f'{{"customer_id": {literal}, "delta": 1}}')
    body = assert_invalid(response, "customer_id")
    assert "customer_id" in body["message"]
    funded.assert_unchanged()


def test_missing_customer_id_is_rejected(api: httpx.Client) -> None:
    """A body without customer_id is 400 naming customer_id."""
    body = assert_invalid(adjust_raw(api, '{"delta": 1}'), "customer_id")
    assert "customer_id" in body["message"]


def test_customer_id_of_64_characters_is_fine_and_65_is_not(api: httpx.Client) -> None:
    """customer_id may be 64 characters long; 65 is 400 (not a 404 lookup)."""
    long_id = ("id-" + uuid.uuid4().hex * 2)[:64]
    assert len(long_id) == 64
    new_customer(api, id=long_id)
    response = adjust(api, long_id, 5)
    assert response.status_code == 200, response.text
    assert response.json()["customer_id"] == long_id
    too_long = long_id + "x"
    assert_invalid(adjust(api, too_long, 5), "customer_id")
    assert ledger(api, long_id)[1] == 1


# --- reason ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal", ["123", "true", "false", "[]", '["x"]', "{}", '{"a": 1}', json.dumps("r" * 1001)]
)
def test_invalid_reason_is_rejected(funded: Funded, literal: str) -> None:
    """reason must be a string of at most 1,000 characters or null: otherwise 400 naming reason."""
    body_text = funded.body(f'{{"customer_id": CID, "delta": 1, "reason": {literal}}}')
    body = assert_invalid(adjust_raw(funded.api, body_text), "reason")
    assert "reason" in body["message"]
    funded.assert_unchanged()


@pytest.mark.parametrize(
    ("literal", "stored"),
    [
        (json.dumps("r" * 1000), "r" * 1000),
        (json.dumps("é" * 1000, ensure_ascii=False), "é" * 1000),
        (json.dumps("é" * 1000), "é" * 1000),
        ("null", None),
    ],
)
def test_reason_up_to_1000_characters_or_null_is_accepted(
    funded: Funded, literal: str, stored: str | None
) -> None:
    """A reason of exactly 1,000 characters (not bytes) and a null reason are accepted as given."""
    body_text = funded.body(f'{{"customer_id": CID, "delta": 1, "reason": {literal}}}')
    response = adjust_raw(funded.api, body_text, include_history="true")
    assert response.status_code == 200, response.text
    assert response.json()["history"][0]["reason"] == stored


# --- the body as a whole -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "unknown"),
    [
        ('{"customer_id": CID, "delta": 1, "extra": 1}', "extra"),
        ('{"customer_id": CID, "delta": 1, "extra": null}', "extra"),
        ('{"customer_id": CID, "delta": 1, "Delta": 1}', "Delta"),
        ('{"customer_id": CID, "delta": 1, "reason": "x", "tags": {}}', "tags"),
        ('{"customer_id": CID, "delta": 1, "include_history": true}', "include_history"),
        ('{"customer_id": CID, "delta": 1, "id": "adj_x"}', "id"),
    ],
)
def test_unknown_body_field_is_rejected(funded: Funded, template: str, unknown: str) -> None:
    """A body field other than customer_id, delta and reason is 400 naming it; nothing recorded."""
    assert_invalid(adjust_raw(funded.api, funded.body(template)), unknown)
    funded.assert_unchanged()


@pytest.mark.parametrize(
    "template",
    [
        "",
        " ",
        "not json",
        "[]",
        '[{"customer_id": CID, "delta": 1}]',
        '"a string"',
        "null",
        "1",
        "true",
        '{"customer_id": CID, "delta": 1',
        '{"customer_id": CID, "delta": 1}}',
        '{"customer_id": CID, "delta": 1,}',
        '{"customer_id": CID, "delta": 1} {}',
        "{'customer_id': CID, 'delta': 1}",
        '{"customer_id": CID, "delta": .5}',
        '{"customer_id": CID, "delta": +1}',
        '{"customer_id": CID, "delta": 01}',
        '{"customer_id": CID, "delta": 1.}',
        '{"customer_id": CID, "delta": 0x10}',
        "{customer_id: CID, delta: 1}",
    ],
)
def test_body_that_is_not_a_json_object_is_rejected(funded: Funded, template: str) -> None:
    """A body that is not JSON, or JSON but not an object, is 400 invalid_data; nothing recorded."""
    assert_invalid(adjust_raw(funded.api, funded.body(template)))
    funded.assert_unchanged()


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        None,
    ],
)
def test_wrong_content_type_is_rejected(funded: Funded, content_type: str | None) -> None:
    """A valid JSON body sent with another Content-Type (or none) is 400 invalid_data."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    content = funded.body('{"customer_id": CID, "delta": 1}').encode()
    response = funded.api.post(ADJUST, content=content, headers=headers)
    assert_invalid(response)
    funded.assert_unchanged()


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/json;charset=UTF-8"],
)
def test_json_content_type_variants_are_accepted(funded: Funded, content_type: str) -> None:
    """application/json with parameters or in another case is still JSON."""
    content = funded.body('{"customer_id": CID, "delta": 1}').encode()
    response = funded.api.post(ADJUST, content=content, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def _padded(funded: Funded, size: int) -> bytes:
    """A valid adjust body, padded with trailing whitespace to exactly `size` bytes."""
    body = funded.body('{"customer_id": CID, "delta": 1}').encode()
    return body + b" " * (size - len(body))


def test_body_of_exactly_64_kib_is_accepted(funded: Funded) -> None:
    """A body of exactly 64 KiB is within the limit."""
    response = funded.api.post(
        ADJUST, content=_padded(funded, BODY_MAX), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("size", [BODY_MAX + 1, 100_000])
def test_body_over_64_kib_is_413(funded: Funded, size: int) -> None:
    """A body over 64 KiB is 413 with type invalid_data; nothing recorded."""
    response = funded.api.post(
        ADJUST, content=_padded(funded, size), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["type"] == "invalid_data"
    assert isinstance(body["message"], str) and body["message"]
    funded.assert_unchanged()


def test_chunked_body_over_64_kib_is_413(funded: Funded) -> None:
    """The limit holds without a Content-Length too (chunked transfer encoding)."""
    padded = _padded(funded, BODY_MAX + 1000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(padded), 8192):
            yield padded[start : start + 8192]

    response = funded.api.post(
        ADJUST, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["type"] == "invalid_data"
    funded.assert_unchanged()


# --- the query ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["yes", "no", "TRUE", "True", "FALSE", "", "2", "-1", "on", "true ", " 1", "t"]
)
def test_bad_include_history_is_rejected(funded: Funded, value: str) -> None:
    """include_history other than true/false/1/0 is 400 invalid_data; nothing recorded."""
    body_text = funded.body('{"customer_id": CID, "delta": 1}')
    assert_invalid(adjust_raw(funded.api, body_text, include_history=value))
    funded.assert_unchanged()


@pytest.mark.parametrize(
    "params",
    [{"foo": "1"}, {"includeHistory": "true"}, {"limit": "10"}, {"customer_id": "x"}, {"": ""}],
)
def test_unknown_query_parameter_is_rejected(funded: Funded, params: dict[str, str]) -> None:
    """A query parameter other than include_history is 400 invalid_data; nothing recorded."""
    body_text = funded.body('{"customer_id": CID, "delta": 1}')
    response = funded.api.post(
        ADJUST,
        content=body_text.encode(),
        headers={"Content-Type": "application/json"},
        params=params,
    )
    assert_invalid(response)
    funded.assert_unchanged()


# --- the negative-balance rule -----------------------------------------------------------


def test_redemption_beyond_the_balance_is_not_allowed(api: httpx.Client) -> None:
    """Overdrawing is 400 not_allowed naming the balance, records nothing; exactly to 0 works."""
    customer_id = new_customer(api)["id"]
    assert adjust_raw(api, f'{{"customer_id": "{customer_id}", "delta": 12.34}}').is_success
    before = ledger(api, customer_id)
    for literal in ["-12.35", "-20", "-1000000000"]:
        response = adjust_raw(api, f'{{"customer_id": "{customer_id}", "delta": {literal}}}')
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["type"] == "not_allowed"
        assert "12.34" in body["message"]
        assert ledger(api, customer_id) == before
    response = adjust_raw(api, f'{{"customer_id": "{customer_id}", "delta": -12.34}}')
    assert response.status_code == 200, response.text
    assert raw_number(response, "balance_after") == "0"
    assert b'"balance":0,' in api.get(f"/admin/loyalty/points/{customer_id}").content


def test_redemption_from_an_empty_balance_is_not_allowed(api: httpx.Client) -> None:
    """A customer without adjustments cannot redeem even 0.01; the message says the balance 0."""
    customer_id = new_customer(api)["id"]
    response = adjust_raw(api, f'{{"customer_id": "{customer_id}", "delta": -0.01}}')
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "not_allowed"
    assert re.search(r"(?<![0-9.])0(?![0-9.])", body["message"]), body["message"]
    balance = api.get(f"/admin/loyalty/points/{customer_id}").json()
    assert balance["balance"] == 0 and balance["updated_at"] is None
    assert ledger(api, customer_id)[1] == 0


def test_negative_balance_when_allowed(databases: DatabaseFactory, tmp_path: Path) -> None:
    """With LOYALTY_ALLOW_NEGATIVE_BALANCE=true a balance can go below zero, rendered exactly."""
    url = databases.new_url()
    with Server.start(url, tmp_path, LOYALTY_ALLOW_NEGATIVE_BALANCE="true") as server:
        token = login(server, ADMIN_EMAIL, ADMIN_PASSWORD)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as api:
            customer_id = new_customer(api)["id"]
            quoted = json.dumps(customer_id)
            response = adjust_raw(api, f'{{"customer_id": {quoted}, "delta": 10}}')
            assert raw_number(response, "balance_after") == "10"
            response = adjust_raw(api, f'{{"customer_id": {quoted}, "delta": -22.5}}')
            assert response.status_code == 200, response.text
            assert raw_number(response, "balance_after") == "-12.5"
            balance = api.get(f"/admin/loyalty/points/{customer_id}")
            assert b'"balance":-12.5,' in balance.content
            history = api.get(f"/admin/loyalty/points/{customer_id}/history")
            assert b'"delta":-22.5,' in history.content
            assert b'"balance_after":-12.5,' in history.content
            response = adjust_raw(api, f'{{"customer_id": {quoted}, "delta": -1000000000}}')
            assert raw_number(response, "balance_after") == "-1000000012.5"
            # The other rules still hold on this server.
            response = adjust_raw(api, f'{{"customer_id": {quoted}, "delta": 0}}')
            assert assert_invalid(response, "delta")["message"] == DELTA_MESSAGE
            response = adjust_raw(api, f'{{"customer_id": {quoted}, "delta": -0.001}}')
            message = "delta must have at most 2 decimal places; -0.001 has 3"
            assert assert_invalid(response, "delta")["message"] == message
            assert api.get(f"/admin/loyalty/points/{customer_id}/history").json()["count"] == 3


# --- the exact sum, as a property --------------------------------------------------------

AMOUNTS = st.decimals(
    min_value=Decimal("-1000"),
    max_value=Decimal("1000"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
).filter(lambda d: d != 0)
SPELLINGS = st.sampled_from(["plain", "hundredths", "thousandths_upper", "two_places"])
START = Decimal(10_000)  # more than 6 steps of at most 1,000 can take: never negative


def json_text(amount: Decimal, spelling: str) -> str:
    """The amount as one of several exact JSON number spellings."""
    hundredths = int(amount * 100)
    if spelling == "hundredths":
        return f"{hundredths}e-2"
    if spelling == "thousandths_upper":
        return f"{hundredths * 10}E-3"
    if spelling == "two_places":
        return f"{amount:.2f}"
    return format(amount, "f")


def shortest(amount: Decimal) -> str:
    """The shortest exact rendering: 150, 100.01, 0.3, -2.5."""
    if amount == amount.to_integral_value():
        return str(int(amount))
    return format(amount.normalize(), "f")


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.tuples(AMOUNTS, SPELLINGS), min_size=1, max_size=6))
def test_balance_is_the_exact_decimal_sum(
    api: httpx.Client, steps: list[tuple[Decimal, str]]
) -> None:
    """For decimals with at most 2 fractional digits, the balance is their exact Decimal sum."""
    customer_id = json.dumps(new_customer(api)["id"])
    expected = START
    assert adjust_raw(api, f'{{"customer_id": {customer_id}, "delta": {START}}}').is_success
    for amount, spelling in steps:
        text = json_text(amount, spelling)
        response = adjust_raw(api, f'{{"customer_id": {customer_id}, "delta": {text}}}')
        assert response.status_code == 200, (text, response.text)
        expected += amount
        assert raw_number(response, "balance_after") == shortest(expected)
    balance = api.get(f"/admin/loyalty/points/{json.loads(customer_id)}")
    assert raw_number(balance, "balance") == shortest(expected)
    history = api.get(f"/admin/loyalty/points/{json.loads(customer_id)}/history")
    page = json.loads(history.content, parse_float=Decimal, parse_int=Decimal)
    assert page["count"] == len(steps) + 1
    assert sum(item["delta"] for item in page["adjustments"]) == expected
    assert [item["delta"] for item in page["adjustments"]] == [
        amount for amount, _ in reversed(steps)
    ] + [START]
