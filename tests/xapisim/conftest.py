"""Shared fixtures: each test module serves its own simulator (``server``, sized for it);
``x`` is a logged-in session on whichever ``server`` the requesting module defines."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from xapisim_helpers import login

import xapisim

# Every cached encoded record is compared with a fresh encoding on each use: a change to an
# object that is not followed by an event for it (and so leaves a stale cache entry) fails
# the call with INTERNAL_ERROR.
os.environ.setdefault("XAPISIM_CHECK_CACHE", "1")


@pytest.fixture(scope="module")
def x(server: xapisim.SimServer) -> Iterator[Any]:
    s = login(server)
    yield s.xenapi
    s.xenapi.session.logout()
