"""What a job submission must satisfy and what it holds: pure rules the gateway applies before anything is held.

The scheduler publishes the cluster's capacity (`NodeInfo`, from Ray) in the store; the gateway checks a
request against it without talking to Ray. A job holds its worst case on the startup's compute vouchers:
gpus x max_runtime x the GPU type's weight, in weighted GPU-milliseconds. A request that names no GPU type
may land on any, so it holds at the heaviest weight among the types that could take it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from vouchers.errors import InvalidRequest

DEFAULT_GPU_TYPE = "default"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables that would let a job reach GPUs or a cluster it was not given.
_RESERVED_ENV_PREFIXES = ("CUDA_", "RAY_", "NVIDIA_")
MAX_ENV_VARS = 64
MAX_ENTRYPOINT = 10_000


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster as the scheduler last saw it in Ray."""

    node_id: str
    gpu_type: str
    gpus: int
    alive: bool = True


@dataclass(frozen=True)
class JobRequest:
    entrypoint: str
    gpus: int
    max_runtime_s: int
    gpu_type: str | None = None
    name: str = ""
    env: Mapping[str, str] | None = None


def parse_weights(text: str) -> dict[str, int]:
    """`"a100=2,t4=0.5"` -> milli-weights per GPU type (1000 = 1); the default type weighs 1 unless named."""
    weights = {DEFAULT_GPU_TYPE: 1000}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            milli = Decimal(value.strip()) * 1000
        except InvalidOperation as exc:
            raise ValueError(f"bad GPU weight {part!r}: want TYPE=NUMBER") from exc
        if not sep or not name.strip() or not milli.is_finite() or milli <= 0 or milli != milli.to_integral_value():
            raise ValueError(f"bad GPU weight {part!r}: want TYPE=NUMBER, positive, at most 3 decimals")
        weights[name.strip()] = int(milli)
    return weights


def weight_of(gpu_type: str, weights: Mapping[str, int]) -> int:
    return weights.get(gpu_type, weights.get(DEFAULT_GPU_TYPE, 1000))


def hold_ms(gpus: int, max_runtime_s: int, weight_milli: int) -> int:
    """Weighted GPU-milliseconds for `gpus` GPUs over `max_runtime_s` (exact: whole seconds, milli-weights)."""
    return gpus * max_runtime_s * weight_milli


def validate(request: JobRequest, nodes: Sequence[NodeInfo], *, max_runtime_s: int,
             weights: Mapping[str, int]) -> int:
    """Check a request against the cluster and the settings; the milli-weight it must hold at.

    Raises InvalidRequest naming the field.
    """
    if not request.entrypoint.strip() or len(request.entrypoint) > MAX_ENTRYPOINT:
        raise InvalidRequest(f"'entrypoint' must be a non-empty command of at most {MAX_ENTRYPOINT} characters",
                             param="entrypoint")
    if request.gpus <= 0:
        raise InvalidRequest("'gpus' must be at least 1", param="gpus")
    if not 0 < request.max_runtime_s <= max_runtime_s:
        raise InvalidRequest(f"'max_runtime_s' must be between 1 and {max_runtime_s} seconds", param="max_runtime_s")
    _check_env(request.env or {})
    live = [n for n in nodes if n.alive and n.gpus > 0]
    types = sorted({n.gpu_type for n in live})
    if request.gpu_type is not None and request.gpu_type not in types:
        raise InvalidRequest(f"unknown GPU type {request.gpu_type!r}; the cluster has {', '.join(types) or 'none'}",
                             param="gpu_type")
    fitting = [n for n in live if request.gpu_type in (None, n.gpu_type) and n.gpus >= request.gpus]
    if not fitting:
        largest = max((n.gpus for n in live if request.gpu_type in (None, n.gpu_type)), default=0)
        raise InvalidRequest(f"'gpus' is {request.gpus} but the largest node"
                             f"{' of that type' if request.gpu_type else ''} has {largest}: a job runs on one node",
                             param="gpus")
    return max(weight_of(n.gpu_type, weights) for n in fitting)


def _check_env(env: Mapping[str, str]) -> None:
    if len(env) > MAX_ENV_VARS:
        raise InvalidRequest(f"'env' may set at most {MAX_ENV_VARS} variables", param="env")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise InvalidRequest(f"'env' has an invalid variable name {name!r}", param="env")
        if name.upper().startswith(_RESERVED_ENV_PREFIXES):
            raise InvalidRequest(f"'env' may not set {name}: CUDA_*, NVIDIA_* and RAY_* are the scheduler's",
                                 param="env")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidRequest(f"'env' value of {name} must be a string", param="env")
