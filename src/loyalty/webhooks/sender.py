"""A small HTTP/1.1 client for webhook deliveries: POST with a body, keep-alive per origin,
the status back, the answer's body read (bounded) and dropped.

httpx costs about a millisecond and a half of CPU per request in this process, which at the
ledger's rate of events would take the CPU the adjustments need. Deliveries need little of
HTTP: one method, a body with a length, no redirects, no cookies, only the status of the
answer. This does that on asyncio streams for a tenth of the cost.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
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


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Sender:
    def __init__(self, user_agent: str) -> None:
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._user_agent = user_agent
        self._tls = ssl.create_default_context()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        """POSTs `body`; the answer's status. Raises SendError (or OSError) without one. The
        caller bounds the time."""
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
            try:
                return await self._exchange(where, connection, request)
            except (SendError, OSError, asyncio.IncompleteReadError):
                # A kept connection the receiver closed meanwhile: try the next, then a new one.
                continue
        connection = await asyncio.open_connection(
            where.host,
            where.port,
            ssl=self._tls if where.tls else None,
            server_hostname=where.host if where.tls else None,
            limit=HEAD_MAX,
        )
        try:
            return await self._exchange(where, connection, request)
        except asyncio.IncompleteReadError as error:
            raise SendError("the connection closed before an answer") from error

    async def _exchange(self, where: Target, connection: _Connection, request: bytes) -> int:
        reader, writer = connection
        keep = False
        try:
            writer.write(request)
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError as error:
                raise SendError("the answer's head is too large") from error
            status, keep, length, chunked = _parse_head(head)
            if chunked:
                keep = keep and await _skip_chunked(reader)
            elif length is not None:
                if length > RESPONSE_READ_MAX:
                    keep = False
                else:
                    await reader.readexactly(length)
            else:
                keep = False  # delimited by the connection's close: not worth waiting for
            return status
        finally:
            if keep:
                kept = self._idle.setdefault(where.origin, [])
                if len(kept) < IDLE_PER_ORIGIN_MAX:
                    kept.append(connection)
                else:
                    writer.close()
            else:
                writer.close()

    async def close(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
                with suppress(Exception):
                    await writer.wait_closed()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, bool, int | None, bool]:
    """(status, whether the connection may be kept, content-length, chunked)."""
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
    return status, keep, length, chunked


async def _skip_chunked(reader: asyncio.StreamReader) -> bool:
    """Reads a chunked body to its end; False (do not keep the connection) past the bound."""
    read = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as error:
            raise SendError("the answer's chunked body is malformed") from error
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return True
        read += size
        if read > RESPONSE_READ_MAX:
            return False
        await reader.readexactly(size + 2)
