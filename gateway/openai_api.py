"""The founder API: OpenAI-compatible endpoints, metered, plus the caller's own balance and usage."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import errors, ratelimit, replay, tokens, validation, wire
from gateway.admission import Admission, HeldRequest
from gateway.auth import Caller, startup_caller, verified
from gateway.context import Gateway, gateway_of
from gateway.errors import PayloadTooLarge
from gateway.metering import completion_budget, worst_case
from gateway.proxy import Exchange
from gateway.replay import Keeping
from gateway.validation import Endpoint, ParsedRequest
from vouchers.errors import AuthenticationError, Conflict, InvalidRequest, ShuqiError
from vouchers.models import Hold, HoldStatus, Price, WorkerRecord
from vouchers.units import Kind

_MAX_IDEMPOTENCY_KEY = 255
_IDEMPOTENT_RETRIES = 8  # attempts with one Idempotency-Key after failures that charged nothing


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all.

    Reads the ASGI messages itself: Starlette's `Request.stream()` wraps them in an async generator,
    which costs more than the rest of reading a typical body.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # Nobody will read the answer; this only ends the request quietly, before anything was held.
            raise InvalidRequest("The client went away while sending the body.")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _prompt_tokens(gw: Gateway, replicas: list[WorkerRecord], parsed: ParsedRequest, raw: bytes,
                         price: Price | None) -> tuple[int, bool]:
    """Prompt tokens for the hold, and whether the model's tokenizer counted them."""
    bound = tokens.upper_bound(raw)
    if price is None or (price.input_per_1m == 0 and price.output_per_1m == 0):
        return bound, False  # costs nothing: no need to pay for an exact count
    if len(raw) < gw.settings.tokenize_min_bytes:
        # A short prompt's byte bound holds little more than its real count, for less than a round trip.
        return bound, False
    worker = next((w for w in replicas if w.tokenize_path and gw.workers.is_healthy(w.id)), None)
    if worker is None:
        return bound, False
    counted = await tokens.count(gw.client, worker, parsed, timeout_s=gw.settings.tokenize_timeout_s)
    return (min(counted, bound), True) if counted is not None else (bound, False)


class Replayed(Exception):
    """A retry of a request that was answered before: the answer kept for its Idempotency-Key."""

    def __init__(self, answer: Response) -> None:
        super().__init__("replayed")
        self.answer = answer


async def _reserve(gw: Gateway, caller: Caller, request: Request, request_id: str, amount: int,
                   parsed: ParsedRequest, raw: bytes, headers: dict[str, str]) -> tuple[Hold, Keeping | None]:
    """Hold the worst case; with it, where to keep the answer (requests with an Idempotency-Key).

    A free request (an unpriced model) holds 0: its settle still journals the tokens.
    """
    ttl = gw.settings.hold_ttl_s
    idem = request.headers.get("idempotency-key")
    if idem is None:
        key = f"{caller.startup_id}:req:{request_id}"
        hold = await gw.stores.ledger.reserve(caller.startup_id, Kind.MODEL, amount, ttl_s=ttl, idempotency_key=key,
                                      key_id=caller.check_key)
        return hold, None
    if not idem or len(idem) > _MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters.",
                             param="Idempotency-Key")
    fp = replay.fingerprint(parsed.endpoint.value, raw)
    # A released hold means an earlier attempt failed uncharged: the retry takes the next key in the chain.
    # A hold another request made and did not release belongs to an attempt that was answered (and charged
    # once) or is being answered now: the retry gets the kept answer, never a second run of the model.
    for attempt in range(_IDEMPOTENT_RETRIES):
        key = f"{caller.startup_id}:idem:{idem}#{attempt}"
        hold = await gw.stores.ledger.reserve(caller.startup_id, Kind.MODEL, amount, ttl_s=ttl, idempotency_key=key,
                                      key_id=caller.check_key)
        if hold.status is HoldStatus.RELEASED:
            continue
        if not hold.replayed:
            return hold, Keeping(key, fp)
        if hold.status is HoldStatus.OPEN:
            raise Conflict("A request with this Idempotency-Key is still being answered; it runs once. "
                           "Retry once it has finished.", param="Idempotency-Key",
                           headers={"x-should-retry": "false"})
        raise Replayed(replay.replay(await gw.stores.answers.kept_answer(caller.startup_id, key), fp, headers))
    raise Conflict("This Idempotency-Key was used by too many failed requests; use a new key.",
                   param="Idempotency-Key")


async def _serve(request: Request, endpoint: Endpoint) -> Response:
    started = time.perf_counter()
    gw = gateway_of(request)
    request_id = "req_" + secrets.token_hex(12)
    headers = {"x-request-id": request_id}
    startup_id = model = ""
    caller: Caller | None = None
    try:
        caller = await startup_caller(gw.stores.directory, request, gw.keys)
        startup_id = caller.startup_id
        try:
            raw = await read_body(request, gw.settings.max_body_bytes)
            parsed = validation.parse(raw, endpoint, max_tokens_cap=gw.settings.max_tokens_cap)
            model = parsed.model
            replicas = await gw.workers.replicas_for(model, startup_id, embeddings=endpoint is Endpoint.EMBEDDINGS)
        except ShuqiError:
            await verified(gw.stores.directory, request, caller)  # a revoked key hears 401, not what else is wrong
            raise
        exchange = await _admit(gw, caller, request, request_id, parsed, raw, replicas, headers, started)
        return await exchange.run()
    except Replayed as again:
        gw.metrics.requests.labels(startup_id, model, "200").inc()
        return again.answer
    except ShuqiError as exc:
        if isinstance(exc, AuthenticationError) and caller is not None:
            gw.keys.forget(caller.key_id)
        exc.headers = {**headers, **exc.headers}
        gw.metrics.requests.labels(startup_id, model, str(errors.status(exc))).inc()
        raise


