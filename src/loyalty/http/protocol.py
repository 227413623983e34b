"""The server's connection limits, which uvicorn's httptools protocol lacks: a deadline for
reading each request, and a bound on the size of its head (request line and headers).

Without them a client that never finishes its headers or its body holds a connection (and a
worker's memory) forever, and a 32 MiB header is read whole before anyone looks at it.
`loyalty serve` runs uvicorn with this protocol.
"""

from __future__ import annotations

import asyncio
from functools import cache
from http import HTTPStatus
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loyalty.config import Settings
from loyalty.errors import LoyaltyError, RequestHeadTooLarge, RequestTimeout
from loyalty.http.responses import error_body

HEAD_MAX_BYTES = 16 * 1024
_HEAD_END = b"\r\n\r\n"
_encoder = msgspec.json.Encoder()


@cache
def _read_timeout_s() -> float:
    return float(Settings.from_env().http_read_timeout_seconds)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a read deadline per request and a bounded head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_open = True  # reading a request's head (its request line and headers)
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, for a head end split across reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing at all is closed at the deadline too.
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_open and not self._count_head(data):
            limit = f"Request headers must be at most {HEAD_MAX_BYTES} bytes"
            self._refuse(RequestHeadTooLarge(limit))
            return
        super().data_received(data)

    # The parser's callbacks say where a request's head ends and the next one's may begin: a
    # read can hold the end of one request's body and the start of the next request's head,
    # whose bytes in that read go uncounted (the bound is then the limit plus one read).
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        if self._deadline is None:
            self._start_deadline()

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_deadline()
        self._head_open, self._head_bytes, self._head_tail = True, 0, b""

    def _count_head(self, data: bytes) -> bool:
        """Counts the bytes of `data` that belong to the head being read (those up to its
        end, if it ends here); False once they pass HEAD_MAX_BYTES."""
        joined = self._head_tail + data
        end = joined.find(_HEAD_END)
        if end < 0:
            self._head_bytes += len(data)
        else:
            self._head_bytes += max(0, end + len(_HEAD_END) - len(self._head_tail))
        self._head_tail = joined[-(len(_HEAD_END) - 1) :]
        return self._head_bytes <= HEAD_MAX_BYTES

    def _start_deadline(self) -> None:
        self._deadline = self.loop.call_later(_read_timeout_s(), self._on_deadline)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_open:
            message = f"The request was not received within {_read_timeout_s():g} seconds"
            self._refuse(RequestTimeout(message))
        else:
            # The route is running and waits for the rest of the body: it sees a disconnect.
            self.transport.close()

    def _refuse(self, error: LoyaltyError) -> None:
        """Answers in the service's error shape and closes the connection."""
        body = _encoder.encode(error_body(error))
        head = (
            f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()
