"""API fuzzing: schemathesis against the service's own /openapi.json, as a real `loyalty serve`
process serves it, on SQLite and on PostgreSQL, authenticated as the admin, over every operation.

The server is this module's own, on a fresh database of each kind, not the session's: fuzzing
the login routes fails logins from 127.0.0.1 by the hundred, which the login throttle would
answer with 429 for its whole window (other tests' logins included), and it leaves customers
with short ids such as "A" that other tests may choose. Its per-address limit is lifted so
that this module's own logins keep working; the per-email limit stays, and a 429 is checked
on purpose.

Each operation gets schemathesis's three generation phases, as its pytest integration runs
them: the document's examples, the coverage phase (boundary values, missing and wrongly typed
fields, no credentials, unexpected methods) and random fuzzing in both positive and negative
modes, LOYALTY_FUZZ_EXAMPLES (default 25) cases of it per operation; `make fuzz` runs 1000.
Every response must be no 5xx, have a status code the document declares, and match the
document's schema, content type and headers for that status (errors included).

schemathesis's own `schema.parametrize()` reads `request.node._nodeid`, which pytest 9.2 no
longer has, so each operation's Hypothesis test is built here with the same builder that
integration uses (schemathesis is pinned in pyproject.toml).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.python._constants.orchestrator import make_constants_value_source
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import backend_fixture
from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Backend,
    adjust,
    new_customer,
    routed_operations,
)

EXAMPLES = int(os.environ.get("LOYALTY_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Every operation the service's router answers, as "METHOD /path".
OPERATIONS = sorted(routed_operations())


fuzz_backend = backend_fixture(
    "fuzz_backend",
    "A server of this module's own on a fresh database of each kind.",
    LOYALTY_LOGIN_MAX_FAILURES_PER_ADDRESS="1000000",
)


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_backend: Backend) -> Iterator[OpenApiSchema]:
    """The document as the live server serves it, with the admin's token on every request."""
    backend = fuzz_backend
    config = SchemathesisConfig.from_dict(
        {
            "headers": {"Authorization": f"Bearer {backend.token}"},
            "generation": {"mode": "all", "max-examples": EXAMPLES},
            "request-timeout": 30,
        }
    )
    load_all_checks()
    schema = schemathesis.openapi.from_url(f"{backend.server.base_url}/openapi.json", config=config)
    known = _known_customers(backend)

    # Random ids almost never name a customer, so half the generated customer ids are
    # replaced by known customers' ids: successful responses get checked too.
    def with_known(values: Any) -> st.SearchStrategy[Any]:
        if not (isinstance(values, dict) and "customer_id" in values):
            return st.just(values)
        return st.just(values) | st.sampled_from(known).map(
            lambda customer_id: {**values, "customer_id": customer_id}
        )

    def flatmap_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
        return with_known(path_parameters)

    def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        return with_known(body)

    schema.hook(flatmap_path_parameters)
    schema.hook(flatmap_body)
    yield schema


def _known_customers(backend: Backend) -> list[str]:
    """Customers with some history: one without adjustments, two with a few."""
    ids = [f"fuzz_{uuid.uuid4().hex[:12]}_{n}" for n in range(3)]
    with backend.client() as client:
        for n, customer_id in enumerate(ids):
            customer = new_customer(client, id=customer_id)
            for delta, reason in [(100, "welcome"), (0.5, None), (-20.25, "redeemed")][: n * 2]:
                assert adjust(client, customer["id"], delta, reason).status_code == 200
    return ids


