"""`loyalty verify`: recompute every balance from the ledger and check SPEC section 6."""

from __future__ import annotations

import time
from collections.abc import Callable

from loyalty.db import Database
from loyalty.ledger import invariants, replay

_ALL_CHECKS = {
    **invariants.SEQUENCE_CHECK_NAMES,
    **invariants.BALANCE_CHECK_NAMES,
    **invariants.FEATURE_CHECK_NAMES,
    **replay.CHECK_NAMES,
    "orphans": "every customer has one balance row, and every adjustment a customer",
}


async def verify(db: Database, say: Callable[[str], None]) -> bool:
    """Reports on every invariant through `say`; True when all hold."""
    started = time.monotonic()
    # One snapshot: adjustments committed while this runs are either all seen or not at all.
    async with db.read(snapshot=True) as conn:
        customers, adjustments = await invariants.count_ledger(conn)
        say(f"checking {adjustments} adjustments of {customers} customers ...")
        violations = await invariants.invariant_violations(conn)
        findings = await replay.replay_all(conn)
    for name in replay.CHECK_NAMES:
        violations[name] = (findings.counts[name], findings.samples[name])
    failed = 0
    for name, description in _ALL_CHECKS.items():
        count, samples = violations[name]
        if count:
            failed += 1
            where = "first broken link" if name == "hash_chain" else "customers"
            say(f"FAIL  {description}: broken by {count}; {where}: {', '.join(samples)}")
        else:
            say(f"ok    {description}")
    elapsed = time.monotonic() - started
    if failed:
        say(f"{failed} of {len(_ALL_CHECKS)} checks failed ({elapsed:.1f}s)")
        return False
    say(f"all {len(_ALL_CHECKS)} checks passed ({elapsed:.1f}s)")
    return True
