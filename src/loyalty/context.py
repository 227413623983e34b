"""What every route needs in one worker: the settings, the database, the ledger's batched
paths and the guard that checks each caller."""

from __future__ import annotations

from dataclasses import dataclass, field

from loyalty.auth.guard import Guard
from loyalty.config import Settings
from loyalty.db import Database
from loyalty.ledger.service import Ledger


@dataclass(slots=True)
class AppContext:
    settings: Settings
    guard: Guard = field(default_factory=Guard)
    # Both set by the app's lifespan, before the first request.
    db: Database = None  # type: ignore[assignment]
    ledger: Ledger = None  # type: ignore[assignment]
