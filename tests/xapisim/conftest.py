"""Shared fixtures: each test module serves its own simulator (``server``, sized for it);
``x`` is a logged-in session on whichever ``server`` the requesting module defines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from xapisim_helpers import login

import xapisim


@pytest.fixture(scope="module")
def x(server: xapisim.SimServer) -> Iterator[Any]:
    s = login(server)
    yield s.xenapi
    s.xenapi.session.logout()
