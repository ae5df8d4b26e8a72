"""House rules that can be checked: sorted `__all__` naming things that exist, and the public API."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import orchestra_nb

MODULES = sorted(m.name for m in pkgutil.walk_packages(orchestra_nb.__path__, "orchestra_nb.")
                 if "_generated" not in m.name)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    # the order ruff's RUF022 keeps: CONSTANTS, then Classes, then everything else, each alphabetical
    def key(n: str) -> tuple[int, str]:
        return (0 if n.isupper() else 1 if n[:1].isupper() else 2, n)

    assert list(exported) == sorted(exported, key=key), f"{name}.__all__ is not sorted"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes {missing}"


def test_public_api_resolves_lazily() -> None:
    for name in orchestra_nb.__all__:
        assert getattr(orchestra_nb, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = orchestra_nb.Nope  # type: ignore[attr-defined]
