"""One metered exchange with an upstream replica: connect (with failover), relay, then settle or release.

The hold is taken before this runs; from then on every path ends in exactly one settle or one release.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import replay, tokens
from gateway.admission import Admission
from gateway.context import Gateway
from gateway.errors import ModelUnavailable, UpstreamError, error_response, sse_error_event
from gateway.metering import Usage, cost, usage_from
from gateway.pool import Answer, UpstreamFailure
from gateway.replay import Keeping, Kept
from gateway.sse import StreamCounter
from gateway.validation import ParsedRequest
from vouchers.errors import InvalidRequest, ShuqiError
from vouchers.models import ChargeRef, Price, WorkerRecord

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 3


class RelayResponse(Response):
    """A streamed answer relayed chunk by chunk; `on_close` runs once it ends, however it ends.

    Starlette's StreamingResponse watches for a disconnect through an anyio task group per stream; this
    watches with one plain task that cancels the relay when the client leaves, which is all the relay
    needs. The cleanup cannot live in the body generator alone: a client that leaves before the first
    chunk cancels the response before the generator ever starts, so its `finally` would never run.
    The cleanup runs as deferred ledger work (`Gateway.defer`): the client already has everything.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncGenerator[bytes, None], on_close: Callable[[], Awaitable[None]],
                 defer: Callable[[Coroutine[Any, Any, None]], None], *, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._body = content
        self._on_close = on_close
        self._defer = defer
        self._sending = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(self._watch(receive, task))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._sending = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # cancelled from outside, not by the watcher: let it through
            task.uncancel()
        except OSError:
            pass  # an ASGI 2.4 server says the client left by failing the send
        finally:
            self._sending = False
            watcher.cancel()
            self._defer(self._finish())

    async def _watch(self, receive: Receive, relay: asyncio.Task[Any]) -> None:
        """Cancel the relay when the client disconnects mid-stream."""
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot tell us: the relay simply runs to its end
            log.debug("cannot watch for a disconnect", exc_info=True)
            return
        if self._sending:
            relay.cancel()

    async def _finish(self) -> None:
        await self._body.aclose()
        await self._on_close()


