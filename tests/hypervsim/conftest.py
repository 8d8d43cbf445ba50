"""The hypervsim tests' shared fixture: ``w``, a pypsrp WSMan client of the module's
``server`` (each test module serves its own simulator, sized for its tests), first host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypervsim_helpers import client
from pypsrp.wsman import WSMan

import hypervsim


@pytest.fixture(scope="module")
def w(server: hypervsim.SimServer) -> Iterator[WSMan]:
    c = client(server)
    yield c
    c.close()
