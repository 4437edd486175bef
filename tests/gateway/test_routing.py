"""Routing: fewest requests in flight, failover before any byte, health, private deployments."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway import routing
from tests.gateway.conftest import MODEL, Running, eventually, register
from tests.gateway.fake_upstream import FakeUpstream
from vouchers.factory import Stores
from vouchers.models import WorkerRecord

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _worker(worker_id: str, owner: str | None = None, model: str = "m", capacity: int = 8) -> WorkerRecord:
    return WorkerRecord(id=worker_id, model=model, url=f"http://{worker_id}", engine="fake", owner=owner,
                        capacity=capacity)


def test_pick_prefers_fewest_in_flight_among_healthy_and_skips_tried() -> None:
    ws = [_worker("a"), _worker("b"), _worker("c")]
    healthy = {"a", "b", "c"}
    assert routing.pick(ws, healthy=healthy, in_flight={"a": 3, "b": 1, "c": 2}) == ws[1]
    assert routing.pick(ws, healthy={"a", "c"}, in_flight={"a": 3, "b": 0, "c": 2}) == ws[2]
    assert routing.pick(ws, healthy=healthy, in_flight={"a": 0, "b": 0, "c": 1}, exclude={"a"}) == ws[1]
    assert routing.pick(ws, healthy=set(), in_flight={}) is None
    small = [_worker("tiny", capacity=1), _worker("big", capacity=8)]
    assert routing.pick(small, healthy={"tiny", "big"}, in_flight={"tiny": 1, "big": 3}) == small[1]
    assert routing.pick(small, healthy={"tiny", "big"}, in_flight={"tiny": 1, "big": 9}) == small[0]


def test_private_deployments_are_visible_to_their_owner_only() -> None:
    ws = [_worker("shared"), _worker("mine", owner="acme"), _worker("theirs", owner="beta"), _worker("x", model="n")]
    assert [w.id for w in routing.visible(ws, "m", "acme")] == ["shared", "mine"]
    assert [w.id for w in routing.visible(ws, "m", "gamma")] == ["shared"]


@pytest.fixture
def second() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(MODEL)
    fake.start()
    yield fake
    fake.stop()


async def test_failover_when_a_replica_refuses_connections_and_return_after_recovery(
    gateway: Running, upstream: FakeUpstream, second: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream, worker_id="w1")
    await register(store, second, worker_id="w2")
    client = gateway.client(await gateway.onboard("acme"))
    upstream.stop()
    for stream in (False, True, False, True):
        answer = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
        if stream:
            assert [c async for c in answer]  # type: ignore[union-attr]
    assert len(second.state.requests) == 4
    metrics = (await gateway.admin.get("/metrics")).text
    assert f'shuqi_workers{{model="{MODEL}",state="unhealthy"}} 1.0' in metrics
    upstream.start()

    async def recovered() -> bool:
        text = (await gateway.admin.get("/metrics")).text
        return f'shuqi_workers{{model="{MODEL}",state="healthy"}} 2.0' in text

    await eventually(recovered)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(upstream.state.requests) == 1


async def test_all_replicas_down_is_503(gateway: Running, upstream: FakeUpstream, store: Stores) -> None:
    await register(store, upstream)
    client = gateway.client(await gateway.onboard("acme"))
    upstream.stop()
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.code == "model_unavailable"
    upstream.start()


async def test_private_deployment_serves_only_its_owner(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream, worker_id="priv", owner="acme", model="acme-tuned")
    acme = gateway.client(await gateway.onboard("acme"))
    beta = gateway.client(await gateway.onboard("beta"))
    done = await acme.chat.completions.create(model="acme-tuned", messages=MESSAGES)
    assert done.choices[0].message.content
    assert [m.id for m in (await acme.models.list()).data] == ["acme-tuned"]
    with pytest.raises(openai.NotFoundError) as info:
        await beta.chat.completions.create(model="acme-tuned", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert (await beta.models.list()).data == []


async def test_a_busy_replica_is_passed_over_for_an_idle_one(
    gateway: Running, upstream: FakeUpstream, second: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream, worker_id="w1")
    await register(store, second, worker_id="w2")
    client = gateway.client(await gateway.onboard("acme"))
    upstream.state.reply_tokens = second.state.reply_tokens = 20
    upstream.state.chunk_delay_s = second.state.chunk_delay_s = 0.05
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    busy, idle = (upstream, second) if upstream.state.streams_started else (second, upstream)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(idle.state.requests) == 1 and len(busy.state.requests) == 1
    assert [c async for c in stream]
