"""Shared fixtures: every test must leave no process of ours behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers import children_of, pid_alive, poll_for


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """After each test, every child process this test started must be gone."""
    before = set(children_of(os.getpid()))
    yield
    import orchestra_nb

    orchestra_nb.close_all()
    new = [p for p in children_of(os.getpid()) if p not in before]
    poll_for(lambda: not [p for p in new if pid_alive(p)], timeout=10, what=f"child processes {new} to exit")
