"""The metered path's HTTP/1.1 client to worker replicas: keep-alive connections, httptools parsing.

aiohttp spent about 0.35 ms of CPU per proxied request here, a third of the gateway's budget, and woke a
task per streamed chunk through its own buffers. This client sends one pre-built request per connection
and hands each piece of the answer to the reader as it arrives. It serves only the proxied POSTs; health
checks and token counts stay on aiohttp (`gateway.upstream`), where a millisecond does not matter.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

Origin = tuple[str, str, int]  # scheme, host, port
_HIGH_WATER = 1 << 20  # unread answer bytes at which reading from the replica pauses


class UpstreamFailure(Exception):
    """The replica or the network failed. `before_answer`: no byte of an answer arrived, so another
    replica may be tried without the client ever noticing."""

    def __init__(self, message: str, *, before_answer: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.before_answer = before_answer
        self.timeout = timeout


class Answer:
    """One upstream answer: its status once the head arrived, then its body as the replica sends it."""

    def __init__(self, conn: _Conn, slot: asyncio.Semaphore) -> None:
        self._conn: _Conn | None = conn
        self._slot: asyncio.Semaphore | None = slot
        self.status = 0
        self._head_seen = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: UpstreamFailure | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._since = 0.0  # when the current wait began
        self._timer: asyncio.TimerHandle | None = None

    # --- fed by the connection ---

    def _head(self, status: int) -> None:
        self.status = status
        self._head_seen = True
        self._wake()

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamFailure) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- used by the reader ---

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:
            raise UpstreamFailure("the answer was closed", before_answer=False)
        loop = conn.loop
        self._waiter = loop.create_future()
        self._since = loop.time()
        if self._timer is None:
            # One timer per answer, moved on only when it fires: a wait per streamed chunk stays cheap.
            self._timer = loop.call_at(self._since + conn.read_timeout_s, self._check_silence)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_silence(self) -> None:
        self._timer = None
        conn = self._conn
        if conn is None or self._waiter is None:
            return  # not waiting: the next wait starts a new timer
        due = self._since + conn.read_timeout_s
        if conn.loop.time() >= due:
            self._fail(UpstreamFailure("the replica sent nothing in time", before_answer=False, timeout=True))
        else:
            self._timer = conn.loop.call_at(due, self._check_silence)

    async def head(self) -> int:
        """Wait for the status line and headers; the status code."""
        while not self._head_seen:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self.status

    async def readany(self) -> bytes:
        """What has arrived since the last read (waiting for something); b"" once the answer is complete."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > _HIGH_WATER and self._conn is not None:
            self._conn.resume()
        self._buffered = 0
        return data

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    def close(self) -> None:
        """Done with the answer: a complete one frees its connection for reuse, any other closes it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(reuse=self._complete and self._error is None)
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, pool: Pool, key: Origin, loop: asyncio.AbstractEventLoop, read_timeout_s: float
                 ) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.keep_alive = True
        self.used = False  # has served a request before (so a silent close may just be an idle timeout)
        self.paused = False
        self.framed = False  # the answer declared its length or chunking (else it ends with the connection)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken("the replica switched protocols")
        except httptools.HttpParserError as exc:
            self._broken(f"the replica's answer is not valid HTTP ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self.pool.forget(self)
        answer = self.answer
        if answer is None:
            return
        if answer._head_seen and not answer._complete and not self.framed:
            answer._end()  # an answer without a length ends when the connection does
            return
        reason = f"the replica closed the connection ({exc or 'EOF'})"
        answer._fail(UpstreamFailure(reason, before_answer=not answer._head_seen and not answer._chunks))

    def pause_writing(self) -> None:  # requests are small: nothing to throttle
        pass

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.answer is not None:
            self.answer._head(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.answer is not None:
            self.answer._body(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.answer is not None:
            self.answer._end()

    # the pool's side
    def _broken(self, reason: str) -> None:
        if self.answer is not None:
            self.answer._fail(UpstreamFailure(reason, before_answer=not self.answer._head_seen))
        if self.transport is not None:
            self.transport.abort()

    def send(self, request: bytes, slot: asyncio.Semaphore) -> Answer:
        assert self.transport is not None
        self.framed = False
        self.answer = Answer(self, slot)
        self.transport.write(request)
        return self.answer

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def finish(self, *, reuse: bool) -> None:
        self.answer = None
        self.used = True
        self.resume()
        if reuse and self.keep_alive and self.transport is not None and not self.transport.is_closing():
            self.parser = httptools.HttpResponseParser(self)
            self.pool.put_back(self)
        else:
            if self.transport is not None:
                self.transport.abort()
            self.pool.forget(self)


class Pool:
    """Keep-alive connections to every replica, at most `max_connections` in use at once."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float,
                 tls: ssl.SSLContext | None = None) -> None:
        """`tls` verifies https replicas (default: the system's trusted certificates)."""
        self._idle: dict[Origin, list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._heads: dict[tuple[str, str], tuple[Origin, bytes]] = {}
        self._tls = tls
        self._closed = False

    def _head(self, url: str, path: str) -> tuple[Origin, bytes]:
        """Where to connect for `url` and the request head up to the body's length (cached per URL)."""
        known = self._heads.get((url, path))
        if known is not None:
            return known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamFailure(f"unsupported replica URL {url!r} (http or https only)", before_answer=True)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = (parts.scheme, parts.hostname, port)
        target = parts.path.rstrip("/") + path
        host = f"{parts.hostname}:{port}" if ":" not in parts.hostname else f"[{parts.hostname}]:{port}"
        head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Accept-Encoding: identity\r\nContent-Length: ").encode()
        self._heads[(url, path)] = (origin, head)
        return origin, head

    async def post(self, url: str, path: str, body: bytes) -> Answer:
        """Send a JSON POST to `path` on the replica at `url`; the answer once its head arrived.

        A reused connection that the replica had already closed is retried once on a fresh one, as no
        byte of the request can have been served.
        """
        key, head = self._head(url, path)
        request = head + str(len(body)).encode() + b"\r\n\r\n" + body
        retried = False
        while True:
            await self._slots.acquire()
            try:
                conn = await self._connection(key)
            except BaseException:
                self._slots.release()
                raise
            reused = conn.used
            answer = conn.send(request, self._slots)  # the answer gives the slot back when closed
            try:
                await answer.head()
            except BaseException as exc:
                answer.close()
                stale = isinstance(exc, UpstreamFailure) and exc.before_answer and not exc.timeout and reused
                if stale and not retried:
                    retried = True
                    continue
                raise
            return answer

    async def _connection(self, key: Origin) -> _Conn:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                return conn
        loop = asyncio.get_running_loop()
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, key, loop, self._read_timeout_s), host, port, ssl=tls)
        except (OSError, TimeoutError) as exc:
            raise UpstreamFailure(f"could not connect to {host}:{port} ({exc or 'timeout'})",
                                  before_answer=True) from exc
        self._busy.add(conn)
        return conn

    def put_back(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        if self._closed:
            conn.finish(reuse=False)
            return
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        conns = [c for idle in self._idle.values() for c in idle] + list(self._busy)
        self._idle.clear()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