def test_every_outcome_matches_the_document(
    fuzz_schema: OpenApiSchema, fuzz_backend: Backend
) -> None:
    """Outcomes that random cases reach rarely or never (a replay, a key reused with another
    request, a redemption beyond the balance, a missing scope, a body too large, too many
    failed logins), each sent on purpose and checked against the document like the fuzzed
    ones. It runs before the fuzzing, which may exhaust the per-email login limits."""
    backend = fuzz_backend
    admin = {"Authorization": f"Bearer {backend.token}"}
    reader = {"Authorization": f"Bearer {backend.user_token('loyalty:read')}"}
    with backend.client() as client:
        customer_id = new_customer(client)["id"]
        email = client.get(f"/admin/customers/{customer_id}").json()["customer"]["email"]
    key = f"fuzz-{uuid.uuid4()}"
    path = {"customer_id": customer_id}
    credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    keyed = {**admin, "Idempotency-Key": key}
    earn = {"customer_id": customer_id, "delta": 10.5, "reason": None}

    def case(label: str, expected: int, **kwargs: Any) -> tuple[str, int, Any]:
        operation = fuzz_schema.find_operation_by_label(label)
        assert operation is not None, label
        kwargs.setdefault("headers", admin)
        return label, expected, operation.Case(**kwargs)

    cases = [
        case("GET /health", 200, headers={}),
        case("POST /admin/auth/token", 200, headers={}, body=credentials),
        case("POST /auth/user/emailpass", 200, headers={}, body=credentials),
        case("GET /admin/customers", 200, query={"q": email}),
        case("GET /admin/customers/{customer_id}", 200, path_parameters=path),
        case("GET /admin/customers/{customer_id}", 404, path_parameters={"customer_id": "nobody"}),
        case("POST /admin/customers", 409, body={"email": email.upper()}),
        case("GET /admin/loyalty/points/{customer_id}", 200, path_parameters=path),
        case("GET /admin/loyalty/points/{customer_id}/history", 200, path_parameters=path),
        # The same keyed request twice: the second is the replay checked below.
        *(
            case(
                "POST /admin/loyalty/points/adjust",
                200,
                headers=keyed,
                query={"include_history": "true"},
                body=earn,
            )
            for _ in range(2)
        ),
        case("POST /admin/loyalty/points/adjust", 422, headers=keyed, body=earn),
        case(
            "POST /admin/loyalty/points/adjust",
            400,
            body={"customer_id": customer_id, "delta": -11},
        ),
        case("POST /admin/loyalty/points/adjust", 404, body={"customer_id": "nobody", "delta": 1}),
        case("POST /admin/loyalty/points/adjust", 403, headers=reader, body=earn),
        case(
            "POST /admin/loyalty/points/adjust",
            401,
            headers={"Authorization": "Bearer not-a-token"},
            body=earn,
        ),
        case("POST /admin/loyalty/points/adjust", 413, body={**earn, "reason": "x" * 70_000}),
        case("GET /admin/loyalty/points/{customer_id}", 200, path_parameters=path),
        case(
            "GET /admin/loyalty/points/{customer_id}/history",
            200,
            path_parameters=path,
            query={"order": "created_at", "limit": 5},
        ),
        case(
            "GET /admin/loyalty/points/{customer_id}/history", 401, path_parameters=path, headers={}
        ),
    ]
    replayed = []
    for label, expected, request in cases:
        response = request.call()
        assert response.status_code == expected, f"{label}: {response.status_code} {response.text}"
        headers = {name.lower(): value for name, value in response.headers.items()}
        replayed.append(headers.get("idempotent-replayed"))
        request.validate_response(response, checks=CHECKS)
    assert replayed[10] == ["true"], "the second keyed request is a replay"

    # Failed logins for one email: 401 until the per-email limit, then 429 with Retry-After.
    for label in ("POST /admin/auth/token", "POST /auth/user/emailpass"):
        wrong = {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "wrong"}
        statuses = []
        for _ in range(30):
            _, _, request = case(label, 0, headers={}, body=wrong)
            response = request.call()
            statuses.append(response.status_code)
            request.validate_response(response, checks=CHECKS)
            if response.status_code == 429:
                break
        assert statuses[-1] == 429 and set(statuses[:-1]) <= {401}, statuses


def test_every_served_operation_is_fuzzed(fuzz_schema: OpenApiSchema) -> None:
    """The served document describes every operation the router answers, so each is fuzzed
    below (test_openapi.py checks the converse). Schemathesis leaves the operation that
    serves its document out of its own list; it is fuzzed by name like the others."""
    served = {result.ok().label for result in fuzz_schema.get_all_operations()}
    assert served | {"GET /openapi.json"} == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzz(fuzz_schema: OpenApiSchema, fuzz_backend: Backend, label: str) -> None:
    backend = fuzz_backend
    operation = fuzz_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    statuses: Counter[int] = Counter()

    def call_and_check(case: schemathesis.Case) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    test: Any = build_operation_test(
        config=fuzz_schema.config,
        operation=operation,
        test_func=call_and_check,
        given_kwargs={},
        feedback=FeedbackSources(constants_value_source=make_constants_value_source(fuzz_schema)),
    )
    try:
        test()
    except FailureGroup as failures:
        pytest.fail(f"{label} on {backend.kind}:\n{failures}", pytrace=False)
    print(
        f"\nfuzz {backend.kind} {label}: {statuses.total()} cases, {dict(sorted(statuses.items()))}"
    )
    assert statuses.total() > 0
    # The server is still answering after the fuzzing.
    assert httpx.get(f"{backend.server.base_url}/health", timeout=30).status_code == 200
