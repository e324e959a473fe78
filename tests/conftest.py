"""pytest fixtures shared by the tests (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from helpers import compile_program, require_root_and_ig


@pytest.fixture(scope="session")
def program():
    return compile_program


@pytest.fixture(scope="session")
def ig_daemon(tmp_path_factory):
    """One real `ig daemon` (private socket) shared by the end-to-end tests."""
    require_root_and_ig()
    from igdeadlock.ig.daemon import PrivateDaemon, find_ig

    log = tmp_path_factory.mktemp("ig") / "daemon.log"
    daemon = PrivateDaemon(find_ig(), log_path=str(log))
    address = daemon.start()
    yield str(address)
    daemon.stop()
