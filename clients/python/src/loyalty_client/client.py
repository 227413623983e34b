"""LoyaltyClient: the Loyalty Points API over httpx, synchronous.

Every call that writes sends an Idempotency-Key (a fresh uuid4 unless the caller gives one)
and keeps it on its retries, so a retried adjust is recorded once however many times it
reaches the service.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from loyalty_client import jsonwire
from loyalty_client.errors import LoyaltyError, Unexpected, error_from
from loyalty_client.jsonwire import Amount, to_decimal
from loyalty_client.retry import RetryPolicy, parse_retry_after, retryable

JSONObject = dict[str, Any]
Timestamp = datetime | str
PAGE_SIZE_MAX = 100
BULK_MAX = 1000


class LoyaltyClient:
    """A client for one service. Authenticate with a secret key (`api_key="sk_…"`), a JWT
    (`token=`), or call `login(email, password)`.

    Example: `with LoyaltyClient(url, api_key="sk_…") as loyalty:` then
    `loyalty.adjust("cus_1", Decimal("12.50"), reason="order", reference="order_1")`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if api_key is not None and token is not None:
            raise ValueError("give api_key or token, not both")
        self.retry = RetryPolicy(max_retries, backoff, backoff_max)
        self._sleep = sleep
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self._authorization: str | None = None
        if api_key is not None:
            # Medusa's form for a secret key: Basic with the key as the user, no password.
            self._authorization = "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()
        elif token is not None:
            self._authorization = f"Bearer {token}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LoyaltyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- authentication -------------------------------------------------------------------

    def login(self, email: str, password: str) -> JSONObject:
        """POST /admin/auth/token; later calls use the token. Returns `{"token", "user"}`."""
        answer = self.request("POST", "/admin/auth/token", {"email": email, "password": password})
        self._authorization = f"Bearer {answer['token']}"
        return answer

    def create_api_key(
        self, title: str, scopes: Sequence[str] | None = None, *, idempotency_key: str | None = None
    ) -> JSONObject:
        """POST /admin/api-keys: the new key, whose `token` is shown only this once."""
        body: JSONObject = {"title": title}
        if scopes is not None:
            body["scopes"] = list(scopes)
        return _field(self._write("POST", "/admin/api-keys", body, idempotency_key), "api_key")

    # --- customers ------------------------------------------------------------------------

    def create_customer(
        self,
        email: str,
        *,
        id: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        idempotency_key: str | None = None,
        **more: Any,
    ) -> JSONObject:
        """POST /admin/customers; `more` passes newer fields (metadata, phone, company_name)."""
        body = _present(email=email, id=id, first_name=first_name, last_name=last_name, **more)
        return _field(self._write("POST", "/admin/customers", body, idempotency_key), "customer")

    def get_customer(self, customer_id: str) -> JSONObject:
        return _field(self.request("GET", f"/admin/customers/{_segment(customer_id)}"), "customer")

    def list_customers(self, q: str | None = None, limit: int = 20, offset: int = 0) -> JSONObject:
        """One page: `{"customers", "count", "offset", "limit"}`."""
        params = _present(q=q, limit=limit, offset=offset)
        return self.request("GET", "/admin/customers", params=params)

    # --- points ---------------------------------------------------------------------------

    def adjust(
        self,
        customer_id: str,
        delta: Amount,
        reason: str | None = None,
        *,
        reference: str | None = None,
        metadata: Mapping[str, str] | None = None,
        expires_at: Timestamp | None = None,
        include_history: bool = False,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """POST /admin/loyalty/points/adjust → `{"id", "customer_id", "balance_after",
        "updated_at"}` (and `history` when asked), amounts as Decimals."""
        body = adjust_body(customer_id, delta, reason, reference, metadata, expires_at)
        params = {"include_history": "true"} if include_history else None
        return self._write("POST", "/admin/loyalty/points/adjust", body, idempotency_key, params)

    def bulk_adjust(
        self,
        items: Sequence[Mapping[str, Any]],
        atomic: bool = False,
        *,
        idempotency_key: str | None = None,
    ) -> list[JSONObject]:
        """POST /admin/loyalty/points/bulk-adjust with 1..1000 adjust bodies (their `delta` a
        Decimal, an int or a numeric string): one `{"index", "status", "adjustment"|"error"}`
        per item, in order. With `atomic`, all or none (an InvalidData naming the failures)."""
        if not 1 <= len(items) <= BULK_MAX:
            raise ValueError(f"bulk_adjust takes 1 to {BULK_MAX} items")
        adjustments = [{**item, "delta": to_decimal(item["delta"])} for item in items]
        for adjustment in adjustments:
            if isinstance(adjustment.get("expires_at"), datetime):
                adjustment["expires_at"] = _timestamp(adjustment["expires_at"])
        body = {"adjustments": adjustments, "atomic": atomic}
        answer = self._write("POST", "/admin/loyalty/points/bulk-adjust", body, idempotency_key)
        results: list[JSONObject] = answer["results"]
        return results

    def balance(self, customer_id: str, as_of: Timestamp | None = None) -> JSONObject:
        """`{"customer_id", "balance", "updated_at", ...}`; `as_of` a past moment."""
        params = {"as_of": _timestamp(as_of)} if as_of is not None else None
        return self.request("GET", f"/admin/loyalty/points/{_segment(customer_id)}", params=params)

    def history(
        self, customer_id: str, limit: int = 20, offset: int = 0, oldest_first: bool = False
    ) -> JSONObject:
        """One page of a customer's adjustments: `{"adjustments", "count", "offset", "limit"}`."""
        params: JSONObject = {"limit": limit, "offset": offset}
        if oldest_first:
            params["order"] = "created_at"
        path = f"/admin/loyalty/points/{_segment(customer_id)}/history"
        return self.request("GET", path, params=params)

    def get_adjustment(self, adjustment_id: str) -> JSONObject:
        path = f"/admin/loyalty/adjustments/{_segment(adjustment_id)}"
        return _field(self.request("GET", path), "adjustment")

    def reverse(
        self,
        adjustment_id: str,
        points: Amount | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """POST /admin/loyalty/adjustments/{id}/reverse: all that is left of it, or `points`."""
        body = _present(points=None if points is None else to_decimal(points, "points"))
        body.update(_present(reason=reason))
        path = f"/admin/loyalty/adjustments/{_segment(adjustment_id)}/reverse"
        return self._write("POST", path, body, idempotency_key)

    def list_adjustments(
        self,
        *,
        customer_id: str | None = None,
        type: str | None = None,
        reference: str | None = None,
        page_size: int = PAGE_SIZE_MAX,
    ) -> Iterator[JSONObject]:
        """Every adjustment matching the filters, newest first, page by page (cursor)."""
        params = _present(customer_id=customer_id, type=type, reference=reference, limit=page_size)
        while True:
            page = self.request("GET", "/admin/loyalty/adjustments", params=params)
            yield from page["adjustments"]
            if page.get("next_cursor") is None:
                return
            params["cursor"] = page["next_cursor"]

    def events(
        self, after: str | None = None, types: Sequence[str] | None = None, page_size: int = 100
    ) -> Iterator[JSONObject]:
        """Every event after `after` (an event id; None: from the start) in commit order,
        until the feed has no more; resume later from the last id seen."""
        params = _present(after=after, limit=page_size)
        if types:
            params["types"] = ",".join(types)
        while True:
            page = self.request("GET", "/admin/loyalty/events", params=params)
            yield from page["events"]
            if not page.get("has_more") or not page["events"]:
                return
            params["after"] = page["events"][-1]["id"]

    # --- transport ------------------------------------------------------------------------

    def _write(
        self,
        method: str,
        path: str,
        body: JSONObject,
        idempotency_key: str | None,
        params: Mapping[str, Any] | None = None,
    ) -> JSONObject:
        return self.request(
            method, path, body, params=params, idempotency_key=idempotency_key or str(uuid.uuid4())
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """One call, retried per the policy with the same body and Idempotency-Key; the
        decoded answer, or the LoyaltyError subclass of the failure."""
        headers = {"Accept": "application/json"}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        content = None
        if body is not None:
            content = jsonwire.dumps(body)
            headers["Content-Type"] = "application/json"
        retry = 0
        while True:
            try:
                return self._once(method, path, content, headers, params)
            except LoyaltyError as error:
                delay = self.retry.delay_s(retry, error.retry_after_s) if retryable(error) else None
                if delay is None:
                    raise
            self._sleep(delay)
            retry += 1

    def _once(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None,
    ) -> JSONObject:
        try:
            response = self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TransportError as error:
            # No answer (refused, reset, timed out): status 0, retried like a 503.
            raise Unexpected(0, "unexpected_state", f"no answer: {error!r}") from error
        try:
            decoded = jsonwire.loads(response.content) if response.content else None
        except ValueError:
            decoded = None
        if response.is_success:
            if not isinstance(decoded, dict):
                raise Unexpected(
                    response.status_code, "unexpected_state", "the answer is not a JSON object"
                )
            return decoded
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise error_from(response.status_code, decoded, retry_after)


def adjust_body(
    customer_id: str,
    delta: Amount,
    reason: str | None = None,
    reference: str | None = None,
    metadata: Mapping[str, str] | None = None,
    expires_at: Timestamp | None = None,
) -> JSONObject:
    """The JSON body of one adjustment (also an item of bulk_adjust)."""
    body: JSONObject = {"customer_id": customer_id, "delta": to_decimal(delta)}
    body.update(
        _present(
            reason=reason,
            reference=reference,
            metadata=None if metadata is None else dict(metadata),
            expires_at=None if expires_at is None else _timestamp(expires_at),
        )
    )
    return body


def _field(answer: JSONObject, name: str) -> JSONObject:
    """The object an envelope holds (`{"customer": {...}}`)."""
    value = answer.get(name)
    if not isinstance(value, dict):
        raise Unexpected(200, "unexpected_state", f"the answer has no {name} object")
    return value


def _present(**fields: Any) -> JSONObject:
    return {name: value for name, value in fields.items() if value is not None}


def _timestamp(value: Timestamp) -> str:
    """ISO 8601 for the service: an aware datetime in UTC with milliseconds, or the string."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware datetimes")
    return value.isoformat(timespec="milliseconds")


def _segment(value: str) -> str:
    """A path segment, escaped so an id can never reach another route."""
    return quote(value, safe="")


__all__ = ["BULK_MAX", "JSONObject", "LoyaltyClient", "adjust_body"]
