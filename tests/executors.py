"""Executors used by the tests. Kept in a light module: replicas import it by reference."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np

from orchestra_nb import Doc, DocList, Executor, requests


class Tagger(Executor):
    """Records which executor and process saw each doc."""

    def __init__(self, label: str = "", **kwargs: Any) -> None:
        self.label = label or self.runtime_args.name

    @requests
    def tag(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        for d in docs:
            d.tags.setdefault("path", [])
            d.tags["path"] = [*d.tags["path"], self.label]
            d.tags["pid"] = os.getpid()
            d.tags[f"seen_{self.label}"] = True


class Upper(Executor):
    @requests(on="/upper")
    def upper(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = (d.text or "").upper()

    @requests(on=["/a", "/b"])
    async def both(self, docs: DocList[Doc], parameters: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"count": len(docs), "echo": parameters.get("x")}


class Failing(Executor):
    @requests(on="/fail")
    def fail(self, docs: DocList[Doc]) -> None:
        raise ValueError("bad document on purpose")

    @requests(on="/ok")
    def ok(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = "ok"


class BrokenInit(Executor):
    def __init__(self, **kwargs: Any) -> None:
        raise RuntimeError("cannot load the model: weights missing")


class Echo(Executor):
    @requests
    def echo(self, docs: DocList[Doc]) -> None:
        return None


class Scale(Executor):
    """Multiplies tensors by a factor; used for arrays round trips."""

    def __init__(self, factor: float = 1.0, **kwargs: Any) -> None:
        self.factor = factor

    @requests(on="/scale")
    def scale(self, docs: DocList[Doc]) -> None:
        for d in docs:
            if d.tensor is not None and self.factor != 1.0:
                d.tensor = d.tensor * self.factor


class MyDoc(Doc):
    title: str
    score: float = 0.0


class Typed(Executor):
    @requests(on="/typed")
    def typed(self, docs: DocList[MyDoc]) -> DocList[MyDoc]:
        return DocList(MyDoc(id=d.id, title=d.title.title(), score=len(d.title)) for d in docs)


class Matcher(Executor):
    """Each shard adds matches with scores; used to test ALL reduce."""

    @requests(on="/search")
    def search(self, docs: DocList[Doc]) -> None:
        shard = self.runtime_args.shard_id
        for d in docs:
            d.matches = [Doc(id=f"m{shard}-{i}", scores={"cos": float(shard * 10 + i)}) for i in range(2)]
            d.tags[f"shard{shard}"] = os.getpid()

    @requests(on="/which")
    def which(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.tags["shard"] = self.runtime_args.shard_id


class Embed(Executor):
    @requests
    def embed(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.embedding = np.arange(4, dtype=np.float32) * len(d.text or "")


class Slow(Executor):
    @requests(on="/slow")
    async def slow(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        await asyncio.sleep(float(parameters.get("seconds", 1.0)))


class Closer(Executor):
    def __init__(self, path: str = "", **kwargs: Any) -> None:
        self.path = path

    @requests
    def noop(self, docs: DocList[Doc]) -> None:
        return None

    def close(self) -> None:
        with open(self.path, "w") as f:
            f.write(f"closed {self.runtime_args.name}/{self.runtime_args.replica_id}")


class Concurrency(Executor):
    """Reports the most requests it has seen in flight at once."""

    def __init__(self, **kwargs: Any) -> None:
        self.now = 0
        self.most = 0

    @requests
    async def hold(self, docs: DocList[Doc], parameters: dict[str, Any]) -> dict[str, Any]:
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(float(parameters.get("seconds", 0.05)))
        self.now -= 1
        return {"most": self.most}


class SqliteStore(Executor):
    """Uses a sqlite connection made in __init__: it only works from the thread that made it."""

    def __init__(self, **kwargs: Any) -> None:
        import sqlite3

        self.db = sqlite3.connect(":memory:")
        self.db.execute("create table t (text)")

    @requests
    def store(self, docs: DocList[Doc]) -> dict[str, Any]:
        self.db.executemany("insert into t values (?)", [(d.text,) for d in docs])
        (count,) = self.db.execute("select count(*) from t").fetchone()
        return {"count": count}

    def close(self) -> None:
        self.db.close()


class Stat(Executor):
    """Serves endpoints named like the gateway's own HTTP routes (core audit)."""

    @requests(on="/status")
    def status(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = "status-handler"

    @requests(on="/post")
    def post(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = "post-handler"


class Params(Executor):
    """Records, under its own name, the parameters it was called with (core audit)."""

    @requests
    def record(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        for d in docs:
            d.tags[self.runtime_args.name] = dict(parameters)
