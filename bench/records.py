"""The records of one database's run: what was measured and checked, as the JSON file holds it.

A Measurement is one wrk run against the service, a RawResult one raw-limit run straight on
the database, and a DatabaseRun everything about one database: both lists, the checks, the
versions, the phases' durations, the targets' verdicts and the errors. The JSON file is
`dataclasses.asdict` of a DatabaseRun, so its fields' names and order are the file's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    phase: str  # main, s8, s5-fresh, s5-loaded, s7-loaded
    scenario: str
    title: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    raw_work: str
    raw_rps: float | None = None
    ratio: float | None = None
    worker_peak_mb: dict[str, float] = field(default_factory=dict)
    item_errors: int = 0  # S6: items of 2xx bulks that failed (or were not answered)


@dataclass
class RawResult:
    tool: str
    work: str
    clients: int
    customers: int
    seconds: float
    transactions: int
    failed: int
    tps: float
    p50_ms: float
    p99_ms: float


@dataclass
class DatabaseRun:
    database: str
    mode: str
    duration_s: int
    started_at: str
    workers: int
    measurements: list[Measurement] = field(default_factory=list)
    warmups: list[Measurement] = field(default_factory=list)
    raw_limits: list[RawResult] = field(default_factory=list)
    verify: list[dict[str, Any]] = field(default_factory=list)
    ledger_counts: list[dict[str, Any]] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    s5: list[dict[str, Any]] = field(default_factory=list)
    s6: list[dict[str, Any]] = field(default_factory=list)
    s7: list[dict[str, Any]] = field(default_factory=list)
    # S8 against S1 at 64 connections in the same run: req/s of each and their ratio.
    s8: list[dict[str, Any]] = field(default_factory=list)
    # S7's point in time per phase: the as_of sent, the balance expected there, the answer.
    as_of: list[dict[str, Any]] = field(default_factory=list)
    # S8: the load's events at the webhook receiver and on NATS (lags, drain, signatures).
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # CPU used by other processes while the harness itself was idle: noise in the numbers.
    background_cpu_percent: dict[str, float] = field(default_factory=dict)
