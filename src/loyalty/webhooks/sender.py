"""A small HTTP/1.1 client for webhook deliveries: POST with a body, keep-alive per origin,
the status back, the answer's body read (bounded) and dropped.

httpx costs about a millisecond and a half of CPU per request in this process, which at the
ledger's rate of events would take the CPU the adjustments need. Deliveries need little of
HTTP: one method, a body with a length, no redirects, no cookies, only the status of the
answer. This does that on an asyncio protocol: answers are parsed as they arrive, requests
are pipelined on a connection that has stayed open, and one timer per connection bounds
the wait, not a task per request.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import unquote

import httpx

RESPONSE_READ_MAX = 64 * 1024  # of a receiver's answer only the status matters
HEAD_MAX = 64 * 1024
IDLE_PER_ORIGIN_MAX = 32
PIPELINE_MAX = 16  # requests written at once on a connection that has stayed open


class SendError(Exception):
    """No answer: the connection failed or the answer was not HTTP/1.x."""


@dataclass(frozen=True, slots=True)
class Target:
    tls: bool
    host: str  # for connecting (IDNA-encoded, IPv6 without brackets)
    port: int
    head: bytes  # the request line and the headers every request to it carries

    @property
    def origin(self) -> tuple[bool, str, int]:
        return (self.tls, self.host, self.port)


@lru_cache(maxsize=256)
def target(url: str) -> Target:
    parsed = httpx.URL(url)  # the URL was validated by the same parser on creation
    tls = parsed.scheme == "https"
    port = parsed.port or (443 if tls else 80)
    host = parsed.raw_host.decode("ascii")
    authority = f"[{host}]" if ":" in host else host
    if parsed.port is not None:
        authority += f":{parsed.port}"
    lines = [f"POST {parsed.raw_path.decode('ascii')} HTTP/1.1", f"host: {authority}"]
    if parsed.userinfo:
        # user:password in the URL: sent as Basic credentials, as httpx would.
        userinfo = unquote(parsed.userinfo.decode("ascii"))
        token = base64.b64encode(userinfo.encode()).decode()
        lines.append(f"authorization: Basic {token}")
    return Target(tls, host, port, ("\r\n".join(lines) + "\r\n").encode("ascii"))


class Sender:
    def __init__(self, user_agent: str, timeout_s: float, pipeline_max: int = PIPELINE_MAX):
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        self._pipeline_max = pipeline_max
        # Origins where a pipelined request went unanswered in time: one at a time there.
        self._one_at_a_time: set[tuple[bool, str, int]] = set()
        self._tls = ssl.create_default_context()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        """POSTs `body`; the answer's status. Raises SendError or OSError without one, and
        TimeoutError when none came within the sender's time limit."""
        (outcome,) = await self.post_many(url, [(headers, body)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def post_many(
        self, url: str, messages: Sequence[tuple[dict[str, str], bytes]]
    ) -> list[int | Exception]:
        """POSTs each (headers, body) to `url`: for each, the answer's status, or the error
        that left it without one (SendError, OSError, TimeoutError).

        A new connection carries one request; once it has answered and stayed open, the
        next requests are pipelined on it, up to `pipeline_max` written at once (RFC 9112
        9.3.2), which saves a write and a read of each side per request. Requests left
        unanswered when a kept connection closes are sent again on another (a receiver
        drops repeats by `webhook-id`); an unanswered request on a new connection is a
        failed attempt."""
        where = target(url)
        requests = [self._request(where, headers, body) for headers, body in messages]
        outcomes: list[int | Exception | None] = [None] * len(requests)
        waiting = list(range(len(requests)))
        while waiting:
            try:
                connection, fresh = await self._connection(where)
            except (OSError, TimeoutError) as error:
                for index in waiting:
                    outcomes[index] = error
                break
            pipelined = not fresh and where.origin not in self._one_at_a_time
            batch = waiting[: self._pipeline_max if pipelined else 1]
            answers = connection.send([requests[index] for index in batch], self._timeout_s)
            for index, answer in zip(batch, answers, strict=True):
                try:
                    outcomes[index] = await answer
                except _Unanswered as error:
                    if fresh:
                        outcomes[index] = SendError(str(error))
                except (SendError, TimeoutError) as error:
                    outcomes[index] = error
            if connection.stalled:
                self._one_at_a_time.add(where.origin)
            self._release(where, connection)
            waiting = [index for index in waiting if outcomes[index] is None]
        return cast(list[int | Exception], outcomes)  # each has its outcome by now

    def _request(self, where: Target, headers: dict[str, str], body: bytes) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return b"".join(
            (
                where.head,
                f"user-agent: {self._user_agent}\r\ncontent-length: {len(body)}\r\n".encode(),
                extra.encode("latin-1"),
                b"\r\n",
                body,
            )
        )

    async def _connection(self, where: Target) -> tuple[_Connection, bool]:
        """A kept connection to the target's origin, or else a new one (True)."""
        idle = self._idle.get(where.origin)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection, False
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop),
                where.host,
                where.port,
                ssl=self._tls if where.tls else None,
                server_hostname=where.host if where.tls else None,
            )
        return connection, True

    def _release(self, where: Target, connection: _Connection) -> None:
        if connection.reusable:
            kept = self._idle.setdefault(where.origin, [])
            if len(kept) < IDLE_PER_ORIGIN_MAX:
                kept.append(connection)
                return
        connection.close()

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # lets the transports' closing callbacks run


