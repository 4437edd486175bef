"""The worker on the real SmolLM2 (llama.cpp): registers while healthy, leaves routing when its engine dies,
restarts it, and reports FAILED when the engine cannot start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from vouchers.factory import Stores
from workers.engines import get_engine
from workers.service import WorkerService, WorkerSettings, WorkerState

from .conftest import smollm2, wait_until

pytestmark = pytest.mark.slow


async def _streamed_usage(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> object:
    """The usage of the last chunk of a streamed request (every earlier chunk carries a choice)."""
    events = []
    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    assert all(event["choices"] for event in events[:-1])
    assert events[-1]["choices"] == []
    return events[-1]["usage"]


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


async def test_worker_registers_serves_and_deregisters(system_store: Stores, worker_settings: WorkerSettings) -> None:
    service = WorkerService(smollm2(), get_engine("llamacpp"), worker_settings)
    status = await service.start()
    try:
        assert status.state is WorkerState.READY
        [record] = await system_store.registry.list_workers("smollm2-135m")
        assert (record.id, record.url, record.engine) == (status.worker_id, status.url, "llamacpp")
        assert record.tokenize_path == "/extras/tokenize" and record.context_length == 1024
        async with httpx.AsyncClient(base_url=record.url, timeout=60) as client:
            models = (await client.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["smollm2-135m"]
            chat = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8,
                    "temperature": 0}
            reply = await client.post("/v1/chat/completions", json=chat)
            assert reply.status_code == 200
            usage = reply.json()["usage"]
            assert usage["completion_tokens"] > 0
            # llama-cpp-python alone sends no usage on streams; the worker's launcher adds the engine's count.
            assert await _streamed_usage(client, "/v1/chat/completions", chat) == usage
            text = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
            text_usage = (await client.post("/v1/completions", json=text)).json()["usage"]
            assert await _streamed_usage(client, "/v1/completions", text) == text_usage
    finally:
        stopped = await service.stop()
    assert stopped.state is WorkerState.STOPPED
    assert await system_store.registry.list_workers("smollm2-135m") == []
    assert status.pid is not None and _gone(status.pid)


async def test_killed_engine_leaves_routing_within_the_ttl_and_comes_back(
    system_store: Stores, worker_settings: WorkerSettings
) -> None:
    service = WorkerService(smollm2(), get_engine("llamacpp"), worker_settings)
    first = await service.start()
    try:
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)

        async def gone() -> bool:
            return not await system_store.registry.list_workers("smollm2-135m")

        took = await wait_until(gone, timeout_s=worker_settings.heartbeat_ttl_s)
        assert took < worker_settings.heartbeat_ttl_s

        async def back() -> bool:
            return bool(await system_store.registry.list_workers("smollm2-135m"))

        await wait_until(back, timeout_s=60)
        again = service.status()
        assert again.state is WorkerState.READY and again.restarts == 1
        assert again.last_exit == -signal.SIGKILL and again.pid not in (None, first.pid)
        [record] = await system_store.registry.list_workers("smollm2-135m")
        assert record.url == again.url
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(record.url + "/v1/models")).status_code == 200
    finally:
        await service.stop()


async def test_engine_that_cannot_start_is_reported_failed(
    system_store: Stores, worker_settings: WorkerSettings, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    service = WorkerService(smollm2(model=str(bad)), get_engine("llamacpp"), worker_settings)
    with pytest.raises(RuntimeError, match="did not become healthy"):
        await service.start()
    status = service.status()
    assert status.state is WorkerState.FAILED
    assert status.restarts == worker_settings.max_restarts and status.last_exit not in (None, 0)
    assert await system_store.registry.list_workers() == []


async def test_probes_during_a_stream_answer_at_once_and_do_not_cut_it(
    system_store: Stores, worker_settings: WorkerSettings
) -> None:
    service = WorkerService(smollm2(), get_engine("llamacpp"), worker_settings)
    status = await service.start()
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Write the numbers from 1 to 500, separated by commas."}],
        "max_tokens": 120,
        "temperature": 0,  # greedy: this prompt then always runs to max_tokens
        "stream": True,
    }
    try:
        async with httpx.AsyncClient(base_url=status.url or "", timeout=120) as client:
            chunks, finish, probe_s = 0, None, None
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    choices = json.loads(line[6:])["choices"] if line.startswith("data: {") else []
                    if not choices:
                        continue  # keep-alives, [DONE], and the final usage chunk
                    choice = choices[0]
                    chunks += 1
                    finish = choice.get("finish_reason") or finish
                    if chunks == 5:
                        # What the gateway does meanwhile: count the next request's prompt (this waits
                        # for the model lock) and probe health (this must not wait).
                        tokenize = asyncio.create_task(
                            client.post("/extras/tokenize", json={"model": "smollm2-135m", "input": "hello"})
                        )
                        probe = await client.get(get_engine("llamacpp").health_path, timeout=2)
                        assert probe.status_code == 200
                        probe_s = probe.elapsed.total_seconds()
            assert (await tokenize).json()["tokens"]
        assert probe_s is not None and probe_s < 1.0
        assert finish == "length" and chunks >= 100
    finally:
        await service.stop()
