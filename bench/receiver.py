"""S8's receiving end, run as a process of its own: a webhook endpoint or a NATS subscriber.

    python receiver.py                                             # the webhook endpoint
    python receiver.py --nats-url URL --subject PREFIX.> --stream NAME   # the NATS subscriber

It listens on a free loopback port and prints `RECEIVER_READY <port>` once it listens (and
is subscribed). Every `POST /hook` is answered 204 at once; its arrival time, head and body
are kept as they came, and read only when the harness asks (so the hot path is the HTTP
parse, a list append and the answer). Each NATS message on the subject is kept the same way.
The harness runs one process per channel (deliveries.py says why), each apart from the
harness's GIL; a bare asyncio protocol on uvloop, so that it costs the 2 shared cores as
little as it can.

The harness drives it over the same port:
- `POST /expect` `{"ids": [...]}`: the events of the measured window (from the database);
- `GET /progress`: how many of them each channel has received so far;
- `GET /results`: per channel, each expected event's lag (its first arrival minus its
  `created_at`, in ms), the missing, the deliveries and repeats; and a random sample of the
  expected webhook deliveries, headers and body, whose signatures the harness verifies;
- `GET /stream`: the number of messages the JetStream stream (--stream) holds per subject;
- `POST /shutdown`: deletes the NATS stream named by --stream (the server that published
  to it has stopped by then), answers, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

import nats
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

SAMPLE_SIZE = 100  # webhook deliveries whose signatures the harness verifies
HEAD_MAX = 64 * 1024
# Messages the NATS client may hold before it drops them as a slow consumer: more than a run
# sends, so that a busy receiver delays them (and shows it in the lag) instead of losing them.
NATS_PENDING_MSGS = 10_000_000
NATS_PENDING_BYTES = 4 * 1024**3
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
LENGTH_REQUIRED = b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.I)


@lru_cache(maxsize=4096)
def _second_ms(second: str) -> int:
    return int(datetime.fromisoformat(second + "+00:00").timestamp()) * 1000


def created_ms(text: str) -> int:
    """Milliseconds of an event's `created_at`: `2026-11-30T05:21:35.123Z` (its second cached)."""
    if len(text) == 24 and text[19] == "." and text[23] == "Z":
        return _second_ms(text[:19]) + int(text[20:23])
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class Channel:
    """What one channel (the webhook, NATS) received: kept raw, parsed when asked."""

    def __init__(self) -> None:
        self.raw: list[tuple[float, bytes, bytes]] = []  # arrival (s), head, body
        self.parsed = 0
        # event id → (first arrival in s, created_at in ms, index in raw)
        self.first: dict[str, tuple[float, int, int]] = {}
        self.unreadable = 0

    def catch_up(self) -> None:
        for index in range(self.parsed, len(self.raw)):
            arrived, _, body = self.raw[index]
            try:
                event = json.loads(body)
                event_id, created = str(event["id"]), created_ms(str(event["created_at"]))
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1
                continue
            if event_id not in self.first:
                self.first[event_id] = (arrived, created, index)
        self.parsed = len(self.raw)

    def summary(self, expected: list[str], lags: bool) -> dict[str, Any]:
        self.catch_up()
        arrived = [self.first[i] for i in expected if i in self.first]
        summary: dict[str, Any] = {
            "deliveries": len(self.raw),
            "distinct": len(self.first),
            "repeats": len(self.raw) - self.unreadable - len(self.first),
            "unreadable": self.unreadable,
            "arrived": len(arrived),
            "missing": len(expected) - len(arrived),
        }
        if lags:
            summary["lags_ms"] = sorted(round(at * 1000 - ms) for at, ms, _ in arrived)
        return summary


