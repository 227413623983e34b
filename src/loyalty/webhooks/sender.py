"""A small HTTP/1.1 client for webhook deliveries: POST with a body, keep-alive per origin,
the status back, the answer's body read (bounded) and dropped.

httpx costs about a millisecond and a half of CPU per request in this process, which at the
ledger's rate of events would take the CPU the adjustments need. Deliveries need little of
HTTP: one method, a body with a length, no redirects, no cookies, only the status of the
answer. This does that on an asyncio protocol, one request at a time per connection: the
answer is parsed as it arrives, and each attempt's time limit is one timer, not a task.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import unquote

import httpx

RESPONSE_READ_MAX = 64 * 1024  # of a receiver's answer only the status matters
HEAD_MAX = 64 * 1024
IDLE_PER_ORIGIN_MAX = 32


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
    def __init__(self, user_agent: str, timeout_s: float) -> None:
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        self._tls = ssl.create_default_context()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        """POSTs `body`; the answer's status. Raises SendError or OSError without one, and
        TimeoutError when none came within the sender's time limit."""
        where = target(url)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"".join(
            (
                where.head,
                f"user-agent: {self._user_agent}\r\ncontent-length: {len(body)}\r\n".encode(),
                extra.encode("latin-1"),
                b"\r\n",
                body,
            )
        )
        idle = self._idle.get(where.origin)
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(where, connection, request, self._timeout_s)
            except SendError:
                # A kept connection the receiver closed meanwhile: try the next, then a new one.
                continue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        async with asyncio.timeout_at(deadline):
            _, protocol = await loop.create_connection(
                lambda: _Connection(loop),
                where.host,
                where.port,
                ssl=self._tls if where.tls else None,
                server_hostname=where.host if where.tls else None,
            )
        return await self._exchange(where, protocol, request, deadline - loop.time())

    async def _exchange(
        self, where: Target, connection: _Connection, request: bytes, timeout_s: float
    ) -> int:
        status = await connection.exchange(request, timeout_s)
        if connection.reusable:
            kept = self._idle.setdefault(where.origin, [])
            if len(kept) < IDLE_PER_ORIGIN_MAX:
                kept.append(connection)
                return status
        connection.close()
        return status

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # lets the transports' closing callbacks run


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time: the request written, the answer parsed as its
    bytes arrive, the waiter told the status once the answer's end is known."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._answer: _Answer | None = None
        self.closed = False
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is a Transport without deriving from asyncio's class.
        self._transport = cast(asyncio.Transport, transport)

    def exchange(self, request: bytes, timeout_s: float) -> asyncio.Future[int]:
        assert self._transport is not None and self._waiter is None
        self._waiter = self._loop.create_future()
        self._buffer.clear()
        self._answer = None
        self.reusable = False
        self._timer = self._loop.call_later(timeout_s, self._expire)
        self._transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection is not worth keeping
            return
        self._buffer += data
        try:
            self._read()
        except SendError as error:
            self._finish(error)

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost tells the waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(SendError("the connection closed before an answer"))

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _expire(self) -> None:
        self._timer = None
        self._finish(TimeoutError("no answer in time"))

    def _read(self) -> None:
        answer = self._answer
        if answer is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_MAX:
                    raise SendError("the answer's head is too large")
                return
            answer = self._answer = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        if answer.chunked:
            if _skip_chunks(answer, self._buffer) is None:
                return
        elif answer.length is not None and answer.length <= RESPONSE_READ_MAX:
            if len(self._buffer) < answer.length:
                return
            del self._buffer[: answer.length]
        else:
            answer.keep = False  # unbounded, or delimited by the close: not worth waiting for
        self._finish(answer.status, keep=answer.keep and not self._buffer)

    def _finish(self, outcome: int | Exception, keep: bool = False) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reusable = keep and not self.closed
        if not self.reusable:
            self.close()
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


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
