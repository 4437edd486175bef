"""Every error shape of the contract, seen through the official openai SDK (and raw HTTP where it hides them)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.app import create_app
from tests.gateway.conftest import ADMIN_TOKEN, MODEL, Running, eventually, register
from tests.gateway.fake_upstream import FakeUpstream, UvicornThread
from vouchers.clock import ManualClock
from vouchers.factory import Stores
from vouchers.settings import GatewaySettings

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _shape(body: object) -> dict[str, object]:
    assert isinstance(body, dict) and set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    return error


async def test_wrong_missing_and_revoked_keys_are_401(gateway: Running, upstream: FakeUpstream, store: Stores) -> None:
    await register(store, upstream)
    key = await gateway.onboard("acme")
    with pytest.raises(openai.AuthenticationError) as info:
        await gateway.client("sk-shuqi-not-a-real-key").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    _shape(info.value.body and {"error": info.value.body})
    async with httpx.AsyncClient(base_url=gateway.url) as raw:
        r = await raw.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 401 and _shape(r.json())["code"] == "invalid_api_key"

    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    keys = (await gateway.admin.get("/admin/v1/startups/acme/keys")).json()["data"]
    assert (await gateway.admin.delete(f"/admin/v1/keys/{keys[0]['id']}")).status_code == 204
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "invalid_api_key"


async def test_a_key_revoked_on_one_replica_stops_at_once_on_another_that_knows_it(
    gateway: Running, upstream: FakeUpstream, store: Stores, settings: GatewaySettings, clock: ManualClock
) -> None:
    # Replica B has served the key, so it remembers which startup the key belongs to; its next ledger call
    # must still see the revocation made through replica A.
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "1000")
    await gateway.set_price("free-model", "0", "0")
    await register(store, upstream, worker_id="w2", model="free-model")
    key = await gateway.onboard("acme", "10")
    other = UvicornThread(create_app(settings, clock=clock), lifespan="on", as_gateway=True)
    other.start()
    try:
        on_b = gateway.client(key, base_url=other.url + "/v1")
        await on_b.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        await on_b.chat.completions.create(model="free-model", messages=MESSAGES, max_tokens=5)

        async def settled() -> bool:
            return (await gateway.balance("acme"))["held"] == "0"

        await eventually(settled)
        before = await gateway.balance("acme")
        assert before["spent"] != "0"
        keys = (await gateway.admin.get("/admin/v1/startups/acme/keys")).json()["data"]
        assert (await gateway.admin.delete(f"/admin/v1/keys/{keys[0]['id']}")).status_code == 204
        for model, extra in ((MODEL, {}), ("free-model", {}), (MODEL, {"max_tokens": 0})):
            with pytest.raises(openai.AuthenticationError) as info:
                await on_b.chat.completions.create(model=model, messages=MESSAGES, **extra)  # type: ignore[arg-type]
            assert info.value.code == "invalid_api_key"
        assert (await gateway.admin.put("/admin/v1/startups/acme/limits", json={"rpm": 100})).status_code == 200
        with pytest.raises(openai.AuthenticationError):  # limits set: the rate-limit call checks the key
            await on_b.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    finally:
        other.stop()
    after = await gateway.balance("acme")
    assert after == before  # nothing held or charged for the refused requests


async def test_unknown_model_is_404_and_bad_fields_are_400_naming_the_param(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    client = gateway.client(await gateway.onboard("acme"))
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found" and info.value.param == "model"
    cases: list[tuple[dict[str, object], str]] = [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"max_completion_tokens": "many"}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"extra_body": {"stream": "yes"}}, "stream"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)  # type: ignore[arg-type]
        assert bad.value.param == param and bad.value.code == "invalid_request_error"
        assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=MODEL, messages=[])
    assert bad.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.completions.create(model=MODEL, prompt=None)  # type: ignore[arg-type]
    assert bad.value.param == "prompt"
    assert upstream.state.requests == []  # nothing bad reached the model server


async def test_oversized_body_is_413(gateway: Running, upstream: FakeUpstream, store: Stores) -> None:
    await register(store, upstream)
    client = gateway.client(await gateway.onboard("acme"))
    huge = "x " * (3 * 1024 * 1024)  # 6 MiB, over the 4 MiB default
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": huge}])
    assert info.value.status_code == 413 and info.value.code == "request_too_large"


async def _chunked_post(url: str, key: str, pieces: list[bytes]) -> tuple[int, bytes]:
    """POST a body sent in chunks, each on its own (no content-length: the size is known only while reading).

    The connection stays open: a server that answers before reading every chunk would reset a closing one.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                     + f"authorization: Bearer {key}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        for piece in pieces:
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return int(head.split(b" ")[1]), await reader.readexactly(length)
    finally:
        writer.close()


