"""Fixtures of the shared package's tests."""

from __future__ import annotations

from typing import cast

import pytest

from vouchers.factory import Stores
from vouchers.jobs import JobRecords


@pytest.fixture
def jobs(store: Stores) -> JobRecords:
    """The scheduler's records on the backend under test: on both backends one object serves the bundle's
    `jobs`, `scheduling` and `deployments` parts."""
    assert store.jobs is store.scheduling is store.deployments
    return cast(JobRecords, store.jobs)
