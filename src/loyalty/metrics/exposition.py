"""What a scrape of GET /metrics returns: every worker's figures added up, then the figures
read from the database at scrape time."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from loyalty import metrics_dir
from loyalty.db import Database
from loyalty.errors import DatabaseUnavailable
from loyalty.events.repository import backlog
from loyalty.metrics.instruments import MULTIPROCESS, WORKERS

# prometheus_client's text format 0.0.4, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _DatabaseFigures:
    """A collector of what one scrape read from the database."""

    def __init__(self, backlog: dict[str, int] | None) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "loyalty_database_up",
            "1 when this scrape could read the database (for the event backlog), else 0",
            value=0 if self._backlog is None else 1,
        )
        family = GaugeMetricFamily(
            "loyalty_event_backlog",
            "Events each outbox consumer (NATS publisher, webhook dispatcher) has still to"
            " handle: the last event's position minus the consumer's",
            labels=("consumer",),
        )
        for consumer, waiting in (self._backlog or {}).items():
            family.add_metric((consumer,), waiting)
        yield family


async def scrape(db: Database) -> bytes:
    try:
        async with db.read() as conn:
            waiting: dict[str, int] | None = await backlog(conn)
    except DatabaseUnavailable:
        # The process figures are worth most when the database is in trouble: still answer.
        waiting = None
    figures = CollectorRegistry(auto_describe=False)
    figures.register(_DatabaseFigures(waiting))
    return generate_latest(_workers()) + generate_latest(figures)


def _workers() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    forget_dead_workers()
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def forget_dead_workers() -> None:
    """Drops the live gauges (queue depth) of workers that died without stopping, such as one
    killed and replaced by uvicorn's supervisor: their last values would otherwise count
    forever. Counters and histograms of dead workers stay, so totals never go backwards."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    pids: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        digits = os.path.basename(path).rsplit("_", 1)[1].removesuffix(".db")
        if digits.isdigit():
            pids.add(int(digits))
    for pid in pids:
        if not metrics_dir.alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def worker_started() -> None:
    WORKERS.set(1)


def worker_stopping() -> None:
    """Called as a worker stops: its live gauges leave the sums at once."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if MULTIPROCESS and directory:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
