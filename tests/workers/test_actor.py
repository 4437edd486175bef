"""The worker as a Ray actor on logical GPUs, serving the real SmolLM2 through the gateway.

The gateway is the real one (uvicorn on a free port, same SQLite ledger); the client is the openai SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from vouchers.factory import Stores
from vouchers.units import token_cost
from workers.actor import launch
from workers.service import WorkerSettings, WorkerState
from workers.specs import price_of

from .conftest import running_gateway, smollm2, startup_with_key

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MODEL = "smollm2-135m-gpu"


async def test_gpu_worker_lands_on_a_logical_gpu_and_the_gateway_charges_its_usage(
    ray_cluster: None, system_store: Stores, ledger_url: str, worker_settings: WorkerSettings, tmp_path: Path
) -> None:
    spec = smollm2(MODEL, gpus=1)
    await system_store.catalog.set_price(price_of(spec))
    handle: Any = launch(spec, worker_settings, num_cpus=0)
    status = await handle.start.remote()
    try:
        assert status.state is WorkerState.READY
        assert status.env.get("CUDA_VISIBLE_DEVICES") in {"0", "1", "2", "3"}
        [record] = await system_store.registry.list_workers(MODEL)
        assert record.url == status.url

        startup, secret = await startup_with_key(system_store, 10_000_000)
        async with running_gateway(tmp_path, ledger_url) as base_url:
            client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=secret, max_retries=0, timeout=120)
            messages: Any = [{"role": "user", "content": "Name a colour."}]
            reply = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=12, temperature=0
            )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens > 0

            stream = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
            text, streamed_tokens, streamed_usage = "", 0, None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    streamed_tokens += 1  # llama.cpp streams one token per chunk
                if chunk.usage is not None:
                    streamed_usage = chunk.usage
            await client.close()
        # The same prompt both ways counts the same prompt tokens. The replies may differ even at
        # temperature 0: the second request reuses llama.cpp's prompt cache, whose sums round differently.
        assert text and streamed_usage is not None and streamed_usage.completion_tokens == streamed_tokens
        assert streamed_usage.prompt_tokens == reply.usage.prompt_tokens

        price = price_of(spec)
        lines = await system_store.journal.journal(startup)
        assert [(line.ref.prompt_tokens, line.ref.completion_tokens) for line in lines] == [
            (u.prompt_tokens, u.completion_tokens) for u in (reply.usage, streamed_usage)
        ]
        expected = [
            token_cost(u.prompt_tokens, u.completion_tokens, price.input_per_1m, price.output_per_1m)
            for u in (reply.usage, streamed_usage)
        ]
        assert [line.amount for line in lines] == expected
        balance = await system_store.ledger.balance(startup)
        assert balance.model.spent == sum(expected) > 0 and balance.model.held == 0
    finally:
        stopped = await handle.stop.remote()
    assert stopped.state is WorkerState.STOPPED
    assert await system_store.registry.list_workers(MODEL) == []
