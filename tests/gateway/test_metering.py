"""Metering through the gateway: disconnects, upstream failures, idempotency, price changes, concurrency."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway import replay
from gateway.app import create_app
from gateway.replay import Kept
from tests.gateway.conftest import MODEL, Running, at_once, eventually, register
from tests.gateway.fake_upstream import FakeUpstream, UvicornThread
from vouchers.clock import ManualClock
from vouchers.factory import Stores
from vouchers.settings import GatewaySettings

# 3 words + 3 per message = 6 fake tokens
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three"}]


def _consistent(b: dict[str, str]) -> None:
    assert Decimal(b["granted"]) == Decimal(b["spent"]) + Decimal(b["held"]) + Decimal(b["remaining"])


async def test_client_disconnect_aborts_upstream_and_charges_what_streamed(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "1000")  # 0.001 credit per token either way
    key = await gateway.onboard("acme", "10")
    upstream.state.reply_tokens = 1000
    upstream.state.chunk_delay_s = 0.02
    client = gateway.client(key)
    cut = {"Idempotency-Key": "cut-short"}
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=1000,
                                                  extra_headers=cut)
    got = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
        if got == 3:
            break
    await stream.close()

    async def aborted() -> bool:
        return upstream.state.streams_aborted == 1

    await eventually(aborted)

    async def settled() -> bool:
        return Decimal((await gateway.balance("acme"))["held"]) == 0

    await eventually(settled)
    b = await gateway.balance("acme")
    spent = Decimal(b["spent"])
    # Charged for the prompt (the tokenizer's count plus template overhead) and at least the 3 chunks seen,
    # never for the 1000 tokens the hold covered.
    assert Decimal("0.009") <= spent < Decimal("0.1")
    assert upstream.state.streams_finished == 0
    _consistent(b)
    # Its retry with the same key is refused, never answered with the cut stream nor run and charged again.
    with pytest.raises(openai.ConflictError) as refused:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=1000,
                                             extra_headers=cut)
    assert "not kept" in refused.value.message
    assert len(upstream.state.requests) == 1 and (await gateway.balance("acme"))["spent"] == b["spent"]


async def test_upstream_error_before_output_releases_the_hold(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "1000")
    key = await gateway.onboard("acme", "10")
    upstream.state.fail_status = 500
    client = gateway.client(key)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream, max_tokens=10)
        assert info.value.status_code == 502
        assert info.value.code == "upstream_error"
    # A request the model server itself refuses comes back as it said it, uncharged too.
    upstream.state.fail_status = 400
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert bad.value.message.endswith("fake failure")
    b = await gateway.balance("acme")
    assert b["spent"] == "0" and b["held"] == "0" and b["remaining"] == "10"


async def test_upstream_breaking_mid_stream_ends_with_an_error_event_and_charges_what_streamed(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "0", "1000000")  # 1 credit per completion token, prompt free
    key = await gateway.onboard("acme", "100")
    upstream.state.reply_tokens = 20
    upstream.state.break_after = 4
    client = gateway.client(key)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=20)
    seen = 0
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
    assert seen == 4

    async def settled() -> bool:
        # The gateway settles as the stream ends, which may be just after the client saw the error event.
        return Decimal((await gateway.balance("acme"))["held"]) == 0

    await eventually(settled)
    b = await gateway.balance("acme")
    assert b["spent"] == "4" and b["held"] == "0"
    _consistent(b)


async def test_idempotency_key_never_charges_twice_nor_runs_twice(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    key = await _credit_per_token(gateway, upstream, store)
    client = gateway.client(key, max_retries=2)  # the SDK's own retries must not turn a refusal into a loop
    headers = {"Idempotency-Key": "retry-me-1"}
    first = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=headers)
    served = len(upstream.state.requests)
    for _ in range(2):
        # The key's request was answered and charged: a retry gets the same answer, no model run, no charge.
        again = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=headers)
        assert again.http_response.content == first.http_response.content
        assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
        assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(upstream.state.requests) == served
    assert (await gateway.balance("acme"))["spent"] == "5"
    # A finished stream is kept as it was sent: its retry gets the same events, and nothing runs or is charged.
    streamed = {"Idempotency-Key": "stream-me"}
    events = []
    for _ in range(2):
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True,
                                                      extra_headers=streamed)
        events.append([c.model_dump() async for c in stream])
        await eventually(lambda: _spent_is(gateway, "10"))
    assert events[0] == events[1] and len(events[0]) >= 5
    assert len(upstream.state.requests) == served + 1
    # A first attempt that failed charged nothing; its retry with the same key is answered and charged once.
    upstream.state.fail_status = 500
    failed = {"Idempotency-Key": "retry-me-2"}
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=failed)
    upstream.state.fail_status = None
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=failed)
    b = await gateway.balance("acme")
    assert b["spent"] == "15" and b["held"] == "0"


async def test_an_idempotency_key_names_one_request(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings
) -> None:
    key = await _credit_per_token(gateway, upstream, store)
    client = gateway.client(key)
    headers = {"Idempotency-Key": "one-request"}
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=headers)
    # Sent again with another body (or to another endpoint), the key is refused: nothing runs, nothing is charged.
    for other in (
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, extra_headers=headers),
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, extra_headers=headers),
    ):
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await other
        assert refused.value.code == "idempotency_key_reused" and refused.value.param == "Idempotency-Key"
        assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.state.requests) == 1
    assert (await gateway.balance("acme"))["spent"] == "5"
    # An answer too large to keep: its retry hears 409 (it ran and was charged once), another body still 422.
    settings.answer_keep_max_bytes = 10
    big = {"Idempotency-Key": "not-kept"}
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=big)
    await eventually(lambda: _spent_is(gateway, "10"))
    await _refused_as_not_kept(client, big)
    assert len(upstream.state.requests) == 2
    b = await gateway.balance("acme")
    assert b["spent"] == "10" and b["held"] == "0"


async def test_past_its_budget_of_kept_answers_a_startup_gets_409_on_retry_never_a_second_run(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings
) -> None:
    key = await _credit_per_token(gateway, upstream, store)
    client = gateway.client(key)
    fits, over = {"Idempotency-Key": "fits"}, {"Idempotency-Key": "over"}
    first = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=fits)
    await eventually(lambda: _spent_is(gateway, "5"))
    # Room for the first answer and a fingerprint, not for a second answer.
    settings.answer_keep_budget_bytes = len(replay.encode("0" * 32, Kept.JSON, first.http_response.content)) + 100
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=over)
    await eventually(lambda: _spent_is(gateway, "10"))
    again = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=fits)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.http_response.content == first.http_response.content
    await _refused_as_not_kept(client, over)  # the fingerprint alone was kept
    assert len(upstream.state.requests) == 2
    assert (await gateway.balance("acme"))["spent"] == "10"


async def _refused_as_not_kept(client: openai.AsyncOpenAI, headers: dict[str, str]) -> None:
    """A key whose answer (max_tokens=5) was not kept: the same request hears 409, another body 422."""
    with pytest.raises(openai.ConflictError) as conflict:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers=headers)
    assert conflict.value.code == "conflict" and "not kept" in conflict.value.message
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, extra_headers=headers)


async def _credit_per_token(gateway: Running, upstream: FakeUpstream, store: Stores, credits: str = "100") -> str:
    """The fake upstream registered at 1 credit per completion token; a key of `acme`, with `credits`."""
    await register(store, upstream)
    await gateway.set_price(MODEL, "0", "1000000")
    return await gateway.onboard("acme", credits)


async def _spent_is(gateway: Running, spent: str) -> bool:
    return (await gateway.balance("acme"))["spent"] == spent


async def test_a_retry_while_its_key_is_still_being_answered_is_refused(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    key = await _credit_per_token(gateway, upstream, store)
    client = gateway.client(key)
    headers = {"Idempotency-Key": "in-flight"}
    upstream.state.chunk_delay_s = 0.3  # the stream is open for about a second after its first event
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, stream=True,
                                                  extra_headers=headers)
    with pytest.raises(openai.ConflictError) as refused:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, extra_headers=headers)
    assert "still being answered" in refused.value.message
    assert [c async for c in stream]  # the first attempt is not disturbed
    assert len(upstream.state.requests) == 1
    await eventually(lambda: _spent_is(gateway, "3"))


async def test_price_change_applies_to_the_next_request(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    key = await _credit_per_token(gateway, upstream, store)
    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert (await gateway.balance("acme"))["spent"] == "5"
    await gateway.set_price(MODEL, "0", "2000000")
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert (await gateway.balance("acme"))["spent"] == "15"
    models = await client.models.list()
    price = models.data[0].model_extra["price"]  # type: ignore[index]
    assert price == {"model": MODEL, "input_per_1m": "0", "output_per_1m": "2000000"}


async def test_k_requests_of_credit_let_at_most_k_through_out_of_200(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    k = 7
    await register(store, upstream, capacity=256)
    await gateway.set_price(MODEL, "0", "1000000")  # worst case of max_tokens=1: exactly 1 credit
    key = await gateway.onboard("acme", str(k))
    results = await at_once(gateway, key, 200, MESSAGES)
    assert results.count("ok") <= k
    assert results.count("ok") + results.count("insufficient_quota") == 200
    assert results.count("ok") == k  # nothing else was running, so every credit bought a request
    b = await gateway.balance("acme")
    assert b["held"] == "0"
    assert b["spent"] == str(k)
    _consistent(b)


@pytest.mark.parametrize("tokenizer", [True, False])
async def test_hold_uses_the_worker_tokenizer_when_it_has_one(
    gateway: Running, upstream: FakeUpstream, store: Stores, tokenizer: bool
) -> None:
    await register(store, upstream, tokenizer=tokenizer)
    await gateway.set_price(MODEL, "1000000", "0")  # 1 credit per prompt token
    key = await gateway.onboard("acme", "1100")
    client = gateway.client(key)
    long_prompt = [{"role": "user", "content": "word " * 1000}]  # 1000 tokens, 5000 bytes
    if tokenizer:
        await client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=5)
        assert (await gateway.balance("acme"))["spent"] == "1003"  # the upstream's count: 1000 + 3
    else:
        # Without a tokenizer the hold is the byte bound (over 5000 tokens), more than the 1100 credits.
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=5)
        assert info.value.code == "insufficient_quota"


async def test_two_replicas_on_one_store_share_the_budget(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings, clock: ManualClock,
) -> None:
    # Replicas meet in the store: one Redis, or one SQLite file on one host.
    k = 5
    await register(store, upstream, capacity=256)
    await gateway.set_price(MODEL, "0", "1000000")
    key = await gateway.onboard("acme", str(k))
    other = UvicornThread(create_app(settings, clock=clock), lifespan="on", as_gateway=True)
    other.start()
    try:
        clients = [gateway.client(key), gateway.client(key, base_url=other.url + "/v1")]

        async def one(i: int) -> str:
            try:
                await clients[i % 2].chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
            except openai.RateLimitError as exc:
                return str(exc.code)
            return "ok"

        results = await asyncio.gather(*(one(i) for i in range(60)))
    finally:
        other.stop()
    assert results.count("ok") == k

    async def settled() -> bool:
        # Each replica charges right after its answer; reads through one replica wait only for its own.
        return (await gateway.balance("acme"))["held"] == "0"

    await eventually(settled)
    b = await gateway.balance("acme")
    assert b["spent"] == str(k) and b["held"] == "0"
    _consistent(b)


async def test_a_long_stream_keeps_its_hold_past_the_ttl(
    gateway: Running, upstream: FakeUpstream, store: Stores, clock: ManualClock
) -> None:
    key = await _credit_per_token(gateway, upstream, store)
    upstream.state.reply_tokens = 30
    upstream.state.chunk_delay_s = 0.02
    client = gateway.client(key)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=50)
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen == 2:
            clock.advance(300)  # past a third of the 600 s TTL: the next chunk renews the hold
        if seen == 6:
            clock.advance(400)  # past the first expiry, within the renewed one
            assert await store.ledger.reap_holds() == 0
    b = await gateway.balance("acme")
    assert b["spent"] == "30" and b["held"] == "0"
    _consistent(b)


async def test_a_client_gone_before_the_first_byte_still_settles(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "1000")
    key = await gateway.onboard("acme", "10")
    upstream.state.reply_tokens = 1000
    upstream.state.chunk_delay_s = 0.05
    upstream.state.first_delay_s = 0.5
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 1000})
    host, port = gateway.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                 + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()

    async def upstream_working() -> bool:
        return upstream.state.streams_started == 1

    await eventually(upstream_working)  # held, routed, and the model is on it: now leave, before any byte
    writer.close()
    await writer.wait_closed()

    async def settled() -> bool:
        b = await gateway.balance("acme")
        return upstream.state.streams_aborted == 1 and b["held"] == "0" and Decimal(b["spent"]) > 0

    await eventually(settled)
    _consistent(await gateway.balance("acme"))


async def test_charges_land_right_after_the_answer_with_or_without_more_traffic(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    # The charge follows the answer: with the next request's ledger call, or on its own soon after.
    await register(store, upstream)
    await gateway.set_price(MODEL, "0", "1000000")  # one credit per completion token
    key = await gateway.onboard("acme", "100")
    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)

    async def charged(spent: str) -> bool:
        # Read the store itself, not through the gateway (whose ledger reads wait for its charges).
        b = (await store.ledger.balance("acme")).model
        return b.spent == int(spent) * 1_000_000 and b.held == 0

    await eventually(lambda: charged("3"))
    replies = await asyncio.gather(*(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
                                     for _ in range(5)))
    assert all(r.usage is not None and r.usage.completion_tokens == 2 for r in replies)
    await eventually(lambda: charged("13"))
    b = await gateway.balance("acme")
    assert b["spent"] == "13" and b["held"] == "0"
    _consistent(b)
