"""Where an import goes: a running service over HTTP (through the loyalty_client package and
bulk-adjust), or the database directly through the ledger's own batch, acting as an admin
user. Both answer each row as bulk-adjust answers its item, so the importer cannot tell them
apart."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from loyalty import timestamps
from loyalty.auth import repository as users
from loyalty.auth.guard import TokenClaim
from loyalty.auth.scopes import CUSTOMERS_WRITE, LOYALTY_WRITE, parse_scopes
from loyalty.config import Settings
from loyalty.customers import service as customers
from loyalty.db import Database, open_database
from loyalty.emails import email_key
from loyalty.errors import Forbidden, LoyaltyError, Unauthorized
from loyalty.ledger import points, repository
from loyalty.ledger.batch import BulkCommand
from loyalty.ledger.service import Ledger
from loyalty.transfer.rows import Row

if TYPE_CHECKING:
    from loyalty_client import LoyaltyClient

T = TypeVar("T")
APPLIED, SKIPPED, REFUSED, MISSING = "applied", "skipped", "refused", "missing"
# One bulk-adjust body stays under the service's 1 MiB limit with room to spare.
REQUEST_BYTES_MAX = 900 * 1024


@dataclass(frozen=True, slots=True)
class Result:
    kind: str  # APPLIED, SKIPPED (its reference is taken), REFUSED or MISSING (no customer)
    message: str = ""


class Target(Protocol):
    def submit(self, rows: Sequence[Row]) -> Future[list[Result]]:
        """Starts applying the rows (a bulk-adjust of at most 1,000); their results, in order,
        when done. Several may be in flight: the service's group commit shares their
        transaction."""
        ...

    def create_customer(self, customer_id: str, email: str) -> str | None:
        """Creates the customer; None, or why it could not be created."""
        ...

    def existing(self, customer_ids: Sequence[str]) -> set[str]: ...
    def taken(self, customer_ids: Sequence[str], references: Sequence[str]) -> set[tuple[str, str]]:
        """The (customer, reference) pairs among these already used."""
        ...

    def close(self) -> None: ...


def result_of(item: dict[str, Any]) -> Result:
    """A bulk-adjust item's answer as a Result."""
    status = item["status"]
    if status == 200:
        return Result(APPLIED)
    error = item.get("error") or {}
    message = str(error.get("message", f"HTTP {status}"))
    if status == 409 and any(e.get("field") == "reference" for e in error.get("errors") or []):
        return Result(SKIPPED, message)
    return Result(MISSING if status == 404 else REFUSED, message)


