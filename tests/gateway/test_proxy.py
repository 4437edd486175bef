"""The gateway end to end: the official openai SDK, a real gateway server, the fake upstream, a real store."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from tests.gateway.conftest import MODEL, Running, register
from tests.gateway.fake_upstream import FakeUpstream
from vouchers.factory import Stores


def _credits(text: str) -> Decimal:
    return Decimal(text)


def _consistent(b: dict[str, str]) -> None:
    assert _credits(b["granted"]) == _credits(b["spent"]) + _credits(b["held"]) + _credits(b["remaining"])


async def test_chat_non_stream_charges_reported_usage(gateway: Running, upstream: FakeUpstream, store: Stores) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "2000")  # credits per 1M: 0.001 per prompt token, 0.002 per output
    key = await gateway.onboard("acme", "10")
    client = gateway.client(key)
    resp = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there world"}], max_tokens=4,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], seed=7,
        logprobs=True, stop=["x"])
    completion = resp.parse()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 6 and completion.usage.completion_tokens == 4
    assert resp.headers["x-request-id"].startswith("req_")
    sent = upstream.state.requests[-1]
    assert sent["tools"][0]["function"]["name"] == "f" and sent["seed"] == 7 and sent["logprobs"] is True
    assert sent["stop"] == ["x"]
    b = await gateway.balance("acme")
    # 6 prompt tokens x 0.001 + 4 completion tokens x 0.002 = 0.014 credits
    assert _credits(b["spent"]) == Decimal("0.014")
    assert _credits(b["held"]) == 0
    _consistent(b)


async def test_a_repeated_field_reaches_the_model_server_as_the_gateway_read_it(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    # Two `max_tokens`: a model server whose parser kept the first could run past what the hold covers.
    await register(store, upstream)
    key = await gateway.onboard("acme", "10")
    body = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}'
    async with httpx.AsyncClient(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}) as client:
        r = await client.post("/v1/chat/completions", content=body % MODEL.encode(),
                              headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    sent = upstream.state.raw_bodies[-1]
    assert sent.count(b'"max_tokens"') == 1 and upstream.state.requests[-1]["max_tokens"] == 3


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_usage_chunk_only_when_asked(
    gateway: Running, upstream: FakeUpstream, store: Stores, include_usage: bool
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "2000")
    key = await gateway.onboard("acme", "10")
    client = gateway.client(key)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two"}], stream=True, max_tokens=3, **extra)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok tok tok "
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == (1 if include_usage else 0)
    if include_usage:
        assert usage_chunks[0].usage is not None and usage_chunks[0].usage.completion_tokens == 3
    # The gateway always asked the upstream for usage, whatever the client asked.
    assert upstream.state.requests[-1]["stream_options"]["include_usage"] is True
    b = await gateway.balance("acme")
    assert _credits(b["spent"]) == Decimal("0.011")  # 5 prompt x 0.001 + 3 completion x 0.002
    assert _credits(b["held"]) == 0
    _consistent(b)


async def test_completions_and_embeddings(gateway: Running, upstream: FakeUpstream, store: Stores) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "1000")
    key = await gateway.onboard("acme", "10")
    client = gateway.client(key)
    done = await client.completions.create(model=MODEL, prompt="a b c", max_tokens=2)
    assert done.choices[0].text == " tok tok"
    stream = await client.completions.create(model=MODEL, prompt="a b c", max_tokens=2, stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(texts) == "tok tok "
    emb = await client.embeddings.create(model=MODEL, input=["a b", "c"])
    assert [d.embedding for d in emb.data] == [[0.5, 0.25, 0.125]] * 2
    b = await gateway.balance("acme")
    # completions 3+2, stream 3+2, embeddings 3 tokens, at 0.001 each
    assert _credits(b["spent"]) == Decimal("0.013")
    _consistent(b)
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_unpriced_model_is_free_and_needs_no_voucher_but_its_tokens_are_counted(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    key = await gateway.onboard("acme", None)
    client = gateway.client(key)
    done = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "tok tok tok tok tok"
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    streamed = [c async for c in stream]
    assert done.usage is not None and streamed[-1].usage is not None
    b = await gateway.balance("acme")
    assert (b["spent"], b["held"], b["granted"]) == ("0", "0", "0")
    # Free is not unmetered: each request is journaled with its tokens, at no cost.
    usage = await client.get("/usage", cast_to=httpx.Response)
    lines = usage.json()["data"]
    assert len(lines) == 2 and all(line["amount"] == "0" and line["model"] == MODEL for line in lines)
    prompt = sum(line["prompt_tokens"] for line in lines)
    completion = sum(line["completion_tokens"] for line in lines)
    assert completion == done.usage.completion_tokens + streamed[-1].usage.completion_tokens
    assert prompt == done.usage.prompt_tokens + streamed[-1].usage.prompt_tokens
    text = (await gateway.admin.get("/metrics")).text
    assert f'shuqi_tokens_total{{model="{MODEL}",startup="acme",type="completion"}} {completion}.0' in text.splitlines()
