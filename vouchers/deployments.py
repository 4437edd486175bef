"""Model deployments: a model spec placed on GPU nodes by the scheduler, with a replica count.

Rules every backend keeps (`tests/vouchers/test_deployment_store.py` runs on both):
- A deployment is created PENDING; ids are unique.
- Its state changes only by compare-and-set (`update` names the state it expects); STOPPED and FAILED are
  final. Asking a deployment to stop sets `stop_requested`; the scheduler stops its replicas, settles a
  private one's GPU time and moves it to STOPPED.
- A shared deployment (owner None) is paid per token from model vouchers, like any shared model; a
  startup's private deployment burns that startup's compute vouchers per GPU-second while it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

import orjson


class DeploymentState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    def is_final(self) -> bool:
        return self in (DeploymentState.STOPPED, DeploymentState.FAILED)


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str  # the model name clients ask for
    engine: str
    model: str
    gpus: int  # per replica
    replicas: int
    created_at: float
    owner: str | None = None  # None: shared by every startup
    gpu_type: str | None = None
    max_model_len: int | None = None
    capacity: int | None = None
    state: DeploymentState = DeploymentState.PENDING
    reason: str = ""
    stop_requested: bool = False
    hold_id: str | None = None  # a private deployment's rolling compute hold
    started_at: float | None = None
    stopped_at: float | None = None
    nodes: tuple[str, ...] = ()  # where its replicas run
    weight_milli: int = 1000
    charged_gpu_ms: int = 0
    charged_ms: int = 0

    def with_changes(self, changes: Mapping[str, object]) -> Deployment:
        return replace(self, **changes)  # type: ignore[arg-type]


def encode_deployment(d: Deployment) -> bytes:
    doc = {name: getattr(d, name) for name in Deployment.__dataclass_fields__}
    doc["state"] = d.state.value
    doc["nodes"] = list(d.nodes)
    return orjson.dumps(doc)


def decode_deployment(data: bytes | str) -> Deployment:
    doc = orjson.loads(data)
    doc["state"] = DeploymentState(doc["state"])
    doc["nodes"] = tuple(doc["nodes"])
    return Deployment(**doc)


class DeploymentStore(Protocol):
    async def create_deployment(self, deployment: Deployment) -> Deployment: ...

    async def get_deployment(self, deployment_id: str) -> Deployment | None: ...

    async def list_deployments(self, *, include_final: bool = True) -> list[Deployment]:
        """Deployments, oldest first."""
        ...

    async def update_deployment(self, deployment_id: str, expect: DeploymentState,
                                changes: Mapping[str, object]) -> Deployment | None:
        """Apply `changes` (a new `state` among them, or not) if the deployment is at `expect`; else None."""
        ...

