"""Model specs from the TOML config file (workers/models.toml, packaged) into `ModelSpec` records."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vouchers.models import Price
from vouchers.units import parse_price
from workers.engine import ModelSpec

SHARED = "shared"
_FIELDS = {
    "name",
    "engine",
    "model",
    "gpus",
    "owner",
    "input_per_1m",
    "output_per_1m",
    "max_model_len",
    "gpu_memory_utilization",
    "capacity",
    "extra_args",
}


@dataclass(frozen=True)
class ModelConfig:
    """Every spec by name, and the names `shuqi up` serves."""

    specs: dict[str, ModelSpec]
    up: tuple[str, ...]

    def get(self, name: str) -> ModelSpec:
        """The spec named `name`; KeyError naming the known ones if absent."""
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"no model {name!r} in the config; known: {', '.join(sorted(self.specs))}") from None


def default_config_text() -> str:
    """The packaged workers/models.toml."""
    return resources.files("workers").joinpath("models.toml").read_text(encoding="utf-8")


def load_config(path: Path | None = None) -> ModelConfig:
    """Load `path` (the caller's `SHUQI_MODELS` setting), else the packaged default; ValueError on a bad entry."""
    text = path.read_text(encoding="utf-8") if path is not None else default_config_text()
    return parse_config(text)


def parse_config(text: str) -> ModelConfig:
    """Parse the TOML text of a model config."""
    data = tomllib.loads(text)
    specs: dict[str, ModelSpec] = {}
    for entry in data.get("models", []):
        spec = spec_from_dict(entry)
        if spec.name in specs:
            raise ValueError(f"model {spec.name!r} is declared twice")
        specs[spec.name] = spec
    up = tuple(str(name) for name in data.get("up", []))
    unknown = [name for name in up if name not in specs]
    if unknown:
        raise ValueError(f"`up` names undeclared models: {unknown}")
    return ModelConfig(specs=specs, up=up)


def spec_from_dict(entry: dict[str, Any]) -> ModelSpec:
    """One `[[models]]` table into a spec, checking names, owner, GPUs and prices."""
    extra = set(entry) - _FIELDS
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)} in model {entry.get('name')!r}")
    for required in ("name", "engine", "model"):
        if not entry.get(required):
            raise ValueError(f"model entry lacks {required!r}: {entry}")
    owner = entry.get("owner", SHARED)
    fields = dict(entry)
    fields["owner"] = None if owner in (None, SHARED) else str(owner)
    fields["extra_args"] = tuple(str(arg) for arg in entry.get("extra_args", ()))
    for price_field in ("input_per_1m", "output_per_1m"):
        fields[price_field] = str(entry.get(price_field, "0"))
        parse_price(fields[price_field])
    spec = ModelSpec(**fields)
    if spec.gpus < 0 or spec.capacity < 1 or spec.max_model_len < 1:
        raise ValueError(f"model {spec.name!r}: gpus must be >= 0, capacity and max_model_len >= 1")
    return spec


def price_of(spec: ModelSpec) -> Price:
    """The spec's price as the store keeps it (micro-credits per million tokens)."""
    return Price(
        model=spec.name, input_per_1m=parse_price(spec.input_per_1m), output_per_1m=parse_price(spec.output_per_1m)
    )
