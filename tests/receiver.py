"""A webhook receiver inside the test: an HTTP server on a free loopback port, in a thread,
that records every request, checks its signature with the `standardwebhooks` package, and
answers with the statuses it is told to."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it."""

    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> Any:
        return json.loads(self.body)

    def verified(self, secret: str) -> Any:
        """The event, if the signature is valid for `secret` (else WebhookVerificationError)."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    port: int
    requests: list[Received] = field(default_factory=list)
    # Statuses to answer with, one per request, in order; then `default_status`.
    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    # Requests cut short (the sender died mid-body): a real receiver could not read them.
    incomplete: list[Received] = field(default_factory=list)

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def of_event(self, event_id: str) -> list[Received]:
        return [r for r in self.received() if r.headers.get("webhook-id") == event_id]

    def event_ids(self) -> set[str]:
        return {r.headers.get("webhook-id", "") for r in self.received()}

    def answer(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else self.default_status


def bad_signatures(requests: list[Received], secret: str) -> list[str]:
    """The requests whose signature `standardwebhooks` refuses, or whose webhook-id is not
    the id of the event in their body."""
    bad = []
    for request in requests:
        try:
            event = request.verified(secret)
        except WebhookVerificationError as error:
            bad.append(f"{request.headers.get('webhook-id')}: {error}")
            continue
        if event["id"] != request.headers["webhook-id"]:
            bad.append(f"{request.headers['webhook-id']}: webhook-id is not the event's id")
    return bad


@contextmanager
def receiving(
    statuses: list[int] | None = None, default_status: int = 200, delay_s: float = 0.0
) -> Iterator[Receiver]:
    """A receiver running for the block; it answers each request `delay_s` after reading it."""
    receiver_box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the dispatcher's client uses it

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            receiver = receiver_box[0]
            headers = {name.lower(): value for name, value in self.headers.items()}
            if len(body) < length:
                with receiver.lock:
                    receiver.incomplete.append(
                        Received(time.monotonic(), self.path, headers, body, 0)
                    )
                self.close_connection = True
                return
            status = receiver.answer()
            with receiver.lock:
                receiver.requests.append(
                    Received(time.monotonic(), self.path, headers, body, status)
                )
            if delay_s:
                time.sleep(delay_s)  # this request's own thread
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a sender killed mid-request resets its connection: expected, not news

    server = Server(("127.0.0.1", 0), Handler)
    receiver = Receiver(server.server_address[1], statuses=list(statuses or []))
    receiver.default_status = default_status
    receiver_box.append(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
