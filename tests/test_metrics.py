"""GET /metrics (SPEC 8.3): the same figures whichever worker answers, requests counted by
route template with a bounded label set, adjustments and batch sizes as committed, the event
backlog read from the database, a token when one is set, and zero again after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DatabaseFactory
from tests.receiver import receiving
from tests.support import (
    ADJUST_PATH,
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Backend,
    Server,
    assert_error,
    at_once,
    eventually,
    login,
    new_customer,
    sql,
)

WORKERS = 2
SCRAPES = 20
BALANCE_ROUTE = "/admin/loyalty/points/{customer_id}"
METRICS_TOKEN = "metrics-token-0123456789abcdef"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metered(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A `loyalty serve --workers 2` of this file's own, so that nothing else moves its
    figures between a test's two scrapes."""
    workdir = tmp_path_factory.mktemp(f"metrics-{databases.kind}")
    with Backend.start(
        databases.kind,
        databases.new_url(),
        workdir,
        workers=WORKERS,
        LOYALTY_WEBHOOK_RETRY_SCHEDULE="0.2,0.2,0.2",
    ) as backend:
        all_workers_up(backend.server)
        yield backend


def all_workers_up(server: Server, workers: int = WORKERS) -> None:
    """Waits until every worker serves: the server answers /health as soon as one does."""
    eventually(
        lambda: value(scrape(server), "loyalty_workers") == workers or None,
        60,
        f"{workers} workers serving",
    )


