"""The admin's deployments: a model spec the scheduler places on GPU nodes, with a replica count."""

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
from vouchers.deployments import Deployment
from vouchers.errors import InvalidRequest, NotFound
from vouchers.keys import new_id
from vouchers.models import Price
from vouchers.units import parse_price

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=_NAME)]
    engine: Literal["llamacpp", "vllm"]
    model: Annotated[str, Field(min_length=1, max_length=1000)]
    gpus: Annotated[int, Field(ge=1, le=64)] = 1
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    owner: Annotated[str, Field(min_length=1, max_length=64)] = "shared"
    gpu_type: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    max_model_len: Annotated[int | None, Field(ge=1)] = None
    capacity: Annotated[int | None, Field(ge=1, le=1024)] = None
    input_per_1m: str | None = None  # a shared deployment's price, credits per 1M tokens
    output_per_1m: str | None = None


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _admin(request: Request) -> None:
    check_admin(request, gateway_of(request).admin_token)


def _shown(d: Deployment) -> dict[str, Any]:
    return wire.deployment(d)


async def create_deployment(request: Request, body: DeploymentIn) -> Response:
    """POST /admin/v1/deployments: 201, PENDING until the scheduler has placed every replica."""
    gw = gateway_of(request)
    owner = None if body.owner == "shared" else body.owner
    if owner is not None and await gw.stores.directory.get_startup(owner) is None:
        raise InvalidRequest(f"no startup {owner!r}", param="owner")
    nodes = await gw.scheduling.capacity() or []
    fits = [n for n in nodes if n.alive and n.gpus >= body.gpus and body.gpu_type in (None, n.gpu_type)]
    if nodes and not fits:
        raise InvalidRequest(f"no node has {body.gpus} GPUs{' of that type' if body.gpu_type else ''}",
                             param="gpu_type" if body.gpu_type else "gpus")
    if (body.input_per_1m is None) != (body.output_per_1m is None):
        raise InvalidRequest("set both input_per_1m and output_per_1m, or neither", param="input_per_1m")
    if body.input_per_1m is not None and body.output_per_1m is not None:
        try:
            price = Price(body.name, parse_price(body.input_per_1m), parse_price(body.output_per_1m))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="input_per_1m") from exc
        await gw.stores.catalog.set_price(price)
    d = Deployment(id=new_id("dep"), name=body.name, engine=body.engine, model=body.model, gpus=body.gpus,
                   replicas=body.replicas, created_at=gw.clock.now(), owner=owner, gpu_type=body.gpu_type,
                   max_model_len=body.max_model_len, capacity=body.capacity)
    await gw.stores.deployments.create_deployment(d)
    await gw.scheduling.touch()
    return _json(_shown(d), 201)


async def list_deployments(request: Request) -> Response:
    """GET /admin/v1/deployments."""
    found = await gateway_of(request).stores.deployments.list_deployments()
    return _json({"object": "list", "data": [_shown(d) for d in found]})


async def get_deployment(request: Request, deployment_id: str) -> Response:
    """GET /admin/v1/deployments/{id}."""
    d = await gateway_of(request).stores.deployments.get_deployment(deployment_id)
    if d is None:
        raise NotFound(f"No deployment {deployment_id!r}.")
    return _json(_shown(d))


async def delete_deployment(request: Request, deployment_id: str) -> Response:
    """DELETE /admin/v1/deployments/{id}: the scheduler stops its replicas and settles its GPU time."""
    gw = gateway_of(request)
    for _ in range(3):
        d = await gw.stores.deployments.get_deployment(deployment_id)
        if d is None:
            raise NotFound(f"No deployment {deployment_id!r}.")
        if d.state.is_final():
            return _json(_shown(d))
        asked = await gw.stores.deployments.update_deployment(d.id, d.state, {"stop_requested": True})
        if asked is not None:
            await gw.scheduling.touch()
            return _json(_shown(asked))
    raise InvalidRequest("the deployment kept changing; try again")


def router() -> APIRouter:
    r = APIRouter(prefix="/admin/v1", dependencies=[Depends(_admin)])
    r.add_api_route("/deployments", create_deployment, methods=["POST"])
    r.add_api_route("/deployments", list_deployments, methods=["GET"])
    r.add_api_route("/deployments/{deployment_id}", get_deployment, methods=["GET"])
    r.add_api_route("/deployments/{deployment_id}", delete_deployment, methods=["DELETE"])
    return r
