"""Fixtures of the shared package's tests."""

from __future__ import annotations

import pytest

from vouchers.factory import Stores
from vouchers.jobs import JobRecords


@pytest.fixture
def jobs(store: Stores) -> JobRecords:
    """The scheduler's records on the backend under test (opened with the rest of the store)."""
    return store.jobs
