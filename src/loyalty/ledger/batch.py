"""One batch of ledger writes: the commands waiting in a worker at one moment, applied in one
transaction (group_commit.py runs it), each command getting its own outcome.

The batch confirms its callers, claims their idempotency keys, locks its customers' balance
rows in customer_id order, then applies each command in arrival order on the customers'
accounts (accounts.py): every adjustment's place (seq, id, created_at, hash) is taken while
the customer's row is locked, so each customer's adjustments form one total order, and a
customer's due expirations are recorded before anything else of it. One command's refusal
never fails another; an atomic bulk is undone on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from loyalty.auth import guard
from loyalty.auth.guard import TokenClaim
from loyalty.auth.scopes import LOYALTY_WRITE
from loyalty.db import Connection
from loyalty.errors import (
    Conflict,
    FieldError,
    InvalidData,
    LoyaltyError,
    NotAllowed,
    NotFound,
)
from loyalty.events import repository as events
from loyalty.events.catalogue import BY_ADJUSTMENT_TYPE
from loyalty.events.repository import NewEvent
from loyalty.http.schemas import Error, FieldProblem
from loyalty.idempotency import policy
from loyalty.idempotency.policy import KeyedRequest, Replay
from loyalty.ids import new_id
from loyalty.ledger import points, repository
from loyalty.ledger.accounts import Account, Entry
from loyalty.ledger.points import BALANCE_MAX_HUNDREDTHS
from loyalty.ledger.repository import AdjustmentRow, PendingRow
from loyalty.ledger.schemas import (
    HISTORY_IN_ADJUST,
    AdjustBody,
    AdjustResponse,
    BulkResponse,
    BulkResult,
    PendingBody,
    PendingEnvelope,
    ReverseBody,
    ReverseResponse,
    pending,
    seed_adjustment,
)
from loyalty.timestamps import now_ms, render

_encoder = msgspec.json.Encoder()
_NOT_REVERSIBLE = ("reversal", "expiration")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Write:
    """A write a caller asked for: who (confirmed in the batch), and its Idempotency-Key."""

    claim: TokenClaim
    keyed: KeyedRequest | None = None


@dataclass(frozen=True, slots=True)
class AdjustCommand(_Write):
    body: AdjustBody
    include_history: bool = False


@dataclass(frozen=True, slots=True)
class BulkCommand(_Write):
    # Each item's body, or why it is invalid (its own outcome, or the atomic bulk's failure).
    items: list[AdjustBody | LoyaltyError]
    atomic: bool


@dataclass(frozen=True, slots=True)
class ReverseCommand(_Write):
    adjustment_id: str
    body: ReverseBody


@dataclass(frozen=True, slots=True)
class CreatePendingCommand(_Write):
    body: PendingBody


@dataclass(frozen=True, slots=True)
class SettlePendingCommand:
    """Release or void pending points; without a claim, the scheduler's release of what is
    due, which is quietly nothing when they are no longer pending."""

    pending_id: str
    release: bool
    claim: TokenClaim | None
    keyed: KeyedRequest | None = None


@dataclass(frozen=True, slots=True)
class ExpireCommand:
    """The scheduler's: record the customers' due expirations."""

    customer_ids: list[str]


Command = (
    AdjustCommand
    | BulkCommand
    | ReverseCommand
    | CreatePendingCommand
    | SettlePendingCommand
    | ExpireCommand
)


def weight(command: Command) -> int:
    """How many adjustments a command may record, for the batch's size limit."""
    return len(command.items) if isinstance(command, BulkCommand) else 1


@dataclass(slots=True)
class Reply:
    body: bytes  # the JSON response, exactly as first sent
    status: int = 200
    replayed: bool = False
    recorded: tuple[AdjustmentRow, ...] = ()  # for the audit log; empty for a replay


Outcome = Reply | LoyaltyError


def customer_not_found(customer_id: str) -> NotFound:
    return NotFound(f"Customer with id: {customer_id} was not found")


def adjustment_not_found(adjustment_id: str) -> NotFound:
    return NotFound(f"Adjustment with id: {adjustment_id} was not found")


def pending_not_found(pending_id: str) -> NotFound:
    return NotFound(f"Pending points with id: {pending_id} were not found")


def error_body(error: LoyaltyError) -> Error:
    problems = [FieldProblem(e.field, e.message) for e in error.errors]
    return Error(error.type, error.message, problems or msgspec.UNSET)


