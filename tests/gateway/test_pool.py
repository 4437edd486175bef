"""The upstream pool against raw TCP servers that answer exactly as each case needs."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.pool import Pool, UpstreamFailure

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on a free port; yields its URL and a list that counts accepted connections."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def pool(**kwargs: float) -> Pool:
    options = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0, **kwargs}
    return Pool(max_connections=4, **options)


async def test_keeps_connections_alive_and_reads_lengths_and_chunks() -> None:
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        requests.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(handler) as (url, accepted):
        p = pool()
        first = await p.post(url + "/", "/v1/chat/completions", b'{"a":1}')
        assert first.status == 200
        assert await first.read() == b"hello"
        first.close()
        second = await p.post(url, "/v1/completions", b"{}")
        assert await second.read() == b"abcde"
        second.close()
        await p.close()
    assert len(accepted) == 1  # the second request reused the first connection
    assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Content-Length: 7\r\n" in requests[0] and requests[0].endswith(b'{"a":1}')
    assert requests[1].startswith(b"POST /v1/completions ")


async def test_a_connection_the_replica_closed_while_idle_is_replaced_unnoticed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # then close without a word, as a server's idle timeout does

    async with serving(handler) as (url, accepted):
        p = pool()
        for _ in range(3):
            answer = await p.post(url, "/x", b"{}")
            assert await answer.read() == b"ok"
            answer.close()
            await asyncio.sleep(0.05)
        await p.close()
    assert len(accepted) == 3


async def test_refused_connection_fails_before_any_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(UpstreamFailure) as failure:
            await pool().post(f"http://127.0.0.1:{port}", "/x", b"{}")
    assert failure.value.before_answer and not failure.value.timeout


async def test_replica_that_closes_after_reading_the_request_fails_before_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serving(handler) as (url, _):
        with pytest.raises(UpstreamFailure) as failure:
            await pool().post(url, "/x", b"{}")
    assert failure.value.before_answer


async def test_silence_is_a_timeout_not_a_failover() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # silent until the gateway gives up

    async with serving(handler) as (url, _):
        with pytest.raises(UpstreamFailure) as failure:
            await pool(read_timeout_s=0.2).post(url, "/x", b"{}")
    assert failure.value.timeout and not failure.value.before_answer


async def test_stream_pieces_arrive_as_sent_and_a_cut_stream_fails_mid_answer() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
        await writer.drain()
        await gate.wait()
        writer.transport.abort()

    async with serving(handler) as (url, _):
        answer = await pool().post(url, "/x", b"{}")
        assert await answer.readany() == b"data:1"
        gate.set()
        with pytest.raises(UpstreamFailure) as failure:
            await answer.readany()
        answer.close()
    assert not failure.value.before_answer


async def test_an_answer_without_length_ends_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\nupstream down")
        await writer.drain()

    async with serving(handler) as (url, _):
        answer = await pool().post(url, "/x", b"{}")
        assert answer.status == 502
        assert await answer.read() == b"upstream down"
        answer.close()


async def test_garbage_is_a_failure_not_a_hang() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not http\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(handler) as (url, _):
        with pytest.raises(UpstreamFailure, match="not valid HTTP"):
            await pool().post(url, "/x", b"{}")


async def test_closing_an_unfinished_answer_closes_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        assert await reader.read() == b""  # the gateway hung up

    async with serving(handler) as (url, accepted):
        p = pool()
        answer = await p.post(url, "/x", b"{}")
        assert await answer.readany() == b"partial"
        answer.close()
        again = await p.post(url, "/x", b"{}")  # a fresh connection, not the half-read one
        again.close()
        await p.close()
    assert len(accepted) == 2


async def test_a_stream_slower_in_total_than_the_timeout_is_fine_while_each_gap_is_shorter() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(handler) as (url, _):
        answer = await pool(read_timeout_s=0.3).post(url, "/x", b"{}")
        assert await answer.read() == b"xxxxxx"  # 0.6 s in all, never 0.3 s without a byte
        answer.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=replica",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_https_replicas_are_verified_and_served(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()

    async with serving(handler, server_tls) as (url, _):
        trusting = Pool(max_connections=2, connect_timeout_s=2, read_timeout_s=5,
                        tls=ssl.create_default_context(cafile=str(cert)))
        answer = await trusting.post(url, "/x", b"{}")
        assert await answer.read() == b"secret"
        answer.close()
        with pytest.raises(UpstreamFailure) as failure:  # the system does not trust this certificate
            await pool().post(url, "/x", b"{}")
        assert failure.value.before_answer