class Receiver:
    """The state the HTTP connections and the NATS subscription share."""

    def __init__(
        self, nats_client: NatsClient | None, subject: str | None, stream: str | None
    ) -> None:
        self.webhook = Channel()
        self.nats = Channel()
        self.expected: list[str] = []
        self.nats_client = nats_client
        self.subject = subject
        self.stream = stream
        self.stopping = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.nats.raw.append((time.time(), b"", msg.data))

    def control(self, method: bytes, target: bytes, body: bytes) -> bytes:
        """Answers a control request (but /stream and /shutdown, which wait on NATS)."""
        if method == b"POST" and target == b"/expect":
            self.expected = [str(i) for i in json.loads(body)["ids"]]
            return NO_CONTENT
        if method == b"GET" and target == b"/progress":
            return _json(
                {
                    "expected": len(self.expected),
                    "webhook": self.webhook.summary(self.expected, lags=False),
                    "nats": self.nats.summary(self.expected, lags=False),
                }
            )
        if method == b"GET" and target == b"/results":
            return _json(
                {
                    "expected": len(self.expected),
                    "webhook": self.webhook.summary(self.expected, lags=True),
                    "nats": self.nats.summary(self.expected, lags=True),
                    "samples": self.samples(),
                    # What receiving cost the machine the service shares (all of its life).
                    "cpu_s": round(time.process_time(), 2),
                }
            )
        return NOT_FOUND

    def samples(self) -> list[dict[str, Any]]:
        """A random sample of the expected events' first webhook deliveries, as received."""
        expected = [i for i in self.expected if i in self.webhook.first]
        picked = random.sample(expected, min(SAMPLE_SIZE, len(expected)))
        found = []
        for event_id in picked:
            _, head, body = self.webhook.raw[self.webhook.first[event_id][2]]
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() in SIGNATURE_HEADERS:
                    headers[name.strip().lower()] = value.strip()
            found.append({"headers": headers, "body": body.decode("utf-8", "replace")})
        return found

    async def stream_subjects(self) -> dict[str, Any]:
        """What JetStream holds: a message per subject per event it stored (once per id)."""
        if self.nats_client is None or not self.stream:
            return {"subjects": None, "error": "no stream"}
        try:
            js = self.nats_client.jetstream()
            info = await js.stream_info(self.stream, subjects_filter=self.subject or ">")
        except Exception as error:  # reported to the harness, which records it
            return {"subjects": None, "error": f"{type(error).__name__}: {error}"}
        return {"subjects": info.state.subjects or {}, "error": None}

    async def shutdown(self) -> dict[str, Any]:
        outcome: dict[str, Any] = {"stream": self.stream, "stream_deleted": False, "error": None}
        if self.nats_client is not None:
            try:
                if self.stream:
                    js = self.nats_client.jetstream()
                    outcome["stream_deleted"] = await js.delete_stream(self.stream)
            except NotFoundError:
                outcome["error"] = "no such stream"
            except Exception as error:  # reported to the harness, which records it
                outcome["error"] = f"{type(error).__name__}: {error}"
            await self.nats_client.close()
        return outcome


def _json(value: Any) -> bytes:
    body = json.dumps(value).encode()
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


class Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, bodies by Content-Length (a chunked one is answered 411)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is a Transport without deriving from asyncio's class.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buffer += data
        # The answers to the requests that arrived together leave together, as a server that
        # reads pipelined requests answers them: one write, not one per request.
        answers = bytearray()
        try:
            self.answer(transport, answers)
        finally:
            if answers:
                transport.write(answers)

    def answer(self, transport: asyncio.Transport, answers: bytearray) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > HEAD_MAX:
                    transport.close()
                return
            head = bytes(self.buffer[:end])
            length = _CONTENT_LENGTH.search(head)
            if length is None and _CHUNKED.search(head):
                answers += LENGTH_REQUIRED
                transport.write(answers)
                answers.clear()
                transport.close()
                return
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            if head.startswith(b"POST /hook "):
                # The hot path: keep it as it came, answer at once.
                self.receiver.webhook.raw.append((time.time(), head, body))
                answers += NO_CONTENT
                continue
            method, target = head.split(b" ", 2)[:2]
            if method == b"GET" and target == b"/stream":
                asyncio.get_running_loop().create_task(self.stream(transport))
                return
            if method == b"POST" and target == b"/shutdown":
                asyncio.get_running_loop().create_task(self.shut_down(transport))
                return
            answers += self.receiver.control(method, target, body)

    async def stream(self, transport: asyncio.Transport) -> None:
        transport.write(_json(await self.receiver.stream_subjects()))

    async def shut_down(self, transport: asyncio.Transport) -> None:
        transport.write(_json(await self.receiver.shutdown()))
        self.receiver.stopping.set()


async def serve(nats_url: str | None, subject: str | None, stream: str | None) -> None:
    client = None
    if nats_url is not None:
        client = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    receiver = Receiver(client, subject, stream)
    if client is not None and subject is not None:
        await client.subscribe(
            subject,
            cb=receiver.on_message,
            pending_msgs_limit=NATS_PENDING_MSGS,
            pending_bytes_limit=NATS_PENDING_BYTES,
        )
        await client.flush()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(receiver), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"RECEIVER_READY {port}", flush=True)
    await receiver.stopping.wait()
    await asyncio.sleep(0.1)  # the shutdown's answer leaves before the sockets close
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="S8's webhook receiver and NATS subscriber.")
    parser.add_argument("--nats-url", help="subscribe to --subject on this NATS server")
    parser.add_argument("--subject", help="the NATS subject to subscribe to (PREFIX.>)")
    parser.add_argument("--stream", help="the JetStream stream to delete at shutdown")
    args = parser.parse_args()
    uvloop.run(serve(args.nats_url, args.subject, args.stream))


if __name__ == "__main__":
    main()