@dataclass(slots=True)
class Batch:
    commands: list[Command]
    allow_negative: bool
    # Set: credits without an expires_at expire this long after they are made.
    expire_after_ms: int | None = None
    conn: Connection = field(init=False)
    now: int = 0
    outcomes: list[Outcome | None] = field(default_factory=list)
    finished: list[Outcome] | None = None  # every outcome, once only COMMIT is left
    accounts: dict[str, Account] = field(default_factory=dict)
    rows: list[AdjustmentRow] = field(default_factory=list)
    # What the commands read before applying, keyed by id.
    originals: dict[str, AdjustmentRow] = field(default_factory=dict)
    reversed: dict[str, int] = field(default_factory=dict)
    pending_rows: dict[str, PendingRow] = field(default_factory=dict)
    new_pending: list[PendingRow] = field(default_factory=list)
    settled: dict[str, PendingRow] = field(default_factory=dict)
    taken_references: dict[tuple[str, str], str] = field(default_factory=dict)
    # Per command: the adjustment rows it recorded, for the replies (adjust and bulk).
    recorded: dict[int, list[AdjustmentRow | LoyaltyError]] = field(default_factory=dict)
    # Pending points created or voided, each with how many adjustments came before it, so
    # that their events fall in place among the adjustments'.
    pending_changes: list[tuple[int, str, PendingRow]] = field(default_factory=list)

    async def run(self, conn: Connection) -> list[Outcome]:
        self.conn = conn
        self.outcomes = [None] * len(self.commands)
        await self._confirm_callers()
        await self._claim_keys()
        await self._lock_and_read()
        # Taken while holding the locks, so no later adjustment of these customers can
        # carry an earlier time.
        self.now = now_ms()
        await self._read_lots()
        for i in self._waiting():
            self.outcomes[i] = self._apply(i, self.commands[i])
        await self._write()
        await self._reply()
        await self._record_events()
        self.finished = [outcome for outcome in self.outcomes if outcome is not None]
        return self.finished

    def first_adjustment_id(self) -> str | None:
        return self.rows[0].id if self.rows else None

    def _waiting(self) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome is None]

    async def _confirm_callers(self) -> None:
        """In the transaction: a deleted, disabled or narrowed user is refused at once."""
        claims = [c.claim for c in self.commands if not isinstance(c, ExpireCommand) and c.claim]
        if not claims:
            return
        refusals = await guard.confirm(self.conn, claims, LOYALTY_WRITE)
        for i, command in enumerate(self.commands):
            claim = getattr(command, "claim", None)
            if claim is not None:
                self.outcomes[i] = refusals[claim.actor_id]

    async def _claim_keys(self) -> None:
        keyed = [i for i in self._waiting() if getattr(self.commands[i], "keyed", None)]
        if not keyed:
            return
        requests = [getattr(self.commands[i], "keyed", None) for i in keyed]
        decisions = await policy.claim(self.conn, requests)
        for i, decision in zip(keyed, decisions, strict=True):
            if isinstance(decision, Replay):
                self.outcomes[i] = Reply(decision.body, decision.status, replayed=True)
            elif decision is not None:
                self.outcomes[i] = decision

    async def _lock_and_read(self) -> None:
        """Locks every customer the commands touch, then reads what the commands need under
        those locks: pending points' status, reversed totals, references in use."""
        waiting = [self.commands[i] for i in self._waiting()]
        reversals = [c.adjustment_id for c in waiting if isinstance(c, ReverseCommand)]
        settles = [c.pending_id for c in waiting if isinstance(c, SettlePendingCommand)]
        # Who an adjustment or pending points belong to never changes: read before locking.
        if reversals:
            self.originals = await repository.find_adjustments(self.conn, reversals)
        if settles:
            self.pending_rows = await repository.find_pending(self.conn, settles)
        customers: set[str] = set()
        references: set[str] = set()
        for command in waiting:
            if isinstance(command, AdjustCommand | CreatePendingCommand):
                customers.add(command.body.customer_id)
                if command.body.reference is not None:
                    references.add(command.body.reference)
            elif isinstance(command, BulkCommand):
                for item in command.items:
                    if isinstance(item, AdjustBody):
                        customers.add(item.customer_id)
                        if item.reference is not None:
                            references.add(item.reference)
            elif isinstance(command, ExpireCommand):
                customers.update(command.customer_ids)
        customers.update(row.customer_id for row in self.originals.values())
        customers.update(row.customer_id for row in self.pending_rows.values())
        if not customers:
            return
        ordered = sorted(customers)
        for row in await repository.lock_balances(self.conn, ordered):
            self.accounts[row.customer_id] = Account.from_row(row)
        if settles:  # their status as of now, under the lock
            self.pending_rows = await repository.find_pending(self.conn, settles)
        if self.originals:
            self.reversed = await repository.reversed_totals(self.conn, list(self.originals))
        if references:
            self.taken_references = await repository.find_references(
                self.conn, ordered, sorted(references)
            )

    async def _read_lots(self) -> None:
        debiting: set[str] = set()
        for i in self._waiting():
            command = self.commands[i]
            if isinstance(command, AdjustCommand) and command.body.delta_hundredths < 0:
                debiting.add(command.body.customer_id)
            elif isinstance(command, BulkCommand):
                debiting.update(
                    item.customer_id
                    for item in command.items
                    if isinstance(item, AdjustBody) and item.delta_hundredths < 0
                )
            elif isinstance(command, ReverseCommand):
                original = self.originals.get(command.adjustment_id)
                if original is not None:
                    debiting.add(original.customer_id)
        wanted = [
            customer_id
            for customer_id, account in self.accounts.items()
            if account.needs_lots(self.now, customer_id in debiting)
        ]
        if not wanted:
            return
        lots: dict[str, list[repository.LotRow]] = {customer_id: [] for customer_id in wanted}
        for row in await repository.lots_of(self.conn, wanted):
            lots[row.customer_id].append(row)
        for customer_id, rows in lots.items():
            self.accounts[customer_id].load_lots(rows)

    def _account(self, customer_id: str) -> Account:
        """The customer's account with its due expirations recorded; NotFound if none."""
        account = self.accounts.get(customer_id)
        if account is None:
            raise customer_not_found(customer_id)
        self.rows.extend(account.expire_due(self.now))
        return account

    def _record(self, account: Account, entry: Entry) -> AdjustmentRow:
        row = account.record(entry, self.now)
        self.rows.append(row)
        return row

    def _apply(self, index: int, command: Command) -> Outcome | None:
        """Applies one command; its outcome, or None for an adjust (answered in _reply)."""
        try:
            if isinstance(command, AdjustCommand):
                self.recorded[index] = [self._adjust(command.body, command.claim.actor_id)]
                return None
            if isinstance(command, BulkCommand):
                return self._bulk(index, command)
            if isinstance(command, ReverseCommand):
                return self._reverse(command)
            if isinstance(command, CreatePendingCommand):
                return self._create_pending(command)
            if isinstance(command, SettlePendingCommand):
                return self._settle_pending(command)
            return self._expire(command)
        except LoyaltyError as error:
            return error

    def _adjust(self, body: AdjustBody, actor_id: str) -> AdjustmentRow:
        account = self._account(body.customer_id)
        self._check_reference(account, body.reference)
        self._check_rules(account, body.delta_hundredths)
        entry = Entry(
            "adjustment",
            body.delta_hundredths,
            body.reason,
            body.reference,
            body.metadata,
            body.expires_at_ms,
            created_by=actor_id,
            expires_after_ms=self.expire_after_ms,
        )
        return self._record(account, entry)

    def _bulk(self, index: int, command: BulkCommand) -> Outcome | None:
        saved_accounts = {}
        if command.atomic:  # what to restore should an item fail
            for item in command.items:
                customer_id = getattr(item, "customer_id", None)
                if customer_id in self.accounts and customer_id not in saved_accounts:
                    saved_accounts[customer_id] = self.accounts[customer_id].snapshot()
        saved_rows = len(self.rows)
        results: list[AdjustmentRow | LoyaltyError] = []
        for item in command.items:
            if isinstance(item, LoyaltyError):
                results.append(item)
                continue
            try:
                results.append(self._adjust(item, command.claim.actor_id))
            except LoyaltyError as error:
                results.append(error)
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, LoyaltyError)]
        if command.atomic and failed:
            for customer_id, saved in saved_accounts.items():
                self.accounts[customer_id].restore(saved)
            del self.rows[saved_rows:]
            problems = [FieldError(f"adjustments[{i}]", error.message) for i, error in failed]
            return InvalidData(
                f"{len(failed)} of {len(results)} adjustments cannot be recorded, so none was:"
                f" adjustments[{failed[0][0]}]: {failed[0][1].message}",
                problems,
            )
        self.recorded[index] = results
        return None

    def _reverse(self, command: ReverseCommand) -> Outcome:
        original = self.originals.get(command.adjustment_id)
        if original is None:
            raise adjustment_not_found(command.adjustment_id)
        if original.type in _NOT_REVERSIBLE:
            raise NotAllowed(f"An adjustment of type {original.type} cannot be reversed")
        magnitude = abs(original.delta_hundredths)
        reversed_so_far = abs(self.reversed.get(original.id, 0))
        left = magnitude - reversed_so_far
        if left <= 0:
            raise Conflict(f"Adjustment {original.id} has already been reversed in full")
        amount = command.body.points_hundredths or left
        if amount > left:
            raise NotAllowed(
                f"points must be at most {points.render(left).decode()}, what is left to reverse"
                f" of adjustment {original.id}",
                [FieldError("points", "points is more than what is left to reverse")],
            )
        delta = -amount if original.delta_hundredths > 0 else amount
        account = self._account(original.customer_id)
        self._check_rules(account, delta)
        entry = Entry(
            "reversal",
            delta,
            command.body.reason,
            reverses=original.id,
            created_by=command.claim.actor_id,
        )
        row = self._record(account, entry)
        self.reversed[original.id] = self.reversed.get(original.id, 0) + delta
        response = ReverseResponse(
            row.id,
            row.customer_id,
            msgspec.Raw(points.render(row.balance_after_hundredths)),
            render(row.created_at_ms),
            original.id,
        )
        return Reply(_encoder.encode(response), recorded=(row,))

    def _create_pending(self, command: CreatePendingCommand) -> Outcome:
        body = command.body
        account = self._account(body.customer_id)
        self._check_reference(account, body.reference)
        pending_id = new_id("pnd", self.now)
        if body.reference is not None:
            account.references[body.reference] = pending_id
        account.pending += body.points_hundredths
        account.changed = True
        row = PendingRow(
            pending_id,
            body.customer_id,
            body.points_hundredths,
            body.reason,
            body.reference,
            None if body.metadata is None else _encoder.encode(body.metadata).decode(),
            body.expires_at_ms,
            body.release_at_ms,
            "pending",
            None,
            command.claim.actor_id,
            self.now,
            self.now,
        )
        self.new_pending.append(row)
        self.pending_changes.append((len(self.rows), "pending.created", row))
        return Reply(_encoder.encode(PendingEnvelope(pending(row))))

    def _settle_pending(self, command: SettlePendingCommand) -> Outcome:
        row = self.settled.get(command.pending_id) or self.pending_rows.get(command.pending_id)
        if row is None:
            raise pending_not_found(command.pending_id)
        if row.status != "pending":
            if command.claim is None:
                return Reply(b"")  # released or voided meanwhile: nothing to do
            raise Conflict(f"Pending points {row.id} are already {row.status}")
        if command.claim is None and row.release_at_ms > self.now:
            return Reply(b"")
        account = self._account(row.customer_id)
        recorded: tuple[AdjustmentRow, ...] = ()
        adjustment_id = None
        if command.release:
            self._check_rules(account, row.points_hundredths)
            entry = Entry(
                "release",
                row.points_hundredths,
                row.reason,
                row.reference,
                None if row.metadata is None else msgspec.json.decode(row.metadata),
                row.expires_at_ms,
                pending_id=row.id,
                created_by=None if command.claim is None else command.claim.actor_id,
                expires_after_ms=self.expire_after_ms,
            )
            recorded = (self._record(account, entry),)
            adjustment_id = recorded[0].id
        account.pending -= row.points_hundredths
        account.changed = True
        status = "released" if command.release else "voided"
        settled = row._replace(status=status, adjustment_id=adjustment_id, updated_at_ms=self.now)
        self.settled[row.id] = settled
        if not command.release:
            self.pending_changes.append((len(self.rows), "pending.voided", settled))
        return Reply(_encoder.encode(PendingEnvelope(pending(settled))), recorded=recorded)

    def _expire(self, command: ExpireCommand) -> Outcome:
        start = len(self.rows)
        for customer_id in command.customer_ids:
            if customer_id in self.accounts:
                self._account(customer_id)
        return Reply(b"", recorded=tuple(self.rows[start:]))

    def _check_reference(self, account: Account, reference: str | None) -> None:
        if reference is None:
            return
        taken = account.references.get(reference) or self.taken_references.get(
            (account.customer_id, reference)
        )
        if taken is not None:
            raise Conflict(
                f"The reference {reference} is already used by {taken} of this customer",
                [FieldError("reference", f"reference is already used by {taken}")],
            )

    def _check_rules(self, account: Account, delta: int) -> None:
        after = account.balance + delta
        if delta < 0 and after < 0 and not self.allow_negative:
            raise NotAllowed(
                "Insufficient points: the current balance is"
                f" {points.render(account.balance).decode()}, which cannot cover"
                f" {points.render(delta).decode()}"
            )
        if abs(after) > BALANCE_MAX_HUNDREDTHS:
            raise NotAllowed(
                "The balance would leave the supported range of ±"
                f"{points.render(BALANCE_MAX_HUNDREDTHS).decode()} points"
            )

    async def _write(self) -> None:
        changed = [account for account in self.accounts.values() if account.changed]
        tips = [a.row() for a in changed if a.summary() == a.summary_as_read]
        if tips:
            await repository.update_balances(self.conn, tips, tips_only=True)
        if len(tips) < len(changed):
            await repository.update_balances(
                self.conn, [a.row() for a in changed if a.summary() != a.summary_as_read]
            )
        if self.rows:
            await repository.insert_adjustments(self.conn, self.rows)
        inserted, updated, deleted = [], [], []
        for account in changed:
            lots = account.lot_changes()
            inserted += lots[0]
            updated += lots[1]
            deleted += lots[2]
        if inserted or updated or deleted:
            await repository.write_lots(self.conn, inserted, updated, deleted)
        if self.new_pending:
            await repository.insert_pending(self.conn, self.new_pending)
        if self.settled:
            await repository.settle_pending(self.conn, list(self.settled.values()))

    async def _reply(self) -> None:
        """Answers the adjusts and bulks, then keeps every keyed success's response."""
        wanted = [
            (rows[0].customer_id, rows[0].seq)
            for i, rows in self.recorded.items()
            if isinstance(self.commands[i], AdjustCommand)
            and self.commands[i].include_history  # type: ignore[union-attr]
            and isinstance(rows[0], AdjustmentRow)
        ]
        histories = await repository.latest_adjustments_many(self.conn, wanted, HISTORY_IN_ADJUST)
        for i, results in self.recorded.items():
            command = self.commands[i]
            if isinstance(command, AdjustCommand):
                row = results[0]
                if isinstance(row, LoyaltyError):
                    self.outcomes[i] = row
                    continue
                response = _adjust_response(row)
                if command.include_history:
                    items = histories[(row.customer_id, row.seq)]
                    response.history = [seed_adjustment(item) for item in items]
                self.outcomes[i] = Reply(_encoder.encode(response), recorded=(row,))
            else:
                self.outcomes[i] = _bulk_reply(results)
        kept: list[tuple[KeyedRequest, int, bytes]] = []
        for command, outcome in zip(self.commands, self.outcomes, strict=True):
            keyed = getattr(command, "keyed", None)
            if keyed is not None and isinstance(outcome, Reply) and not outcome.replayed:
                kept.append((keyed, outcome.status, outcome.body))
        await policy.remember(self.conn, kept, self.now)

    async def _record_events(self) -> None:
        """Every change of the batch as an event, in the order the changes were made; the
        last statement before COMMIT (see events/repository.py)."""
        changes: list[NewEvent] = []
        pending_changes = iter(self.pending_changes)
        next_pending = next(pending_changes, None)
        for index, row in enumerate([*self.rows, None]):
            while next_pending is not None and next_pending[0] == index:
                _, event_type, pending_row = next_pending
                changes.append(
                    _event(
                        event_type,
                        pending_row.id,
                        pending_row.customer_id,
                        pending(pending_row),
                        pending_row.updated_at_ms,
                    )
                )
                next_pending = next(pending_changes, None)
            if row is not None:
                event_type = BY_ADJUSTMENT_TYPE[row.type]
                changes.append(
                    NewEvent(
                        new_id("evt", row.created_at_ms),
                        event_type,
                        row.id,
                        row.customer_id,
                        row.created_at_ms,
                        None,  # the adjustment's row is the event's data
                    )
                )
        await events.record(self.conn, changes)


def _event(
    event_type: str, subject_id: str, customer_id: str, data: msgspec.Struct, at_ms: int
) -> NewEvent:
    return NewEvent(
        new_id("evt", at_ms), event_type, subject_id, customer_id, at_ms, _encoder.encode(data)
    )


def _adjust_response(row: AdjustmentRow) -> AdjustResponse:
    return AdjustResponse(
        row.id,
        row.customer_id,
        msgspec.Raw(points.render(row.balance_after_hundredths)),
        render(row.created_at_ms),
    )


def _bulk_reply(results: list[AdjustmentRow | LoyaltyError]) -> Reply:
    items = []
    for index, result in enumerate(results):
        if isinstance(result, LoyaltyError):
            items.append(BulkResult(index, result.status, error=error_body(result)))
        else:
            items.append(BulkResult(index, 200, adjustment=_adjust_response(result)))
    recorded = tuple(row for row in results if isinstance(row, AdjustmentRow))
    return Reply(_encoder.encode(BulkResponse(items)), recorded=recorded)