class ServiceTarget:
    """A running service, through the Python client (retries keep their Idempotency-Key,
    so a bulk retried after a lost answer is recorded once)."""

    def __init__(self, client: LoyaltyClient, in_flight: int) -> None:
        self._client = client
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="import")
        self._references: dict[str, set[str]] = {}  # dry run: what each customer has used

    def submit(self, rows: Sequence[Row]) -> Future[list[Result]]:
        return self._pool.submit(self._apply, rows)

    def _apply(self, rows: Sequence[Row]) -> list[Result]:
        from loyalty_client.jsonwire import dumps

        results: list[Result] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            item = _item(row)
            item_size = len(dumps(item)) + 1
            if chunk and size + item_size > REQUEST_BYTES_MAX:
                results += self._bulk(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += item_size
        if chunk:
            results += self._bulk(chunk)
        return results

    def _bulk(self, items: list[dict[str, Any]]) -> list[Result]:
        return [result_of(item) for item in self._client.bulk_adjust(items, atomic=False)]

    def create_customer(self, customer_id: str, email: str) -> str | None:
        from loyalty_client import LoyaltyError as ClientError

        try:
            self._client.create_customer(email, id=customer_id)
        except ClientError as error:
            if error.status >= 500 or error.status in (401, 403):
                raise
            return error.message
        return None

    def existing(self, customer_ids: Sequence[str]) -> set[str]:
        from loyalty_client import NotFound

        found = set()
        for customer_id in customer_ids:
            try:
                self._client.get_customer(customer_id)
            except NotFound:
                continue
            found.add(customer_id)
        return found

    def taken(self, customer_ids: Sequence[str], references: Sequence[str]) -> set[tuple[str, str]]:
        wanted = set(references)
        used: set[tuple[str, str]] = set()
        for customer_id in customer_ids:
            if customer_id not in self._references:
                # Each customer's references are read once (a page per 100 adjustments).
                self._references[customer_id] = {
                    adjustment["reference"]
                    for adjustment in self._client.list_adjustments(customer_id=customer_id)
                    if adjustment.get("reference") is not None
                }
            used.update((customer_id, ref) for ref in self._references[customer_id] & wanted)
        return used

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._client.close()


def _item(row: Row) -> dict[str, Any]:
    body = row.body
    item: dict[str, Any] = {
        "customer_id": body.customer_id,
        "delta": points.render(body.delta_hundredths).decode(),
    }
    if body.reason is not None:
        item["reason"] = body.reason
    if body.reference is not None:
        item["reference"] = body.reference
    if body.metadata is not None:
        item["metadata"] = body.metadata
    if body.expires_at_ms is not None:
        item["expires_at"] = timestamps.render(body.expires_at_ms)
    return item


class DatabaseTarget:
    """The database of LOYALTY_DATABASE_URL, through the ledger's group commit and batch
    (the same rules, locks, events and hash chains as a request), as the admin user `email`:
    `created_by` on what it records is that user's id."""

    def __init__(self, settings: Settings, email: str, create_customers: bool) -> None:
        # The ledger's tasks live on a loop of their own thread, so the next chunk is read
        # while the database applies this one.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="import-db")
        self._thread.start()
        self._settings = settings
        try:
            self._db, self._ledger, self._claim = self._run(self._open(email, create_customers))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _open(
        self, email: str, create_customers: bool
    ) -> tuple[Database, Ledger, TokenClaim]:
        db = await open_database(self._settings.database_url, 2)
        try:
            async with db.read() as conn:
                user = await users.find_user_by_email_key(conn, email_key(email))
            if user is None or user.disabled_at_ms is not None:
                raise Unauthorized(f"--as: no enabled admin user with email {email}")
            scopes = parse_scopes(user.scopes)
            needed = [LOYALTY_WRITE] + ([CUSTOMERS_WRITE] if create_customers else [])
            for scope in needed:
                if scope not in scopes:
                    raise Forbidden(f"--as: {email} does not hold the scope {scope}")
        except BaseException:
            await db.close()
            raise
        ledger = Ledger(
            db, self._settings.allow_negative_balance, self._settings.points_expire_after_ms
        )
        ledger.start()
        return db, ledger, TokenClaim(user.id, frozenset(scopes))

    def submit(self, rows: Sequence[Row]) -> Future[list[Result]]:
        return asyncio.run_coroutine_threadsafe(self._apply(rows), self._loop)

    async def _apply(self, rows: Sequence[Row]) -> list[Result]:
        command = BulkCommand([row.body for row in rows], atomic=False, claim=self._claim)
        reply = await self._ledger.submit(command)
        answer = msgspec.json.decode(reply.body)
        return [result_of(item) for item in answer["results"]]

    def create_customer(self, customer_id: str, email: str) -> str | None:
        new = customers.NewCustomer(email=email, id=customer_id)
        try:
            self._run(customers.create_customer(self._db, new))
        except LoyaltyError as error:
            return error.message
        return None

    def existing(self, customer_ids: Sequence[str]) -> set[str]:
        return set(self._run(self._balances(list(customer_ids))))

    async def _balances(self, customer_ids: list[str]) -> list[str]:
        async with self._db.read() as conn:
            return list(await repository.find_balances(conn, customer_ids))

    def taken(self, customer_ids: Sequence[str], references: Sequence[str]) -> set[tuple[str, str]]:
        return set(self._run(self._references(list(customer_ids), list(references))))

    async def _references(
        self, customer_ids: list[str], references: list[str]
    ) -> list[tuple[str, str]]:
        async with self._db.read() as conn:
            return list(await repository.find_references(conn, customer_ids, references))

    def close(self) -> None:
        async def stop() -> None:
            await self._ledger.stop()
            await self._db.close()

        try:
            self._run(stop())
        finally:
            self._stop_loop()
