"""`loyalty import`: a file's rows applied in chunks through a Target (targets.py), with a
summary of what was applied, skipped (its reference is already used for that customer, so
a rerun applies nothing twice) and refused (each with its line and reason).

A row whose customer does not exist is refused, unless `create_customers`: then the
customer is created with the row's `email` and the row applied after. A dry run reads
instead of writing: it checks every row, the customers and the references in use, and
reports what the import would do (the balance rules, such as insufficient points, are only
known when applied).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import islice

from loyalty.ledger.batch import customer_not_found
from loyalty.ledger.schemas import BULK_MAX
from loyalty.transfer.rows import Refused, Row
from loyalty.transfer.targets import APPLIED, MISSING, SKIPPED, Result, Target

CHUNK_ROWS = BULK_MAX  # bulk-adjust's limit
# Two bulks of 1,000 fill one group-commit batch (its weight limit is 2,000); a third is read
# from the file meanwhile.
IN_FLIGHT = 3


@dataclass
class Summary:
    applied: int = 0
    skipped: int = 0
    refused: list[Refused] = field(default_factory=list)
    customers_created: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def rows(self) -> int:
        return self.applied + self.skipped + len(self.refused)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> Iterator[str]:
        verb = "would be " if self.dry_run else ""
        for refusal in sorted(self.refused, key=lambda r: r.line):
            yield f"line {refusal.line}: {refusal.reason}"
        created = f", customers {verb}created {self.customers_created:,}"
        yield (
            f"{'dry run: ' if self.dry_run else ''}rows {verb}applied {self.applied:,},"
            f" skipped {self.skipped:,}, refused {len(self.refused):,}"
            f"{created if self.customers_created else ''}"
            f" ({self.rows:,} rows in {self.seconds:.1f} s, {self.rate:,.0f} rows/s)"
        )


@dataclass
class Importer:
    target: Target
    create_customers: bool = False
    dry_run: bool = False
    on_progress: Callable[[int], None] = lambda done: None
    # Chunks sent and not yet answered: reading the file overlaps with applying it.
    in_flight_max: int = IN_FLIGHT
    summary: Summary = field(default_factory=Summary)
    # Dry run: what is known of customers and of the (customer, reference) pairs in use.
    _known: dict[str, bool] = field(default_factory=dict)
    _would_create: set[str] = field(default_factory=set)
    _used: set[tuple[str, str]] = field(default_factory=set)
    _in_flight: deque[tuple[list[Row], Future[list[Result]]]] = field(default_factory=deque)

    def run(self, rows: Iterable[Row | Refused]) -> Summary:
        started = time.monotonic()
        self.summary.dry_run = self.dry_run
        iterator = iter(rows)
        try:
            while chunk := list(islice(iterator, CHUNK_ROWS)):
                valid = [row for row in chunk if isinstance(row, Row)]
                self.summary.refused += [row for row in chunk if isinstance(row, Refused)]
                if valid and self.dry_run:
                    self._predict(valid)
                elif valid:
                    self._in_flight.append((valid, self.target.submit(valid)))
                    if len(self._in_flight) >= self.in_flight_max:
                        self._finish(self._in_flight.popleft())
                self._progress(started)
            while self._in_flight:
                self._finish(self._in_flight.popleft())
                self._progress(started)
        finally:
            for _, waiting in self._in_flight:
                waiting.cancel()
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def _progress(self, started: float) -> None:
        self.summary.seconds = time.monotonic() - started
        self.on_progress(self.summary.rows)

    def _finish(self, sent: tuple[list[Row], Future[list[Result]]]) -> None:
        rows, results = sent
        missing = self._count(rows, results.result())
        if not missing:
            return
        # Every chunk sent after this one finishes first, so that a new customer's rows,
        # all refused as missing so far, are applied again in the file's order.
        while self._in_flight:
            rows, results = self._in_flight.popleft()
            missing += self._count(rows, results.result())
        creatable = self._create_missing(missing)
        for start in range(0, len(creatable), CHUNK_ROWS):
            again = creatable[start : start + CHUNK_ROWS]
            self._count(again, self.target.submit(again).result(), final=True)

    def _count(self, rows: list[Row], results: list[Result], final: bool = False) -> list[Row]:
        """Adds the results up; the rows whose customer is missing, unless `final` or no
        customer may be created (then they are refused)."""
        missing = []
        for row, result in zip(rows, results, strict=True):
            if result.kind == APPLIED:
                self.summary.applied += 1
            elif result.kind == SKIPPED:
                self.summary.skipped += 1
            elif result.kind == MISSING and self.create_customers and not final:
                missing.append(row)
            else:
                self.summary.refused.append(Refused(row.line, result.message))
        return missing

    def _create_missing(self, rows: list[Row]) -> list[Row]:
        """Creates each missing customer from its first row with an email; the rows to try
        again. The others are refused with the reason."""
        failures: dict[str, str] = {}
        emails: dict[str, str] = {}
        for row in rows:
            if row.email is not None:
                emails.setdefault(row.body.customer_id, row.email)
        for customer_id, email in emails.items():
            failure = self.target.create_customer(customer_id, email)
            if failure is None:
                self.summary.customers_created += 1
            else:
                failures[customer_id] = failure
        again = []
        for row in rows:
            customer_id = row.body.customer_id
            if customer_id not in emails:
                reason = f"{customer_not_found(customer_id).message} and the row has no email"
                self.summary.refused.append(Refused(row.line, reason))
            elif customer_id in failures:
                reason = f"customer {customer_id} cannot be created: {failures[customer_id]}"
                self.summary.refused.append(Refused(row.line, reason))
            else:
                again.append(row)
        return again

    def _predict(self, rows: list[Row]) -> None:
        """What _apply would do, read without writing."""
        unknown = sorted({r.body.customer_id for r in rows} - self._known.keys())
        if unknown:
            found = self.target.existing(unknown)
            self._known.update({customer_id: customer_id in found for customer_id in unknown})
        existing = sorted({r.body.customer_id for r in rows if self._known[r.body.customer_id]})
        references = sorted({r.body.reference for r in rows if r.body.reference is not None})
        if existing and references:
            self._used |= self.target.taken(existing, references)
        emails: dict[str, str] = {}
        for row in rows:
            if row.email is not None:
                emails.setdefault(row.body.customer_id, row.email)
        for row in rows:
            customer_id, reference = row.body.customer_id, row.body.reference or ""
            if not self._known[customer_id] and customer_id not in self._would_create:
                if not self.create_customers:
                    self.summary.refused.append(
                        Refused(row.line, customer_not_found(customer_id).message)
                    )
                    continue
                if customer_id not in emails:
                    reason = f"{customer_not_found(customer_id).message} and the row has no email"
                    self.summary.refused.append(Refused(row.line, reason))
                    continue
                self._would_create.add(customer_id)
                self.summary.customers_created += 1
            if (customer_id, reference) in self._used:
                self.summary.skipped += 1
            else:
                self._used.add((customer_id, reference))
                self.summary.applied += 1
