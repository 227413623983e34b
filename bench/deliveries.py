"""S8's event delivery: the receiving processes, and what they got of the events of the load.

`ReceiverProcess` starts receiver.py (a process of its own) and talks to it over its port.
`PhaseEvents` is what S8's phase adds around the server: two receivers, one the webhook
endpoint and one the NATS subscriber, the server's NATS settings (a stream and subjects of
the run's own), and after S8's wrk `after_load`, which waits until the outbox stops growing
(the requests in flight when wrk stopped), reads from the database the ids of every event
committed during the load (the positions after the one read just before wrk started), hands
them to the receivers, waits (bounded) until both channels have each of them, and returns
the lags (first arrival minus `created_at`) per channel, the time each took to drain after
wrk stopped, the signatures of a sample of webhook deliveries checked with
`standardwebhooks`, and whether JetStream holds each adjustment's event exactly once.
"""

from __future__ import annotations

import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
from backends import Backend
from common import percentile
from standardwebhooks import Webhook, WebhookVerificationError
from tools import BENCH_DIR, say

CHANNELS = ("webhook", "nats")
READY_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 20.0
SETTLE_S = 0.5  # the outbox is taken as complete once its last position holds this long
SETTLE_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 60.0  # after wrk stops, how long the receivers may take to get every event
POLL_S = 0.1
CONTROL_TIMEOUT_S = 60.0  # /results sorts and sends a list of lags per event
# JetStream must hold exactly one message per event of this type: every adjustment's event,
# all made after the publisher started (the warm-up's and the load's).
COUNTED_TYPE = "points.adjusted"