def scrape(server: Server, token: str | None = None) -> Samples:
    """One scrape on a connection of its own, which the kernel hands to either worker."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{server.base_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (sample, labels) in samples if sample == name}


def adjust_requests(samples: Samples) -> float:
    return value(
        samples, "loyalty_http_requests_total", method="POST", route=ADJUST_PATH, status="200"
    )


def worker_pids(server: Server) -> set[int]:
    """The uvicorn workers: the server's children started by multiprocessing's spawn."""
    pids = set()
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    for pid in children.read_text().split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            pids.add(int(pid))
    return pids


def test_every_scrape_adds_up_every_worker(metered: Backend) -> None:
    """After N adjusts and M balance reads sent at once over many connections, every one of
    many scrapes, whichever worker answers it, shows exactly N adjust requests, N adjustments
    committed in batches whose sizes add up to N, and M balance reads. Per-process figures
    would differ from one scrape to the next."""
    adjusts, reads = 40, 30
    with metered.client() as client:
        customer_id = new_customer(client)["id"]
    before = scrape(metered.server)
    assert value(before, "loyalty_workers") == WORKERS

    responses = at_once(
        [metered],
        lambda clients: [
            clients[0].post(ADJUST_PATH, json={"customer_id": customer_id, "delta": 1})
            for _ in range(adjusts)
        ],
    )
    assert [r.status_code for r in responses] == [200] * adjusts
    responses = at_once(
        [metered],
        lambda clients: [
            clients[0].get(f"/admin/loyalty/points/{customer_id}") for _ in range(reads)
        ],
    )
    assert [r.status_code for r in responses] == [200] * reads

    for _ in range(SCRAPES):
        after = scrape(metered.server)
        assert value(after, "loyalty_workers") == WORKERS
        assert adjust_requests(after) - adjust_requests(before) == adjusts
        requests = "loyalty_http_requests_total"
        read = {"method": "GET", "route": BALANCE_ROUTE, "status": "200"}
        assert value(after, requests, **read) - value(before, requests, **read) == reads
        committed = "loyalty_adjustments_committed_total"
        assert (
            value(after, committed, type="adjustment") - value(before, committed, type="adjustment")
            == adjusts
        )
        batches = "loyalty_ledger_batch_commands"
        assert value(after, f"{batches}_count") > value(before, f"{batches}_count")
        assert value(after, f"{batches}_sum") - value(before, f"{batches}_sum") == adjusts
        durations = "loyalty_http_request_duration_seconds_count"
        assert (
            value(after, durations, method="POST", route=ADJUST_PATH)
            - value(before, durations, method="POST", route=ADJUST_PATH)
            == adjusts
        )
        queue_depth = "loyalty_group_commit_queue_depth"
        assert value(after, queue_depth, queue="writes") == 0  # nothing waits when idle


def test_unknown_paths_are_one_label_value(metered: Backend) -> None:
    """50 paths no route has add at most one route label value, "unmatched", never a path."""
    before = scrape(metered.server)
    routes_before = label_values(before, "loyalty_http_requests_total", "route")
    marker = uuid.uuid4().hex
    with httpx.Client(base_url=metered.server.base_url, timeout=30) as anon:
        for i in range(50):
            assert anon.get(f"/{marker}-{i}/{uuid.uuid4().hex}").status_code == 404
    after = scrape(metered.server)
    routes_after = label_values(after, "loyalty_http_requests_total", "route")
    assert routes_after - routes_before <= {"unmatched"}
    assert not [route for route in routes_after if marker in route]
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    requests = "loyalty_http_requests_total"
    assert value(after, requests, **unmatched) - value(before, requests, **unmatched) == 50


def test_the_event_backlog_is_read_from_the_database(metered: Backend) -> None:
    """Each outbox consumer's backlog (last event position minus its own) is what every
    scrape shows, read at scrape time."""
    name = f"test-consumer-{uuid.uuid4().hex[:8]}"
    url = metered.database_url
    last = sql(url, "SELECT last_position FROM loyalty_event_sequence WHERE id = 1")[0][0]
    sql(
        url,
        "INSERT INTO loyalty_event_consumers (name, position, owner, lease_until_ms)"
        " VALUES ($1, $2, NULL, 0)",
        name,
        last - 7,
    )
    try:
        for _ in range(5):
            samples = scrape(metered.server)
            assert value(samples, "loyalty_event_backlog", consumer=name) == 7
            assert value(samples, "loyalty_database_up") == 1
    finally:
        sql(url, "DELETE FROM loyalty_event_consumers WHERE name = $1", name)
    assert ("loyalty_event_backlog", frozenset({("consumer", name)})) not in scrape(metered.server)


def test_webhook_attempts_are_counted(metered: Backend) -> None:
    """A receiver that answers 500 twice, then 200: every scrape counts two failed attempts
    and one delivery, whichever worker ran the dispatcher."""
    failures, deliveries = (
        "loyalty_webhook_delivery_failures_total",
        "loyalty_webhook_deliveries_total",
    )
    before = scrape(metered.server)

    def counted(samples: Samples) -> tuple[float, float]:
        return (
            value(samples, failures) - value(before, failures),
            value(samples, deliveries) - value(before, deliveries),
        )

    with receiving([500, 500], 200) as receiver, metered.client() as client:
        response = client.post(
            "/admin/webhooks", json={"url": receiver.url, "event_types": ["customer.created"]}
        )
        assert response.status_code == 200, response.text
        webhook_id = response.json()["webhook"]["id"]
        try:
            new_customer(client)
            eventually(
                lambda: counted(scrape(metered.server)) == (2, 1) or None,
                60,
                "two failed attempts and a delivery counted",
            )
        finally:
            assert client.post(f"/admin/webhooks/{webhook_id}/disable").status_code == 200
    assert len(receiver.received()) == 3
    for _ in range(SCRAPES):
        assert counted(scrape(metered.server)) == (2, 1)


def test_a_killed_worker_leaves_its_counts_and_not_its_live_gauges(metered: Backend) -> None:
    """A worker killed with SIGKILL and replaced by uvicorn: what it counted stays in the
    totals, and its live gauges leave the sums (two workers, not three)."""
    before = scrape(metered.server)
    old = worker_pids(metered.server)
    assert len(old) == WORKERS
    victim = min(old)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> Samples | None:
        pids = worker_pids(metered.server)
        if victim in pids or len(pids) != WORKERS:
            return None
        try:
            samples = scrape(metered.server)
        except httpx.TransportError:
            return None
        return samples if value(samples, "loyalty_workers") == WORKERS else None

    after = eventually(replaced, 60, "the killed worker replaced")
    for _ in range(SCRAPES):
        after = scrape(metered.server)
        assert value(after, "loyalty_workers") == WORKERS
        assert adjust_requests(after) == adjust_requests(before)


def test_the_token_is_required_when_set(
    databases: DatabaseFactory, tmp_path: Path, launched: list[Server]
) -> None:
    """With LOYALTY_METRICS_TOKEN set: no Authorization, a wrong token, or the token in
    another scheme get a 401 in the error envelope; the Bearer token gets the metrics."""
    server = Server.launch(databases.new_url(), tmp_path, LOYALTY_METRICS_TOKEN=METRICS_TOKEN)
    launched.append(server)
    url = f"{server.base_url}/metrics"
    refused = [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": "Bearer"},
    ]
    for headers in refused:
        assert_error(httpx.get(url, headers=headers, timeout=30), 401, "unauthorized")
    samples = scrape(server, METRICS_TOKEN)
    assert value(samples, "loyalty_workers") == 1
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200


def test_without_a_token_metrics_are_open(metered: Backend) -> None:
    """LOYALTY_METRICS_TOKEN unset: /metrics answers without credentials, like /health."""
    response = httpx.get(f"{metered.server.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert "loyalty_http_requests_total" in response.text


def test_a_restarted_server_counts_from_zero(
    databases: DatabaseFactory, tmp_path: Path, launched: list[Server]
) -> None:
    """Each run has a fresh metrics directory: after a restart on the same database, the
    adjusts of the last run are in the ledger but not in the metrics."""
    url = databases.new_url()
    first = Server.launch(url, tmp_path, workers=WORKERS)
    launched.append(first)
    token = login(first, ADMIN_EMAIL, ADMIN_PASSWORD)
    with httpx.Client(
        base_url=first.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        customer_id = new_customer(client)["id"]
        for _ in range(3):
            response = client.post(ADJUST_PATH, json={"customer_id": customer_id, "delta": 5})
            assert response.status_code == 200, response.text
    samples = scrape(first)
    assert adjust_requests(samples) == 3
    assert value(samples, "loyalty_adjustments_committed_total", type="adjustment") == 3
    first.stop()

    second = Server.launch(url, tmp_path, workers=WORKERS)
    launched.append(second)
    all_workers_up(second)
    for _ in range(5):
        samples = scrape(second)
        assert adjust_requests(samples) == 0
        assert value(samples, "loyalty_adjustments_committed_total", type="adjustment") == 0
        assert value(samples, "loyalty_ledger_batch_commands_count") == 0
        assert value(samples, "loyalty_workers") == WORKERS


def test_in_one_process_without_the_directory_the_ordinary_registry_counts() -> None:
    """Without PROMETHEUS_MULTIPROC_DIR (an app built inside this test process) the metrics
    live in prometheus_client's ordinary registry, and what the webhook dispatcher calls
    counts there."""
    from prometheus_client import REGISTRY

    from loyalty import metrics
    from loyalty.metrics import instruments

    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert not instruments.MULTIPROCESS
    names = ("loyalty_webhook_delivery_failures_total", "loyalty_webhook_deliveries_total")
    before = [REGISTRY.get_sample_value(name) or 0.0 for name in names]
    metrics.webhook_attempts(delivered=1, failed=2)
    metrics.webhook_attempts(delivered=0, failed=0)
    after = [REGISTRY.get_sample_value(name) or 0.0 for name in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1]


FORKING = """
import os
from loyalty.metrics.instruments import observe_request
observe_request("GET", "/health", 200, 0.001)
child = os.fork()
if child == 0:
    observe_request("GET", "/health", 200, 0.001)
    os._exit(0)
