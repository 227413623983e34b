"""The service's Prometheus metrics and the small functions that record them.

Under `loyalty serve` every worker is its own process, so the figures live in
prometheus_client's multiprocess mode: each worker writes its own memory-mapped files in the
directory named by PROMETHEUS_MULTIPROC_DIR (a fresh one per run: metrics_dir.py), and a scrape
answered by any worker adds up all of them. prometheus_client picks that mode when it is
first imported, from the environment; without the variable (an app built inside a test
process) the metrics live in its ordinary in-process registry.

Recording must stay cheap on the busy routes: a child metric is looked up once per label
values and kept, so a request costs a dictionary lookup and three writes to mapped memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, values

# True when prometheus_client writes to the multiprocess directory. Read from the value class
# it chose at import (not from the environment now), so the scrape always matches how the
# figures were recorded, even if the variable was set after prometheus_client was imported.
MULTIPROCESS = values.ValueClass is not values.MutexValue

# prometheus_client asks os.getpid() on every write, to notice a fork; that system call was
# half the cost of counting a request. The pid is kept here instead and refreshed in a forked
# child, so a fork is still noticed, and each process still writes its own files.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


if MULTIPROCESS:
    os.register_at_fork(after_in_child=_refresh_pid)
    # Before the first metric is made: every value made after takes its class from here.
    values.ValueClass = values.MultiProcessValue(lambda: _pid)  # type: ignore[no-untyped-call]

# Methods outside this set are one label value, so a client cannot grow the label set.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OTHER_METHOD = "OTHER"
# The route label of a request no route matched (any path: one label value, not one each).
UNMATCHED_ROUTE = "unmatched"

HTTP_REQUESTS = Counter(
    "loyalty_http_requests",
    "HTTP requests answered, by method, route template and status",
    ("method", "route", "status"),
)
HTTP_DURATION = Histogram(
    "loyalty_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template",
    ("method", "route"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ADJUSTMENTS = Counter(
    "loyalty_adjustments_committed",
    "Ledger entries committed, by type (adjustment, reversal, release, expiration)",
    ("type",),
)
BATCH_COMMANDS = Histogram(
    "loyalty_ledger_batch_commands",
    "Write commands (adjust, bulk, reverse, pending, expire) per committed ledger batch",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_DEPTH = Gauge(
    "loyalty_group_commit_queue_depth",
    "Commands waiting for the next batch of a group commit, summed over the live workers",
    ("queue",),
    multiprocess_mode="livesum",
)
WORKERS = Gauge(
    "loyalty_workers",
    "Worker processes serving now (each live worker adds 1)",
    multiprocess_mode="livesum",
)
WEBHOOK_DELIVERIES = Counter(
    "loyalty_webhook_deliveries",
    "Webhook delivery attempts answered with a 2xx",
)
WEBHOOK_FAILURES = Counter(
    "loyalty_webhook_delivery_failures",
    "Webhook delivery attempts that failed (a non-2xx answer, a timeout or no connection)",
)

# (method, route template or None, status) -> the children a request of that kind updates.
_request_children: dict[tuple[str, str | None, int], tuple[Counter, Histogram]] = {}
_adjustment_children: dict[str, Counter] = {}


def observe_request(method: str, route: str | None, status: int, duration_s: float) -> None:
    """Counts one answered request and its duration; `route` is the matched route's path
    template, None when no route matched."""
    key = (method, route, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = _children_of(method, route, status)
    children[0].inc()
    children[1].observe(duration_s)


def _children_of(method: str, route: str | None, status: int) -> tuple[Counter, Histogram]:
    method_label = method if method in _METHODS else OTHER_METHOD
    route_label = UNMATCHED_ROUTE if route is None else route
    return (
        HTTP_REQUESTS.labels(method_label, route_label, str(status)),
        HTTP_DURATION.labels(method_label, route_label),
    )


def batch_committed(commands: int, entry_types: Iterable[str]) -> None:
    """Records a ledger batch that has committed: its size and the entries it recorded."""
    BATCH_COMMANDS.observe(commands)
    counts: dict[str, int] = {}
    for entry_type in entry_types:
        counts[entry_type] = counts.get(entry_type, 0) + 1
    for entry_type, count in counts.items():
        child = _adjustment_children.get(entry_type)
        if child is None:
            child = _adjustment_children[entry_type] = ADJUSTMENTS.labels(entry_type)
        child.inc(count)


def queue_depth(queue: str) -> Gauge:
    """The gauge a group commit named `queue` sets to how many commands wait in it."""
    return QUEUE_DEPTH.labels(queue)


def webhook_attempts(delivered: int, failed: int) -> None:
    """Webhook delivery attempts: `delivered` answered with a 2xx, `failed` not (these may
    still be retried)."""
    if delivered:
        WEBHOOK_DELIVERIES.inc(delivered)
    if failed:
        WEBHOOK_FAILURES.inc(failed)
