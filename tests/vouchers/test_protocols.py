"""The store stays split by concept: one small protocol per field of the bundle, each kept by both backends."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

from tests.conftest import _drop_namespace, store_url
from vouchers.factory import Stores, open_stores

MAX_METHODS = 12


def _protocols() -> dict[str, type]:
    hints = typing.get_type_hints(Stores)
    return {f.name: hints[f.name] for f in dataclasses.fields(Stores) if not f.name.startswith("_")}


def _members(protocol: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(protocol) if not name.startswith("_")}


def test_no_protocol_has_more_than_a_dozen_methods() -> None:
    sizes = {name: len(_members(protocol)) for name, protocol in _protocols().items()}
    assert sizes and max(sizes.values()) <= MAX_METHODS, sizes


async def test_each_backend_gives_every_part_all_of_its_protocol(backend: str, tmp_path: Path, namespace: str) -> None:
    stores = await open_stores(store_url(backend, tmp_path), data_dir=tmp_path, namespace=namespace)
    try:
        for name, protocol in _protocols().items():
            missing = _members(protocol) - set(dir(getattr(stores, name)))
            assert not missing, (name, missing)
    finally:
        await stores.close()
        if backend == "redis":
            await _drop_namespace(namespace)
