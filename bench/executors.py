"""Executors for the benchmarks (importable by replicas)."""

from __future__ import annotations

from typing import Any

from orchestra_nb import Doc, DocList, Executor, requests


class Noop(Executor):
    @requests
    def noop(self, docs: DocList[Doc]) -> None:
        return None


class Burn(Executor):
    """CPU-bound: a fixed amount of pure-Python work per doc."""

    @requests
    def burn(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        n = int(parameters.get("n", 200_000))
        for d in docs:
            total = 0
            for i in range(n):
                total += i * i
            d.tags["total"] = total
