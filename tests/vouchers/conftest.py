"""Fixtures of the shared package's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import _drop_namespace, store_url
from vouchers.clock import ManualClock
from vouchers.factory import ClosableJobStore, open_job_store


@pytest.fixture
async def jobs(backend: str, tmp_path: Path, clock: ManualClock, namespace: str) -> AsyncIterator[ClosableJobStore]:
    s = await open_job_store(store_url(backend, tmp_path), data_dir=tmp_path, clock=clock, namespace=namespace)
    try:
        yield s
    finally:
        await s.close()
        if backend == "redis":
            await _drop_namespace(namespace)
