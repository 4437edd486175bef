"""The admin API, the founder's balance and usage, /metrics read from the store, and /healthz."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway.conftest import MODEL, Running, register
from tests.gateway.fake_upstream import FakeUpstream
from vouchers.clock import ManualClock
from vouchers.factory import Stores
from vouchers.settings import GatewaySettings

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three"}]


async def test_balance_usage_and_vouchers_through_both_apis(
    gateway: Running, upstream: FakeUpstream, store: Stores, clock: ManualClock
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "0", "1000000")
    key = await gateway.onboard("acme", "10")
    r = await gateway.admin.post("/admin/v1/startups/acme/vouchers",
                                 json={"kind": "compute", "amount": "2.5", "expires_at": "2030-01-01T00:00:00Z",
                                       "priority": 1, "note": "pilot"})
    assert r.status_code == 201
    compute = r.json()
    assert compute["amount"] == "2.5" and compute["expires_at"] == "2030-01-01T00:00:00Z"
    client = gateway.client(key)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    async with httpx.AsyncClient(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}) as founder:
        mine = (await founder.get("/v1/balance")).json()
        usage = (await founder.get("/v1/usage", params={"since": "2020-01-01T00:00:00Z"})).json()["data"]
        later = (await founder.get("/v1/usage", params={"since": str(clock.now() + 10)})).json()["data"]
        bad = await founder.get("/v1/usage", params={"until": "yesterday"})
    assert mine["model"] == {"granted": "10", "spent": "3", "held": "0", "remaining": "7", "unit": "credits"}
    assert mine["compute"]["granted"] == "2.5" and mine["compute"]["unit"] == "gpu-hours"
    assert len(mine["vouchers"]) == 2
    assert len(usage) == 1 and usage[0]["model"] == MODEL and usage[0]["amount"] == "3"
    assert usage[0]["completion_tokens"] == 3 and usage[0]["time"].endswith("Z")
    assert later == []
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "until"
    model_voucher = next(v for v in mine["vouchers"] if v["kind"] == "model")
    voided = await gateway.admin.post(f"/admin/v1/vouchers/{model_voucher['id']}/void")
    assert voided.status_code == 200 and voided.json()["voided_at"] is not None
    assert (await gateway.balance("acme"))["granted"] == "0"  # a voided voucher is no longer in force
    bad_amount = await gateway.admin.post("/admin/v1/startups/acme/vouchers", json={"kind": "model", "amount": "-1"})
    assert bad_amount.status_code == 400 and bad_amount.json()["error"]["param"] == "amount"
    missing = await gateway.admin.post("/admin/v1/startups/nobody/vouchers", json={"kind": "model", "amount": "1"})
    assert missing.status_code == 404


async def test_metrics_report_the_ledger_from_the_store(
    gateway: Running, upstream: FakeUpstream, store: Stores
) -> None:
    await register(store, upstream)
    await gateway.set_price(MODEL, "1000000", "1000000")
    key = await gateway.onboard("acme", "1000")
    await gateway.admin.post("/admin/v1/startups/acme/vouchers",
                             json={"kind": "compute", "amount": "1", "expires_at": 1_900_000_000})
    await gateway.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    text = (await gateway.admin.get("/metrics")).text
    lines = set(text.splitlines())
    assert 'shuqi_credits_granted{startup="acme"} 1000.0' in lines
    assert 'shuqi_credits_remaining{startup="acme"} 992.0' in lines  # 6 prompt + 2 completion tokens
    assert 'shuqi_credits_held{startup="acme"} 0.0' in lines
    assert f'shuqi_credits_spent_total{{model="{MODEL}",startup="acme"}} 8.0' in lines
    assert f'shuqi_tokens_total{{model="{MODEL}",startup="acme",type="prompt"}} 6.0' in lines
    assert f'shuqi_tokens_total{{model="{MODEL}",startup="acme",type="completion"}} 2.0' in lines
    assert 'shuqi_gpu_seconds_granted{startup="acme"} 3600.0' in lines
    assert any(line.startswith('shuqi_voucher_expiry_timestamp_seconds{kind="compute",startup="acme",voucher="')
               and line.endswith(" 1.9e+09") for line in lines)
    assert f'shuqi_requests_total{{code="200",model="{MODEL}",startup="acme"}} 1.0' in lines
    assert f'shuqi_gateway_overhead_seconds_count{{model="{MODEL}"}} 1.0' in lines


async def test_generated_admin_token_is_written_mode_600(tmp_path: Path) -> None:
    settings = GatewaySettings(data_dir=tmp_path / "data", admin_token=None)
    token = settings.resolve_admin_token()
    path = tmp_path / "data" / "admin-token"
    assert path.read_text().strip() == token and len(token) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert GatewaySettings(data_dir=tmp_path / "data", admin_token=None).resolve_admin_token() == token
    assert GatewaySettings(data_dir=tmp_path / "data", admin_token="set").resolve_admin_token() == "set"
