"""Fixtures every security test module shares; each module starts its own ``platform``."""

import pytest

from tests.support.fault_helpers import Database


@pytest.fixture(scope="module")
def db(platform):
    """SQL on the module's platform database (reads, and the forgeries tests write)."""
    database = Database(platform.db_uri)
    yield database
    database.dispose()
