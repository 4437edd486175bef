"""The admin API (`Authorization: Bearer <admin token>`): startups, keys, vouchers, prices and limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from gateway import wire
from gateway.auth import check_admin
from gateway.context import gateway_of
from vouchers.errors import InvalidRequest, NotFound
from vouchers.keys import hash_secret, new_id, new_secret
from vouchers.models import ApiKey, Limits, Price
from vouchers.units import Kind, parse_amount, parse_price

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartupIn(_Body):
    id: Annotated[str, Field(pattern=_ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=200)]


class KeyIn(_Body):
    name: Annotated[str, Field(max_length=200)] = ""


class VoucherIn(_Body):
    kind: Literal["model", "compute"]
    amount: str | int | float
    expires_at: str | int | float | None = None
    effective_at: str | int | float | None = None
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    note: Annotated[str, Field(max_length=1000)] = ""


class PriceIn(_Body):
    input_per_1m: str | int | float
    output_per_1m: str | int | float


class LimitsIn(_Body):
    rpm: Annotated[int | None, Field(ge=1)] = None
    tpm: Annotated[int | None, Field(ge=1)] = None
    max_gpus: Annotated[int | None, Field(ge=1)] = None
    max_queued_jobs: Annotated[int | None, Field(ge=1)] = None


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _admin(request: Request) -> None:
    check_admin(request, gateway_of(request).admin_token)


async def create_startup(request: Request, body: StartupIn) -> Response:
    """POST /admin/v1/startups: 201, or 409 when the id exists."""
    s = await gateway_of(request).stores.directory.create_startup(body.id, body.name)
    return _json(wire.startup(s), 201)


async def list_startups(request: Request) -> Response:
    """GET /admin/v1/startups."""
    startups = await gateway_of(request).stores.directory.list_startups()
    return _json({"object": "list", "data": [wire.startup(s) for s in startups]})


async def create_key(request: Request, startup_id: str, body: KeyIn | None = None) -> Response:
    """POST /admin/v1/startups/{id}/keys: the secret is in this answer and nowhere else, ever."""
    gw = gateway_of(request)
    secret = new_secret()
    key = ApiKey(id=new_id("key"), startup_id=startup_id, name=body.name if body else "",
                 key_hash=hash_secret(secret), prefix=secret[:12], created_at=gw.clock.now())
    stored = await gw.stores.directory.add_key(key)
    return _json({**wire.api_key(stored), "key": secret}, 201)


async def list_keys(request: Request, startup_id: str) -> Response:
    """GET /admin/v1/startups/{id}/keys: the key records, without secrets."""
    gw = gateway_of(request)
    if await gw.stores.directory.get_startup(startup_id) is None:
        raise NotFound(f"No startup {startup_id!r}.", param="id")
    keys = await gw.stores.directory.list_keys(startup_id)
    return _json({"object": "list", "data": [wire.api_key(k) for k in keys]})


async def revoke_key(request: Request, key_id: str) -> Response:
    """DELETE /admin/v1/keys/{key_id}: the key stops working at once."""
    await gateway_of(request).stores.directory.revoke_key(key_id)
    return Response(status_code=204)


def _amount(value: str | int | float, kind: Kind, param: str) -> int:
    try:
        units = parse_amount(value, kind)
    except ValueError as exc:
        raise InvalidRequest(f"'{param}': {exc}", param=param) from exc
    return units


async def grant_voucher(request: Request, startup_id: str, body: VoucherIn) -> Response:
    """POST /admin/v1/startups/{id}/vouchers: 201 voucher."""
    kind = Kind(body.kind)
    amount = _amount(body.amount, kind, "amount")
    if amount <= 0:
        raise InvalidRequest("'amount' must be greater than zero", param="amount")
    expires = wire.parse_time(body.expires_at, "expires_at") if body.expires_at is not None else None
    effective = wire.parse_time(body.effective_at, "effective_at") if body.effective_at is not None else None
    ledger = gateway_of(request).stores.ledger
    v = await ledger.grant(startup_id, kind, amount, effective_at=effective, expires_at=expires,
                                              priority=body.priority, note=body.note)
    return _json(wire.voucher(v), 201)


async def void_voucher(request: Request, voucher_id: str) -> Response:
    """POST /admin/v1/vouchers/{id}/void."""
    return _json(wire.voucher(await gateway_of(request).stores.ledger.void_voucher(voucher_id)))


async def startup_balance(request: Request, startup_id: str) -> Response:
    """GET /admin/v1/startups/{id}/balance."""
    gw = gateway_of(request)
    if await gw.stores.directory.get_startup(startup_id) is None:
        raise NotFound(f"No startup {startup_id!r}.", param="id")
    await gw.settled(startup_id)
    return _json(wire.balance(await gw.stores.ledger.balance(startup_id)))


async def set_price(request: Request, model: str, body: PriceIn) -> Response:
    """PUT /admin/v1/prices/{model}: credits per million tokens."""
    gw = gateway_of(request)
    values: dict[str, int] = {}
    for param in ("input_per_1m", "output_per_1m"):
        try:
            values[param] = parse_price(getattr(body, param))
        except ValueError as exc:
            raise InvalidRequest(f"'{param}': {exc}", param=param) from exc
    price = await gw.stores.catalog.set_price(Price(model=model, **values))
    gw.lookups.forget_price(model)
    return _json(wire.price(price))


async def list_prices(request: Request) -> Response:
    """GET /admin/v1/prices."""
    prices = await gateway_of(request).stores.catalog.list_prices()
    return _json({"object": "list", "data": [wire.price(p) for p in prices]})


async def set_limits(request: Request, startup_id: str, body: LimitsIn) -> Response:
    """PUT /admin/v1/startups/{id}/limits: requests and tokens per minute, GPUs in use and jobs queued at once;
    null means no limit."""
    gw = gateway_of(request)
    if await gw.stores.directory.get_startup(startup_id) is None:
        raise NotFound(f"No startup {startup_id!r}.", param="id")
    limits = await gw.stores.catalog.set_limits(startup_id, Limits(rpm=body.rpm, tpm=body.tpm, max_gpus=body.max_gpus,
                                                                                max_queued_jobs=body.max_queued_jobs))
    gw.lookups.forget_limits(startup_id)
    return _json(wire.limits(limits))


async def get_limits(request: Request, startup_id: str) -> Response:
    """GET /admin/v1/startups/{id}/limits."""
    return _json(wire.limits(await gateway_of(request).stores.catalog.get_limits(startup_id)))


def router() -> APIRouter:
    """The admin routes, all behind the admin token."""
    r = APIRouter(prefix="/admin/v1", dependencies=[Depends(_admin)])
    routes: list[tuple[str, Any, str, int]] = [
        ("/startups", create_startup, "POST", 201),
        ("/startups", list_startups, "GET", 200),
        ("/startups/{startup_id}/keys", create_key, "POST", 201),
        ("/startups/{startup_id}/keys", list_keys, "GET", 200),
        ("/keys/{key_id}", revoke_key, "DELETE", 204),
        ("/startups/{startup_id}/vouchers", grant_voucher, "POST", 201),
        ("/vouchers/{voucher_id}/void", void_voucher, "POST", 200),
        ("/startups/{startup_id}/balance", startup_balance, "GET", 200),
        ("/prices/{model:path}", set_price, "PUT", 200),
        ("/prices", list_prices, "GET", 200),
        ("/startups/{startup_id}/limits", set_limits, "PUT", 200),
        ("/startups/{startup_id}/limits", get_limits, "GET", 200),
    ]
    for path, endpoint, method, status in routes:
        r.add_api_route(path, endpoint, methods=[method], status_code=status)
    return r
