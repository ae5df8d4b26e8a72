"""Shared fixtures: every test must leave no process of ours behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers import children_of, pid_alive, poll_for


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """After each test, every orchestration and child process that this test started must be gone.

    Wider-scoped fixtures are set up before this one, so what they started is left alone.
    """
    from orchestra_nb.orchestration import registry

    before = set(children_of(os.getpid()))
    running_before = {id(o) for o in registry.running()}
    yield
    for orch in registry.running():
        if id(orch) not in running_before:
            orch.close()
    new = [p for p in children_of(os.getpid()) if p not in before]
    poll_for(lambda: not [p for p in new if pid_alive(p)], timeout=10, what=f"child processes {new} to exit")