async def _admit(gw: Gateway, caller: Caller, request: Request, request_id: str, parsed: ParsedRequest, raw: bytes,
                 replicas: list[WorkerRecord], headers: dict[str, str], started: float) -> Exchange:
    """Count the request against the rate limits and hold its worst case: the exchange, ready to run.

    The first of those store calls also checks that a key this replica remembered was not revoked.
    """
    startup_id = caller.startup_id
    price = await gw.lookups.price(parsed.model)
    prompt, exact = await _prompt_tokens(gw, replicas, parsed, raw, price)
    context = max(w.context_length or gw.settings.default_context_length for w in replicas)
    budget = 0 if parsed.endpoint is Endpoint.EMBEDDINGS else completion_budget(parsed.generations,
                                                                                parsed.max_tokens, context)
    limits = await gw.lookups.limits(startup_id)
    # Tokens per minute count a typical prompt size, not the safe bound the hold needs.
    rate_tokens = (prompt if exact else tokens.rough_estimate(raw)) + budget
    rate_headers = await ratelimit.check(gw.stores.rates, startup_id, limits, tokens=rate_tokens,
                                         key_id=caller.check_key)
    if rate_headers:
        headers.update(rate_headers)
        caller = Caller(caller.startup_id, caller.key_id)  # the rate limit call checked the key
    amount = worst_case(prompt, budget, price)
    admission: Admission | None = None
    keeping: Keeping | None = None
    if caller.verified and "idempotency-key" not in request.headers:
        # A key checked now (or trusted: events flow) and no answer to keep: a lease may admit it in memory.
        admission = await gw.leases.admit(startup_id, amount, f"{startup_id}:req:{request_id}")
    if admission is None:
        hold, keeping = await _reserve(gw, caller, request, request_id, amount, parsed, raw, headers)
        admission = HeldRequest(gw.stores.ledger, hold)
    return Exchange(gw, startup_id, parsed, request_id, price, admission, prompt, exact, replicas, headers,
                    started, keeping=keeping)


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await _serve(request, Endpoint.CHAT)


async def completions(request: Request) -> Response:
    """POST /v1/completions."""
    return await _serve(request, Endpoint.COMPLETIONS)


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings."""
    return await _serve(request, Endpoint.EMBEDDINGS)


async def list_models(request: Request) -> Response:
    """GET /v1/models: the models this caller may use, with their prices."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    await gw.workers.refresh()
    by_model: dict[str, list[WorkerRecord]] = {}
    for w in gw.workers.workers:
        if w.owner is None or w.owner == caller.startup_id:
            by_model.setdefault(w.model, []).append(w)
    data = []
    for name in sorted(by_model):
        replicas = by_model[name]
        price = await gw.lookups.price(name)
        data.append({
            "id": name, "object": "model", "created": int(min(w.heartbeat_at for w in replicas)),
            "owned_by": caller.startup_id if all(w.owner for w in replicas) else "shuqi",
            "price": wire.price(price) if price else None,
            "context_length": max((w.context_length or 0) for w in replicas) or None,
            "embeddings": any(w.embeddings for w in replicas),
            "healthy_replicas": sum(1 for w in replicas if gw.workers.is_healthy(w.id)),
        })
    return _json({"object": "list", "data": data})


async def my_balance(request: Request) -> Response:
    """GET /v1/balance: the caller's own balance."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    await gw.settled(caller.startup_id)
    return _json(wire.balance(await gw.stores.ledger.balance(caller.startup_id)))


async def my_usage(request: Request) -> Response:
    """GET /v1/usage?since=&until=&limit=: the caller's own ledger lines, oldest first."""
    gw = gateway_of(request)
    caller = await startup_caller(gw.stores.directory, request)
    query = request.query_params
    since = wire.parse_time(query["since"], "since") if "since" in query else None
    until = wire.parse_time(query["until"], "until") if "until" in query else None
    limit = None
    if "limit" in query:
        if not query["limit"].isdigit() or int(query["limit"]) < 1:
            raise InvalidRequest("'limit' must be a positive integer", param="limit")
        limit = int(query["limit"])
    await gw.settled(caller.startup_id)
    lines = await gw.stores.journal.journal(caller.startup_id, since=since, until=until, limit=limit)
    return _json({"object": "list", "data": [wire.journal_line(line) for line in lines]})


def metered_handlers() -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """The POST endpoints the app serves ahead of its router (same handlers as in `routes`)."""
    return {"/v1/chat/completions": chat_completions, "/v1/completions": completions, "/v1/embeddings": embeddings}


def routes() -> list[Route]:
    """The founder API routes, as plain Starlette routes: the hot path needs no dependency injection."""
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/balance", my_balance, methods=["GET"]),
        Route("/v1/usage", my_usage, methods=["GET"]),
    ]