class _Unanswered(SendError):
    """The connection closed before this request's answer (those before it were answered)."""


class _Connection(asyncio.Protocol):
    """One connection: requests written in order, answers parsed as their bytes arrive and
    handed to the requests' waiters in the same order. One timer per connection bounds the
    wait for the oldest unanswered request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[asyncio.Future[int]] = deque()
        self._timeout_s = 0.0
        self._deadline = 0.0  # for the oldest unanswered request
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._answer: _Answer | None = None
        self.closed = False
        self.kept_alive = True  # the last answer let the connection stay open
        self.stalled = False  # timed out with more requests pipelined behind

    @property
    def reusable(self) -> bool:
        return self.kept_alive and not self.closed and not self._waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is a Transport without deriving from asyncio's class.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, requests: Sequence[bytes], timeout_s: float) -> list[asyncio.Future[int]]:
        assert self._transport is not None
        answers = [self._loop.create_future() for _ in requests]
        if not self._waiting:
            self._timeout_s = timeout_s
            self._deadline = self._loop.time() + timeout_s
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._expire)
        self._waiting.extend(answers)
        self._transport.write(requests[0] if len(requests) == 1 else b"".join(requests))
        return answers

    def data_received(self, data: bytes) -> None:
        if not self._waiting:
            self.close()  # bytes nobody asked for: the connection is not worth keeping
            return
        self._buffer += data
        try:
            while self._waiting and self._read_answer():
                pass
        except SendError as error:
            self._waiting.popleft().set_exception(error)
            self.close()
            return
        if self._buffer and not self._waiting:
            self.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost tells the waiters

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; the requests still waiting are left unanswered."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(_Unanswered("the connection closed before an answer"))
        if self._transport is not None:
            self._transport.close()

    def _expire(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._expire)
            return
        self.stalled = len(self._waiting) > 1
        oldest = self._waiting.popleft()
        if not oldest.done():
            oldest.set_exception(TimeoutError("no answer in time"))
        self.close()

    def _read_answer(self) -> bool:
        """Takes one whole answer off the buffer and tells its waiter; False until one has
        arrived whole."""
        answer = self._answer
        if answer is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_MAX:
                    raise SendError("the answer's head is too large")
                return False
            answer = self._answer = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        if answer.chunked:
            if _skip_chunks(answer, self._buffer) is None:
                return False
        elif answer.length is not None and answer.length <= RESPONSE_READ_MAX:
            if len(self._buffer) < answer.length:
                return False
            del self._buffer[: answer.length]
        else:
            answer.keep = False  # unbounded, or delimited by the close: not worth waiting for
        self._answer = None
        waiter = self._waiting.popleft()
        if not waiter.done():
            waiter.set_result(answer.status)
        self._deadline = self._loop.time() + self._timeout_s
        if not answer.keep:
            self.kept_alive = False
            self.close()
            return False
        return True


@dataclass(slots=True)
class _Answer:
    status: int
    keep: bool  # whether the connection may be kept
    length: int | None
    chunked: bool
    chunk_left: int = -1  # chunked: bytes left of the current chunk and its CRLF (-1: a size)
    body_read: int = 0
    in_trailers: bool = False


def _parse_head(head: bytes) -> _Answer:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise SendError("the answer is not HTTP/1.x")
    status = int(parts[1])
    keep = parts[0] == "HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length" and value.isdigit():
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            keep = "close" not in value if keep else "keep-alive" in value
    if status < 200:
        keep = False  # 1xx before the real answer: not worth handling, and rare for a POST
    elif status in (204, 304):
        length, chunked = 0, False  # never a body, whatever the headers say (RFC 9112 6.3)
    return _Answer(status, keep, length, chunked)


def _skip_chunks(answer: _Answer, buffer: bytearray) -> bool | None:
    """Consumes what `buffer` holds of a chunked body: None while its end has not arrived;
    True at its end. Past RESPONSE_READ_MAX, gives up on the connection (False)."""
    while True:
        if answer.chunk_left > 0:
            taken = min(answer.chunk_left, len(buffer))
            del buffer[:taken]
            answer.chunk_left -= taken
            if answer.chunk_left:
                return None
            answer.chunk_left = -1
            continue
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > HEAD_MAX:
                raise SendError("the answer's chunked body is malformed")
            return None
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        if answer.in_trailers:
            if not line:
                return True  # the empty line after the trailers: the body's end
            continue
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as error:
            raise SendError("the answer's chunked body is malformed") from error
        if size == 0:
            answer.in_trailers = True
            continue
        answer.body_read += size
        if answer.body_read > RESPONSE_READ_MAX:
            answer.keep = False
            return False
        answer.chunk_left = size + 2
