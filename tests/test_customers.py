"""/admin/customers: create, list and get, on SQLite and PostgreSQL.

The server is shared by the whole session, so every test that lists customers tags its own
with a random marker and searches for it.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

import httpx
import pytest

from tests.support import BAD_PAGING, TIMESTAMP, Backend, new_customer, paging_id

CUS_ID = re.compile(r"^cus_[0-9A-HJKMNP-TV-Z]{26}$")
CUSTOMER_KEYS = {
    "id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "company_name",
    "metadata",
    "created_at",
    "updated_at",
}
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def marker() -> str:
    """A token no other test uses: lower-case letters and digits only (no LIKE wildcards)."""
    return f"m{uuid.uuid4().hex[:12]}"


def unique_email(tag: str = "c") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


def create(api: httpx.Client, body: Any) -> httpx.Response:
    return api.post("/admin/customers", json=body)


def search(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.get("/admin/customers", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids_of(body: dict[str, Any]) -> set[str]:
    return {customer["id"] for customer in body["customers"]}


def assert_error(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == kind
    assert isinstance(body["message"], str) and body["message"]


# --- POST /admin/customers ---------------------------------------------------------------


def test_create_returns_the_customer_object_with_a_generated_id(api: httpx.Client) -> None:
    """Without an id, the server makes a cus_<ULID>; the object has exactly the nine fields."""
    email = unique_email()
    response = create(api, {"email": email, "first_name": "Ada", "last_name": "Lovelace"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"customer"}
    customer = body["customer"]
    assert set(customer) == CUSTOMER_KEYS
    assert CUS_ID.match(customer["id"]), customer["id"]
    assert customer["email"] == email
    assert customer["first_name"] == "Ada"
    assert customer["last_name"] == "Lovelace"
    assert TIMESTAMP.match(customer["created_at"]), customer["created_at"]
    assert TIMESTAMP.match(customer["updated_at"]), customer["updated_at"]
    assert customer["updated_at"] >= customer["created_at"]


def test_generated_ids_are_distinct(api: httpx.Client) -> None:
    """Customers created back to back get different generated ids."""
    ids = {new_customer(api)["id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(CUS_ID.match(customer_id) for customer_id in ids)


def test_names_are_optional_and_null_when_absent(api: httpx.Client) -> None:
    """first_name and last_name may be left out (or sent as null) and come back as null."""
    absent = create(api, {"email": unique_email()})
    assert absent.status_code == 200, absent.text
    assert absent.json()["customer"]["first_name"] is None
    assert absent.json()["customer"]["last_name"] is None
    null = create(api, {"email": unique_email(), "first_name": None, "last_name": None})
    assert null.status_code == 200, null.text
    assert null.json()["customer"]["first_name"] is None
    assert null.json()["customer"]["last_name"] is None
    only_first = create(api, {"email": unique_email(), "first_name": "Grace"})
    assert only_first.status_code == 200, only_first.text
    assert only_first.json()["customer"]["first_name"] == "Grace"
    assert only_first.json()["customer"]["last_name"] is None


@pytest.mark.parametrize(
    "chosen",
    [
        pytest.param("medusa", id="medusa-style"),
        pytest.param("ext-42_x", id="ext-42_x"),
        pytest.param("x" * 64, id="64-chars"),
        pytest.param("A", id="one-char"),
    ],
)
def test_a_chosen_id_is_kept(api: httpx.Client, backend: Backend, chosen: str) -> None:
    """A caller-chosen id matching ^[A-Za-z0-9_-]{1,64}$ is kept exactly, and found by GET."""
    if chosen == "medusa":
        chosen = "cus_01H" + "".join(secrets.choice(CROCKFORD) for _ in range(23))
    response = create(api, {"id": chosen, "email": unique_email()})
    assert response.status_code == 200, response.text
    assert response.json()["customer"]["id"] == chosen
    found = api.get(f"/admin/customers/{chosen}")
    assert found.status_code == 200, found.text
    assert found.json()["customer"] == response.json()["customer"]


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("x" * 65, id="65-chars"),
        pytest.param("has space", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("caf\u00e9", id="unicode-letter"),
        pytest.param("\u0661\u0662", id="unicode-digits"),
        pytest.param("", id="empty"),
        pytest.param("a.b", id="dot"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param(42, id="number"),
        pytest.param(["cus_1"], id="array"),
    ],
)
def test_an_invalid_id_is_400(api: httpx.Client, bad_id: Any) -> None:
    """An id outside ^[A-Za-z0-9_-]{1,64}$ is 400 invalid_data, and no customer is made."""
    email = unique_email()
    response = create(api, {"id": bad_id, "email": email})
    assert_error(response, 400, "invalid_data")
    assert search(api, q=email)["count"] == 0


def test_email_is_required(api: httpx.Client) -> None:
    """A body without email is 400 invalid_data naming the email field."""
    response = create(api, {"first_name": "No", "last_name": "Email"})
    assert_error(response, 400, "invalid_data")
    assert "email" in response.text


@pytest.mark.parametrize(
    "bad_email",
    [
        pytest.param("", id="empty"),
        pytest.param("plainaddress", id="no-at"),
        pytest.param("user@", id="no-domain"),
        pytest.param("@example.com", id="no-local-part"),
        pytest.param("two@@example.com", id="double-at"),
        pytest.param("a@b@example.com", id="two-ats"),
        pytest.param("has space@example.com", id="space"),
        pytest.param("user@exa mple.com", id="space-in-domain"),
        pytest.param("user@example..com", id="empty-label"),
        pytest.param("user@.example.com", id="leading-dot-domain"),
        pytest.param("user@example.com.", id="trailing-dot-domain"),
        pytest.param("a" * 250 + "@example.com", id="too-long"),
        pytest.param(None, id="null"),
        pytest.param(42, id="number"),
        pytest.param(True, id="boolean"),
        pytest.param({"address": "a@example.com"}, id="object"),
    ],
)
def test_an_invalid_email_is_400(api: httpx.Client, bad_email: Any) -> None:
    """An email that is not a plausible address (or not a string) is 400 invalid_data."""
    response = create(api, {"email": bad_email})
    assert_error(response, 400, "invalid_data")


def test_a_duplicate_email_is_409(api: httpx.Client) -> None:
    """The same email twice is 409 conflict naming the email; the first customer is
    untouched."""
    email = unique_email()
    first = create(api, {"email": email, "first_name": "First"})
    assert first.status_code == 200, first.text
    again = create(api, {"email": email, "first_name": "Second"})
    assert_error(again, 409, "conflict")
    assert again.json()["message"] == f"A customer with email {email} already exists"
    assert search(api, q=email)["count"] == 1
    kept = api.get(f"/admin/customers/{first.json()['customer']['id']}").json()["customer"]
    assert kept["first_name"] == "First"


def test_a_duplicate_email_differing_in_case_is_409(api: httpx.Client) -> None:
    """Email uniqueness ignores case: Foo@Example.com clashes with foo@example.com."""
    local = f"case-{uuid.uuid4().hex[:12]}"
    first = create(api, {"email": f"{local}@example.com"})
    assert first.status_code == 200, first.text
    assert_error(create(api, {"email": f"{local.upper()}@EXAMPLE.COM"}), 409, "conflict")
    assert_error(create(api, {"email": f"{local.title()}@Example.Com"}), 409, "conflict")
    assert search(api, q=local)["count"] == 1


def test_a_duplicate_id_is_409(api: httpx.Client) -> None:
    """A chosen id that already exists is 409 conflict naming the id, even with a new email."""
    chosen = f"dup_{uuid.uuid4().hex}"
    first = create(api, {"id": chosen, "email": unique_email()})
    assert first.status_code == 200, first.text
    second_email = unique_email()
    again = create(api, {"id": chosen, "email": second_email})
    assert_error(again, 409, "conflict")
    assert again.json()["message"] == f"A customer with id {chosen} already exists"
    assert search(api, q=second_email)["count"] == 0
    assert api.get(f"/admin/customers/{chosen}").json()["customer"] == first.json()["customer"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"addresses": []}, id="addresses"),
        pytest.param({"has_account": True}, id="has_account"),
        pytest.param({"Email": "x@example.com"}, id="differently-cased-email"),
        pytest.param({"created_at": "2026-02-18T12:34:56.789Z"}, id="created_at"),
    ],
)
def test_unknown_fields_are_400(api: httpx.Client, extra: dict[str, Any]) -> None:
    """A body field outside email, first_name, last_name, phone, company_name, metadata, id is
    400 invalid_data."""
    email = unique_email()
    response = create(api, {"email": email, **extra})
    assert_error(response, 400, "invalid_data")
    assert search(api, q=email)["count"] == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("first_name", 42),
        ("last_name", ["Doe"]),
        ("first_name", "x" * 10_000),
    ],
)
def test_invalid_names_are_400(api: httpx.Client, field: str, value: Any) -> None:
    """A name that is not a string (or is absurdly long) is 400 invalid_data."""
    assert_error(create(api, {"email": unique_email(), field: value}), 400, "invalid_data")


@pytest.mark.parametrize(
    "content,content_type,message",
    [
        (
            b"{not json}",
            "application/json",
            "Request body must be a JSON object; the JSON text is malformed at byte 1",
        ),
        (b"[]", "application/json", "Request body must be a JSON object, not an array"),
        (b'"x"', "application/json", "Request body must be a JSON object, not a string"),
        (b"", "application/json", "Request body must be a JSON object; the body is empty"),
        (
            b'{"email": "a@example.com"',
            "application/json",
            "Request body must be a JSON object; the JSON text ends before it is complete",
        ),
        (b'{"email": "a@example.com"}', "text/plain", "Content-Type must be application/json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(
    api: httpx.Client, content: bytes, content_type: str, message: str
) -> None:
    """Non-JSON, a non-object, or another content type is 400 invalid_data saying which."""
    response = api.post("/admin/customers", content=content, headers={"Content-Type": content_type})
    assert_error(response, 400, "invalid_data")
    assert response.json()["message"] == message


# --- Medusa's customer fields: phone, company_name, metadata (SPEC 8.4) -------------------


def test_medusa_fields_are_kept_and_returned_everywhere(api: httpx.Client) -> None:
    """phone, company_name and metadata sent on create come back exactly from the create, the
    get and the list."""
    tag = marker()
    metadata = {"medusa_id": "cus_01J", "tier": "gold", "k" * 40: "v" * 500, "empty": ""}
    response = create(
        api,
        {
            "email": unique_email(tag),
            "phone": "+1 (555) 0100-2000 ext. 123 4567",
            "company_name": "Ç" * 255,
            "metadata": metadata,
        },
    )
    assert response.status_code == 200, response.text
    customer = response.json()["customer"]
    assert customer["phone"] == "+1 (555) 0100-2000 ext. 123 4567"
    assert customer["company_name"] == "Ç" * 255
    assert customer["metadata"] == metadata
    assert api.get(f"/admin/customers/{customer['id']}").json() == {"customer": customer}
    assert search(api, q=tag)["customers"] == [customer]


def test_medusa_fields_are_optional_and_nullable(api: httpx.Client) -> None:
    """Absent or null, phone, company_name and metadata are null; {} metadata stays {}."""
    absent = create(api, {"email": unique_email()})
    assert absent.status_code == 200, absent.text
    nulls = create(
        api, {"email": unique_email(), "phone": None, "company_name": None, "metadata": None}
    )
    assert nulls.status_code == 200, nulls.text
    for response in (absent, nulls):
        customer = response.json()["customer"]
        assert (customer["phone"], customer["company_name"], customer["metadata"]) == (
            None,
            None,
            None,
        )
        got = api.get(f"/admin/customers/{customer['id']}").json()["customer"]
        assert (got["phone"], got["company_name"], got["metadata"]) == (None, None, None)
    empty = create(api, {"email": unique_email(), "metadata": {}})
    assert empty.status_code == 200, empty.text
    assert empty.json()["customer"]["metadata"] == {}


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("phone", "1" * 33, "phone must be a string of at most 32 characters, or null"),
        ("phone", 5550100, "phone must be a string of at most 32 characters, or null"),
        (
            "company_name",
            "x" * 256,
            "company_name must be a string of at most 255 characters, or null",
        ),
        (
            "company_name",
            ["Acme"],
            "company_name must be a string of at most 255 characters, or null",
        ),
        (
            "metadata",
            {f"k{i}": "v" for i in range(17)},
            "metadata must have at most 16 keys, not 17",
        ),
        ("metadata", {"": "v"}, "metadata keys must be 1 to 40 characters long"),
        ("metadata", {"k" * 41: "v"}, "metadata keys must be 1 to 40 characters long"),
        (
            "metadata",
            {"note": "v" * 501},
            "metadata values must be at most 500 characters (the value of 'note' is longer)",
        ),
        ("metadata", {"n": 1}, "metadata values must be strings (the value of 'n' is not)"),
        ("metadata", {"n": None}, "metadata values must be strings (the value of 'n' is not)"),
        (
            "metadata",
            {"n": {"deep": "x"}},
            "metadata values must be strings (the value of 'n' is not)",
        ),
        ("metadata", ["a"], "metadata must be a JSON object whose values are strings, or null"),
        (
            "metadata",
            "tier=gold",
            "metadata must be a JSON object whose values are strings, or null",
        ),
    ],
)
def test_invalid_medusa_fields_are_400_with_a_precise_message(
    api: httpx.Client, field: str, value: Any, message: str
) -> None:
    """Each broken limit is 400 invalid_data whose own message says which (Medusa's SDK keeps
    only the message), and no customer is created."""
    email = unique_email()
    response = create(api, {"email": email, field: value})
    assert_error(response, 400, "invalid_data")
    body = response.json()
    assert body["message"] == message
    assert body["errors"] == [{"field": field, "message": message}]
    assert search(api, q=email)["count"] == 0


# --- GET /admin/customers/{id} -----------------------------------------------------------


def test_get_returns_the_customer(api: httpx.Client) -> None:
    """GET by id returns {"customer": ...} equal to what the create returned."""
    created = new_customer(api, first_name="Katherine", last_name="Johnson")
    response = api.get(f"/admin/customers/{created['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {"customer": created}


def test_get_unknown_is_404(api: httpx.Client) -> None:
    """An unknown id is 404 not_found."""
    response = api.get(f"/admin/customers/cus_nobody_{uuid.uuid4().hex}")
    assert_error(response, 404, "not_found")


# --- GET /admin/customers ----------------------------------------------------------------


def test_list_has_the_list_envelope_and_default_page(api: httpx.Client) -> None:
    """The list body is {customers, count, offset, limit}; limit defaults to 20, offset to 0."""
    for _ in range(21):
        new_customer(api)
    response = api.get("/admin/customers")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"customers", "count", "offset", "limit"}
    assert body["limit"] == 20
    assert body["offset"] == 0
    assert body["count"] >= 21
    assert len(body["customers"]) == 20
    for customer in body["customers"]:
        assert set(customer) == CUSTOMER_KEYS


@pytest.mark.parametrize("limit", ["1", "100"])
def test_list_limit_bounds_are_accepted(api: httpx.Client, limit: str) -> None:
    """limit=1 and limit=100 are both valid and echoed back."""
    body = search(api, limit=limit)
    assert body["limit"] == int(limit)
    assert len(body["customers"]) <= int(limit)


@pytest.mark.parametrize("params", [*BAD_PAGING, {"limit": ""}, {"offset": ""}], ids=paging_id)
def test_list_bad_paging_is_400(api: httpx.Client, params: dict[str, str]) -> None:
    """limit outside 1..100, offset below 0, or anything not an integer is 400 invalid_data."""
    assert_error(api.get("/admin/customers", params=params), 400, "invalid_data")


def test_q_matches_email_and_names_case_insensitively(api: httpx.Client) -> None:
    """q is a case-insensitive substring of the email, the first name or the last name."""
    tag = marker()
    by_email = new_customer(api, email=f"x{tag}y@example.com")
    by_first = new_customer(api, first_name=f"Ann{tag.upper()}ette")
    by_last = new_customer(api, last_name=f"Smith-{tag.capitalize()}")
    by_none = new_customer(api, first_name="Unrelated", last_name="Person")
    expected = {by_email["id"], by_first["id"], by_last["id"]}

    for q in (tag, tag.upper(), tag.capitalize(), tag[2:9].upper()):
        body = search(api, q=q, limit=100)
        assert ids_of(body) == expected, q
        assert body["count"] == 3, q
    assert by_none["id"] not in ids_of(search(api, q=tag))

    assert ids_of(search(api, q=f"Ann{tag}")) == {by_first["id"]}
    assert ids_of(search(api, q=f"-{tag}".upper())) == {by_last["id"]}
    assert ids_of(search(api, q=f"x{tag}Y@EXAMPLE")) == {by_email["id"]}


@pytest.mark.parametrize(
    "q",
    [
        pytest.param("\u00c9lodie-\u00c6r\u00f8", id="as-written"),
        pytest.param("\u00e9lodie-\u00e6r\u00f8", id="lower"),
        pytest.param("\u00c9LODIE-\u00c6R\u00d8", id="upper"),
    ],
)
def test_q_matches_non_ascii_names(api: httpx.Client, q: str) -> None:
    """A q with non-ASCII letters finds the name as written, and in another case too."""
    tag = marker()
    holder = new_customer(api, first_name=f"{tag}\u00c9lodie-\u00c6r\u00f8")
    body = search(api, q=f"{tag}{q}")
    assert ids_of(body) == {holder["id"]}, body


def test_q_matching_nothing_is_an_empty_page(api: httpx.Client) -> None:
    """A q that matches no customer gives count 0 and an empty list."""
    body = search(api, q=marker())
    assert body["customers"] == []
    assert body["count"] == 0


@pytest.mark.parametrize(
    "literal,decoy",
    [
        pytest.param("50%off", "50XXoff", id="percent"),
        pytest.param("a_b", "aXb", id="underscore"),
        pytest.param("c\\d", "cXd", id="backslash"),
        pytest.param("%", "X", id="percent-alone"),
        pytest.param("_", "X", id="underscore-alone"),
    ],
)
def test_like_wildcards_in_q_are_literal(api: httpx.Client, literal: str, decoy: str) -> None:
    """%, _ and \\ in q match only themselves, never any character or run of characters."""
    tag = marker()
    holder = new_customer(api, first_name=f"{tag}{literal}{tag}")
    decoy_customer = new_customer(api, first_name=f"{tag}{decoy}{tag}")
    plain = new_customer(api, first_name=f"{tag}{tag}")
    body = search(api, q=f"{tag}{literal}{tag}")
    assert ids_of(body) == {holder["id"]}
    assert body["count"] == 1
    assert decoy_customer["id"] not in ids_of(body)
    assert plain["id"] not in ids_of(body)
    # The wildcard alone, bounded by the marker on one side, also matches only the literal.
    assert ids_of(search(api, q=f"{literal}{tag}", limit=100)) == {holder["id"]}


def test_count_is_the_total_matching_not_the_page_size(api: httpx.Client) -> None:
    """With 5 matches and limit=2, each page has at most 2 customers but count is 5."""
    tag = marker()
    for _ in range(5):
        new_customer(api, last_name=tag)
    first = search(api, q=tag, limit=2)
    assert first["count"] == 5
    assert first["limit"] == 2
    assert first["offset"] == 0
    assert len(first["customers"]) == 2
    last = search(api, q=tag, limit=2, offset=4)
    assert last["count"] == 5
    assert last["offset"] == 4
    assert len(last["customers"]) == 1
    beyond = search(api, q=tag, limit=2, offset=10)
    assert beyond["count"] == 5
    assert beyond["customers"] == []


def test_paging_walks_every_match_once(api: httpx.Client) -> None:
    """Walking the pages of a search with limit/offset yields every match exactly once."""
    tag = marker()
    created = {new_customer(api, first_name=tag)["id"] for _ in range(7)}
    seen: list[str] = []
    for offset in range(0, 9, 3):
        body = search(api, q=tag, limit=3, offset=offset)
        assert body["count"] == 7
        seen.extend(customer["id"] for customer in body["customers"])
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == created


def test_list_items_equal_the_single_customer(api: httpx.Client) -> None:
    """A customer in the list is the same object GET /admin/customers/{id} returns."""
    tag = marker()
    created = new_customer(api, email=f"{tag}@example.com", first_name="Dorothy")
    body = search(api, q=tag)
    assert body["customers"] == [created]


# --- credentials and scopes --------------------------------------------------------------


def test_customer_routes_need_credentials(anon: httpx.Client) -> None:
    """Without a token every customer route is 401 unauthorized."""
    assert_error(anon.post("/admin/customers", json={"email": unique_email()}), 401, "unauthorized")
    assert_error(anon.get("/admin/customers"), 401, "unauthorized")
    assert_error(anon.get("/admin/customers/cus_x"), 401, "unauthorized")


def test_customer_routes_need_their_scopes(backend: Backend) -> None:
    """customers:read may list and get but not create; the 403 names customers:write."""
    with backend.client(backend.user_token("customers:read")) as reader:
        refused = reader.post("/admin/customers", json={"email": unique_email()})
        assert_error(refused, 403, "forbidden")
        assert "customers:write" in refused.json()["message"]
        assert reader.get("/admin/customers").status_code == 200