@dataclass
class Exchange:
    gw: Gateway
    startup_id: str
    parsed: ParsedRequest
    request_id: str
    price: Price | None
    admission: Admission  # the request's own hold, or a ticket on a lease
    prompt_estimate: int
    prompt_exact: bool  # the estimate came from the model's tokenizer, not the byte bound
    replicas: list[WorkerRecord]
    headers: dict[str, str]
    started: float  # perf_counter at arrival
    keeping: Keeping | None = None  # keep the answer for retries with the request's Idempotency-Key
    _done: bool = False
    _upstream_s: float = 0.0
    _sent_at: float = 0.0
    _content: bytes = b""  # a unary answer's body
    _stream_code: int = 200
    _kept: list[bytes] | None = None  # a stream's events as sent, while they fit what may be kept
    _kept_size: int = 0
    _relayed_all: bool = False  # the stream's last event was handed to the client

    async def run(self) -> Response:
        """Proxy the request and answer; on any failure before the answer the hold is released."""
        try:
            body = self._upstream_body()
            worker, resp, first = await self._connect(body)
        except BaseException:
            await self._release()
            raise
        if not self.parsed.stream or resp.status != 200:
            return await self._unary(worker, resp)
        counter = StreamCounter(forward_usage=self.parsed.client_wants_usage)
        if self.keeping is not None:
            self._kept = []

        async def finish() -> None:
            # close, not release: a stream cut short must end the upstream request, not wait for it.
            resp.close()
            self.gw.workers.release(worker.id)
            usage = counter.usage or Usage(await self._prompt_tokens(worker), counter.chunks_with_output)
            if self.keeping is not None and not self._done:
                whole = self._relayed_all and self._kept is not None
                await self._keep(Kept.SSE, b"".join(self._kept or ()) if whole else None)
            await self._settle(usage)
            self._observe(self._stream_code)

        return RelayResponse(self._relay(resp, first, counter), finish, self.gw.defer,
                             headers={**self.headers, "cache-control": "no-cache"})

    def _upstream_body(self) -> bytes:
        # Always the parsed body re-encoded, never the client's bytes: a body with a repeated key (two
        # `max_tokens`) could read differently to the model server's parser than to the hold's.
        body = self.parsed.body
        if self.parsed.stream:
            # Always ask for usage so the charge is the upstream's count; the client sees it only if it asked.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body = {**body, "stream_options": options}
        return orjson.dumps(body)

    async def _connect(self, body: bytes) -> tuple[WorkerRecord, Answer, bytes]:
        tried: set[str] = set()
        workers = self.gw.workers
        url_tail = "/v1/" + self.parsed.endpoint.value
        # No x-request-id upstream: llama-cpp-python's server answers 400 to any id that is not a UUID.
        # The JSON content type and identity encoding are the session's default headers (gateway.upstream).
        while len(tried) < _MAX_ATTEMPTS:
            worker = workers.pick(self.replicas, tried)
            if worker is None:
                break
            tried.add(worker.id)
            workers.acquire(worker.id)
            t0 = time.perf_counter()
            self._sent_at = self._sent_at or t0
            try:
                resp = await self.gw.pool.post(worker.url, url_tail, body)
                first = await self._first_bytes(resp)
            except UpstreamFailure as exc:
                workers.release(worker.id)
                if exc.timeout:
                    # The replica may still be working on it: sending it elsewhere could run it twice.
                    raise UpstreamError("The model server did not answer in time; you were not charged.") from exc
                # Nothing reached the client yet, so another replica can take the request unnoticed.
                workers.mark_failed(worker.id)
                log.warning("replica failed before answering (%s), trying another", exc,
                            extra={"worker": worker.id, "request_id": self.request_id})
                continue
            except BaseException:
                workers.release(worker.id)
                raise
            self._upstream_s += time.perf_counter() - t0
            return worker, resp, first
        raise ModelUnavailable(f"No replica of `{self.parsed.model}` could be reached; try again shortly.")

    async def _first_bytes(self, resp: Answer) -> bytes:
        """Read enough to know the replica answers: the whole body, or a stream's first bytes."""
        try:
            if not self.parsed.stream or resp.status != 200:
                self._content = await resp.read()
                return b""
            return await resp.readany()
        except BaseException:
            resp.close()
            raise

    async def _unary(self, worker: WorkerRecord, resp: Answer) -> Response:
        content = self._content
        try:
            resp.close()
            self.gw.workers.release(worker.id)
            if resp.status != 200:
                await self._release()
                return self._upstream_failure(resp.status, content)
            try:
                answer = orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                raise UpstreamError("The upstream answered with a body that is not JSON.") from exc
            usage = usage_from(answer.get("usage") if isinstance(answer, dict) else None)
            if usage is None:
                # No count from the upstream: charge the prompt estimate and the bytes of the answer as tokens.
                usage = Usage(self.prompt_estimate, len(content))
            # The answer goes out first; the charge follows it (reads of the ledger wait for it: Gateway.settled).
            self._done = True
            self.gw.defer(self._charge(usage) if self.keeping is None else self._keep_and_charge(usage, content))
        except BaseException:
            await self._release()
            raise
        self._observe(200)
        return Response(content, status_code=200, media_type="application/json", headers=self.headers)

    def _upstream_failure(self, code: int, content: bytes) -> Response:
        self._observe(code if code < 500 else 502)
        if code < 500:
            # The upstream refused the request itself (a bad parameter): pass its answer on as it is.
            try:
                answer = orjson.loads(content)
            except orjson.JSONDecodeError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                return Response(content, status_code=code, media_type="application/json", headers=self.headers)
            text = content[:500].decode(errors="replace")
            exc: ShuqiError = InvalidRequest(text or f"The upstream refused the request ({code}).")
        else:
            log.warning("upstream error %s", code, extra={"request_id": self.request_id})
            exc = UpstreamError(f"The model server failed ({code}); you were not charged.")
        return error_response(exc, self.headers)

    async def _relay(self, resp: Answer, first: bytes, counter: StreamCounter
                     ) -> AsyncGenerator[bytes, None]:
        model = self.parsed.model
        self.gw.metrics.ttft.labels(model).observe(time.perf_counter() - self.started)
        # The ledger's clock decides hold expiry, so it also decides when a long stream renews its hold.
        clock = self.gw.clock
        extend_every = self.gw.settings.hold_ttl_s / 3
        last_extend = clock.now()
        try:
            out = counter.feed(first)
            if out:
                yield self._sent(out)
            async for chunk in resp:
                out = counter.feed(chunk)
                if out:
                    yield self._sent(out)
                if clock.now() - last_extend > extend_every:
                    last_extend = clock.now()
                    await self._extend_hold()
            tail = counter.flush()
            if tail:
                yield self._sent(tail)
            self._relayed_all = self._stream_code == 200
        except UpstreamFailure as exc:
            self._stream_code = 502
            log.warning("upstream broke mid-stream (%s)", exc, extra={"request_id": self.request_id})
            yield sse_error_event(UpstreamError("The model server failed mid-stream; you are charged only "
                                                "for what was streamed."))

    async def _extend_hold(self) -> None:
        """Keep a long stream's hold from being reaped while it still runs."""
        try:
            await self.admission.keep_alive(self.gw.settings.hold_ttl_s)
        except ShuqiError as exc:
            log.warning("could not extend the hold: %s", exc.message, extra={"request_id": self.request_id})

    async def _prompt_tokens(self, worker: WorkerRecord) -> int:
        """Prompt tokens of a stream that ended without usage: the tokenizer's count where we can get it."""
        if self.prompt_exact:
            return self.prompt_estimate
        counted = await tokens.count(self.gw.client, worker, self.parsed,
                                     timeout_s=self.gw.settings.tokenize_timeout_s)
        return min(counted, self.prompt_estimate) if counted is not None else self.prompt_estimate

    async def _settle(self, usage: Usage) -> None:
        if self._done:
            return
        self._done = True
        await self._charge(usage)

    async def _charge(self, usage: Usage) -> None:
        ref = ChargeRef(reference=self.request_id, model=self.parsed.model, prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens)
        amount = cost(usage, self.price)
        for attempt in (1, 2):
            try:
                await self.admission.charge(amount, ref)
                return
            except Exception:
                # A charge is made once (a final settle, or a partial one under the request's key), so trying
                # again cannot charge twice. If both tries fail the answer is already delivered; the hold's
                # TTL bounds what the unsettled request can hide.
                log.exception("settle failed (attempt %s)", attempt,
                              extra={"request_id": self.request_id, "startup": self.startup_id})

    def _sent(self, event: bytes) -> bytes:
        """A stream's bytes on their way to the client, kept too while they fit (Idempotency-Key)."""
        kept = self._kept
        if kept is not None:
            self._kept_size += len(event)
            if self._kept_size <= self.gw.settings.answer_keep_max_bytes:
                kept.append(event)
            else:
                self._kept = None
        return event

    async def _keep(self, kind: Kept, answer: bytes | None) -> None:
        """Keep the answer (or, when it cannot be kept, the request's fingerprint alone) for its retries."""
        assert self.keeping is not None
        settings = self.gw.settings
        if answer is None or len(answer) > settings.answer_keep_max_bytes:
            kind, answer = Kept.NONE, b""
        store, key, fp = self.gw.stores.answers, self.keeping.key, self.keeping.fingerprint
        budget = settings.answer_keep_budget_bytes
        try:
            kept = await store.keep_answer(self.startup_id, key, replay.encode(fp, kind, answer),
                                           ttl_s=settings.answer_keep_s, budget_bytes=budget)
            if not kept and kind is not Kept.NONE:
                # Over the startup's budget: the fingerprint alone still tells a retry 409 from a misuse 422.
                log.info("answer not kept: the startup's kept answers are at their budget",
                         extra={"request_id": self.request_id, "startup": self.startup_id})
                await store.keep_answer(self.startup_id, key, replay.encode(fp, Kept.NONE, b""),
                                        ttl_s=settings.answer_keep_s, budget_bytes=budget)
        except Exception:
            log.exception("could not keep the answer", extra={"request_id": self.request_id})

    async def _keep_and_charge(self, usage: Usage, answer: bytes) -> None:
        """Keep the answer for a retry with the same Idempotency-Key, then charge (a retry that finds the
        hold settled finds the answer too)."""
        await self._keep(Kept.JSON, answer)
        await self._charge(usage)

    async def _release(self) -> None:
        if self._done:
            return
        self._done = True
        with anyio.CancelScope(shield=True):
            try:
                await self.admission.release()
            except Exception:
                log.exception("release failed", extra={"request_id": self.request_id, "startup": self.startup_id})

    def _observe(self, code: int) -> None:
        total = time.perf_counter() - self.started
        # Unary: everything but the upstream call. Streams: what came before the upstream was asked.
        overhead = total - self._upstream_s if not self.parsed.stream else self._sent_at - self.started
        self.gw.metrics.observe(self.startup_id, self.parsed.model, code, total, max(overhead, 0.0))