async def test_a_body_sent_in_chunks_is_read_whole_and_its_size_limit_holds(
    settings: GatewaySettings, clock: ManualClock, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    server = UvicornThread(create_app(settings.model_copy(update={"max_body_bytes": 4096}), clock=clock),
                           lifespan="on", as_gateway=True)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            await admin.post("/admin/v1/startups", json={"id": "acme", "name": "Acme"})
            key = (await admin.post("/admin/v1/startups/acme/keys", json={})).json()["key"]
            await admin.post("/admin/v1/startups/acme/vouchers", json={"kind": "model", "amount": "10"})
            await admin.put(f"/admin/v1/prices/{MODEL}", json={"input_per_1m": "1000", "output_per_1m": "1000"})
            body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
            status, answer = await _chunked_post(server.url, key, [body[i:i + 7] for i in range(0, len(body), 7)])
            assert status == 200, answer
            assert len(upstream.state.requests) == 1
            assert upstream.state.requests[0]["messages"] == MESSAGES  # the pieces were joined in order
            big = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]})
            status, answer = await _chunked_post(server.url, key, [big[i:i + 1000] for i in range(0, len(big), 1000)])
            assert status == 413 and orjson.loads(answer)["error"]["code"] == "request_too_large"
            assert len(upstream.state.requests) == 1  # the oversized one never reached the model
            held = (await admin.get("/admin/v1/startups/acme/balance")).json()["model"]["held"]
            assert held == "0"
    finally:
        server.stop()


async def test_insufficient_quota_is_429_that_the_sdk_does_not_retry(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000", "1000")
    client = gateway.client(await gateway.onboard("acme", "0.000001"), max_retries=2)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert upstream.state.requests == []
    metrics = (await gateway.admin.get("/metrics")).text
    assert f'shuqi_requests_total{{code="429",model="{MODEL}",startup="acme"}} 1.0' in metrics


async def test_rate_limit_is_429_with_retry_after_and_resets_with_the_window(
    gateway: Running, upstream: FakeUpstream, store: Stores, clock: ManualClock
) -> None:
    await register(store, upstream)
    await gateway.onboard("acme")
    r = await gateway.admin.put("/admin/v1/startups/acme/limits", json={"rpm": 2, "tpm": None})
    assert r.json() == {"rpm": 2, "tpm": None, "max_gpus": None, "max_queued_jobs": None}
    key = (await gateway.admin.post("/admin/v1/startups/acme/keys")).json()["key"]
    client = gateway.client(key)
    first = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    clock.advance(61)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_no_healthy_worker_is_503_until_it_recovers(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    client = gateway.client(await gateway.onboard("acme"))
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    upstream.state.healthy = False

    async def refused() -> bool:
        return (await gateway.admin.get("/healthz")).status_code == 503

    await eventually(refused)
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.code == "model_unavailable"
    health = (await gateway.admin.get("/healthz")).json()
    assert health["missing"] == ["a healthy worker"]
    upstream.state.healthy = True

    async def back() -> bool:
        return (await gateway.admin.get("/healthz")).status_code == 200

    await eventually(back)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_framework_errors_have_the_openai_shape(gateway: Running) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as raw:
        missing = await raw.get("/v1/nothing-here")
        wrong_method = await raw.get("/v1/chat/completions")
        not_admin = await raw.get("/admin/v1/startups", headers={"authorization": "Bearer nope"})
        bad_admin_body = await gateway.admin.post("/admin/v1/startups", json={"id": "x"})
    assert missing.status_code == 404 and _shape(missing.json())["code"] == "not_found"
    assert wrong_method.status_code == 405 and _shape(wrong_method.json())["code"] == "method_not_allowed"
    assert not_admin.status_code == 401 and _shape(not_admin.json())["code"] == "invalid_api_key"
    assert bad_admin_body.status_code == 400 and _shape(bad_admin_body.json())["param"] == "name"
    await gateway.onboard("acme")
    again = await gateway.admin.post("/admin/v1/startups", json={"id": "acme", "name": "Again"})
    assert again.status_code == 409 and _shape(again.json())["code"] == "conflict"


async def test_tokens_per_minute_count_max_tokens_and_refuse_past_the_limit(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    key = await gateway.onboard("acme")
    await gateway.admin.put("/admin/v1/startups/acme/limits", json={"rpm": None, "tpm": 1000})
    client = gateway.client(key)
    first = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=600)
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert 350 <= int(first.headers["x-ratelimit-remaining-tokens"]) < 400  # 600 + a ~20-token prompt estimate
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=600)
    assert info.value.code == "rate_limit_exceeded" and "tokens" in info.value.message
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=300)