class ReceiverProcess:
    """receiver.py, in a process group of its own; always stopped (stop_receivers)."""

    running: list[ReceiverProcess] = []  # noqa: RUF012  (stopped on any exit)

    def __init__(self, workdir: Path, label: str, args: list[str]):
        self.log_path = workdir / f"receiver-{label}.log"
        self.args = args  # receiver.py's options: none for the webhook, NATS's for NATS
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.shutdown: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hook_url(self) -> str:
        return f"{self.base_url}/hook"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "receiver.py"), *self.args],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        ReceiverProcess.running.append(self)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], READY_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("RECEIVER_READY "):
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the receiver ({self.log_path.name}) did not start:\n{tail}")
        self.port = int(line.split()[1])

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method, f"{self.base_url}{path}", json=body, timeout=CONTROL_TIMEOUT_S
        )
        response.raise_for_status()
        return response.json() if response.content else None

    def stop(self) -> None:
        """Asks it to exit, deleting its NATS stream if it has one (the server has stopped
        by then)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None and self.port:
            with suppress(httpx.HTTPError, ValueError):
                self.shutdown = self.control("POST", "/shutdown")
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        if self in ReceiverProcess.running:
            ReceiverProcess.running.remove(self)


class PhaseEvents:
    """S8's phase around its server: the receivers, the NATS settings, the load's events."""

    def __init__(self, backend: Backend, url: str, workdir: Path, label: str, nats_url: str):
        self.backend = backend
        self.url = url
        unique = secrets.token_hex(4)
        # A stream and subjects of this run alone (deleted after): no other run or test
        # publishes there, and ours goes nowhere else.
        stream = f"BENCH_{label.replace('-', '_')}_{unique}"
        self.prefix = prefix = f"bench_{unique}"
        # Two processes: a NATS subscriber sharing its event loop with the webhook's HTTP
        # reads behind it, and the NATS server then holds the publisher back (measured: the
        # service's windows of 500 events took 6-8 s to publish instead of 0.1-0.3 s).
        nats_args = ["--nats-url", nats_url, "--subject", f"{prefix}.>", "--stream", stream]
        self.receivers = {
            "webhook": ReceiverProcess(workdir, f"{label}-webhook", []),
            "nats": ReceiverProcess(workdir, f"{label}-nats", nats_args),
        }
        self.settings = {
            "LOYALTY_NATS_URL": nats_url,
            "LOYALTY_NATS_STREAM": stream,
            "LOYALTY_NATS_SUBJECT_PREFIX": prefix,
        }

    @property
    def hook_url(self) -> str:
        return self.receivers["webhook"].hook_url

    def start(self) -> None:
        for receiver in self.receivers.values():
            receiver.start()

    def position(self) -> int:
        return self.backend.last_event_position(self.url)

    def after_load(self, before: int, secret: str) -> tuple[dict[str, Any], list[str]]:
        """What the receivers got of the events after position `before` (read just before
        wrk started; call this as wrk returns); and the failed checks, if any."""
        wrk_ended = time.monotonic()
        through = settle(self.position)
        event_ids = self.backend.event_ids(self.url, before, through)
        record = measure_delivery(self.receivers, event_ids, wrk_ended, secret)
        record["positions"] = [before, through]
        errors = []
        for channel in CHANNELS:
            if record[channel]["missing"]:
                errors.append(
                    f"{record[channel]['missing']} of {len(event_ids)} events of the load did"
                    f" not reach the {channel} receiver within {DRAIN_TIMEOUT_S:g} s of its end"
                )
        signatures = record["signatures"]
        if signatures["failures"] or not signatures["checked"]:
            errors.append(
                f"{signatures['valid']} of {signatures['checked']} sampled webhook signatures"
                f" verified: {'; '.join(signatures['failures'][:3])}"
            )
        if record["nats"]["drained_after_s"] is not None:
            held = jetstream_holds(self.receivers["nats"], f"{self.prefix}.{COUNTED_TYPE}")
            outbox = self.backend.query_ints(
                self.url, f"SELECT count(*) FROM loyalty_events WHERE type = '{COUNTED_TYPE}'"
            )[0]
            record["jetstream"] = {
                "type": COUNTED_TYPE,
                "held": held,
                "outbox": outbox,
                "ok": held == outbox,
            }
            say(f"S8: JetStream holds {held} {COUNTED_TYPE} messages for {outbox} events")
            if held != outbox:
                errors.append(
                    f"the NATS stream holds {held} {COUNTED_TYPE} messages for {outbox} such"
                    " events in the outbox"
                )
        return record, errors

    def stop(self) -> dict[str, Any]:
        """Stops the receivers (NATS's deletes the stream); returns what became of it."""
        for receiver in self.receivers.values():
            receiver.stop()
        outcome = self.receivers["nats"].shutdown
        if not outcome.get("stream_deleted"):
            say(f"warning: NATS stream not deleted: {outcome or 'no answer'}")
        return outcome


def stop_receivers() -> None:
    for receiver in list(ReceiverProcess.running):
        receiver.stop()


def settle(last_position: Callable[[], int]) -> int:
    """The outbox's last position once it stops growing (the requests still in flight when
    wrk stopped commit within milliseconds; bounded all the same)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    position = last_position()
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        now = last_position()
        if now == position:
            return now
        position = now
    return position


def measure_delivery(
    receivers: dict[str, ReceiverProcess],
    event_ids: list[str],
    wrk_ended: float,
    secret: str,
) -> dict[str, Any]:
    """What each channel's receiver got of `event_ids` (the load's events): lags, drain,
    signatures."""
    for receiver in receivers.values():
        receiver.control("POST", "/expect", {"ids": event_ids})
    drained: dict[str, float | None] = dict.fromkeys(CHANNELS)
    deadline = wrk_ended + DRAIN_TIMEOUT_S
    while True:
        for channel in CHANNELS:
            if drained[channel] is None:
                progress = receivers[channel].control("GET", "/progress")
                if progress[channel]["missing"] == 0:
                    drained[channel] = round(time.monotonic() - wrk_ended, 2)
        if all(d is not None for d in drained.values()) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    results = {channel: receivers[channel].control("GET", "/results") for channel in CHANNELS}
    record: dict[str, Any] = {
        "events": len(event_ids),
        "drain_timeout_s": DRAIN_TIMEOUT_S,
        "receiver_cpu_s": round(sum(r["cpu_s"] for r in results.values()), 2),
    }
    for channel in CHANNELS:
        got = results[channel][channel]
        lags = got.pop("lags_ms")
        record[channel] = {
            **got,
            "drained_after_s": drained[channel],
            "p50_ms": percentile(lags, 0.5) if lags else None,
            "p99_ms": percentile(lags, 0.99) if lags else None,
            "max_ms": lags[-1] if lags else None,
        }
    record["signatures"] = verify_samples(results["webhook"]["samples"], secret)
    for channel in CHANNELS:
        c = record[channel]
        drained = c["drained_after_s"]
        say(
            f"S8 {channel}: {c['arrived']:,} of {len(event_ids):,} events,"
            f" lag p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms; "
            + (f"not all within {DRAIN_TIMEOUT_S:g} s" if drained is None else f"all {drained} s")
            + f" after wrk; {c['repeats']} repeats"
        )
    return record


def jetstream_holds(receiver: ReceiverProcess, subject: str) -> int | None:
    """How many messages of `subject` the run's stream holds (None: it could not say)."""
    answer = receiver.control("GET", "/stream")
    if answer["subjects"] is None:
        say(f"S8: could not read the NATS stream: {answer['error']}")
        return None
    return int(answer["subjects"].get(subject, 0))


def verify_samples(samples: list[dict[str, Any]], secret: str) -> dict[str, Any]:
    """Each sampled delivery's Standard Webhooks signature, checked by the reference package."""
    webhook = Webhook(secret)
    failures = []
    for sample in samples:
        try:
            webhook.verify(sample["body"], sample["headers"])
        except WebhookVerificationError as error:
            failures.append(f"{sample['headers'].get('webhook-id')}: {error}")
    return {"checked": len(samples), "valid": len(samples) - len(failures), "failures": failures}