os.waitpid(child, 0)
print(os.getpid(), child)
"""


def test_a_forked_process_writes_files_of_its_own(tmp_path: Path) -> None:
    """The pid prometheus_client files by is kept rather than asked on every write; a fork
    still gets its own files (a child writing into its parent's would corrupt the counts)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", FORKING], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    parent, child = result.stdout.split()
    files = {path.name for path in tmp_path.iterdir()}
    assert {name.rsplit("_", 1)[1].removesuffix(".db") for name in files} == {parent, child}
    assert {f"counter_{parent}.db", f"counter_{child}.db"} <= files


def test_each_run_has_a_private_directory_removed_at_the_end(
    databases: DatabaseFactory, tmp_path: Path, launched: list[Server]
) -> None:
    """A run's metrics directory is new, private (0700) and removed when the server stops;
    one that a killed server left behind (its maker no longer running) is removed at the
    next start."""
    if databases.kind != "sqlite":
        pytest.skip("the directory does not depend on the database")
    temp = tmp_path / "tmp"
    temp.mkdir()
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    abandoned = temp / f"loyalty-metrics-{finished.stdout.strip()}-abcd1234"
    abandoned.mkdir()
    (abandoned / "counter_1.db").write_bytes(b"")
    server = Server.launch(databases.new_url(), tmp_path, TMPDIR=str(temp))
    launched.append(server)
    assert not abandoned.exists()
    [directory] = list(temp.glob("loyalty-metrics-*"))
    assert directory.name.startswith(f"loyalty-metrics-{server.process.pid}-")
    assert directory.stat().st_mode & 0o777 == 0o700
    # The first request's figures are written just after its answer.
    eventually(lambda: any(directory.glob("counter_*.db")) or None, 10, "a counter file")
    server.stop()
    assert server.process.returncode == 0, server.log()
    assert not directory.exists()
