"""`when`: a small condition language that filters which docs enter a branch.

A condition is a mapping from a field path to a test, in the style of MongoDB queries::

    when={'tags.lang': {'$eq': 'en'}}
    when={'$or': [{'tags.score': {'$gte': 0.5}}, {'text': {'$regex': '^urgent'}}]}

Paths are dotted (`tags.lang`, `text`, `uri`). Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists
$regex`; combinators `$and $or $not`. A bare value means `$eq`. Several keys in one mapping must all hold.
Conditions are data, compiled once; nothing is evaluated as code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from orchestra_nb.errors import ConfigError

__all__ = ["compile_when"]

Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()


def _get(doc: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _cmp(op: str, arg: Any) -> Callable[[Any], bool]:
    def safe(f: Callable[[Any], bool]) -> Callable[[Any], bool]:
        def run(v: Any) -> bool:
            if v is _MISSING:
                return False
            try:
                return bool(f(v))
            except TypeError:
                return False
        return run

    import operator

    binary: dict[str, Callable[[Any, Any], Any]] = {
        "$eq": operator.eq, "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
    if op in binary:
        compare = binary[op]
        return safe(lambda v: compare(v, arg))
    if op == "$ne":
        return lambda v: v is _MISSING or v != arg
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise ConfigError(f"when: {op} takes a list, got {arg!r}")
        return safe(lambda v: v in arg) if op == "$in" else (lambda v: v is _MISSING or v not in arg)
    if op == "$exists":
        return lambda v: (v is not _MISSING and v is not None) == bool(arg)
    if op == "$regex":
        if not isinstance(arg, str):
            raise ConfigError(f"when: $regex takes a string, got {arg!r}")
        pattern = re.compile(arg)
        return lambda v: isinstance(v, str) and pattern.search(v) is not None
    raise ConfigError(f"when: unknown operator {op!r}; use one of $eq $ne $gt $gte $lt $lte $in $nin "
                      "$exists $regex, or $and $or $not")


def _combine(parts: list[Predicate], how: Callable[[Any], bool]) -> Predicate:
    def check(doc: dict[str, Any]) -> bool:
        return how(p(doc) for p in parts)
    return check


def _negate(inner: Predicate) -> Predicate:
    def check(doc: dict[str, Any]) -> bool:
        return not inner(doc)
    return check


def _field(path: list[str], checks: list[Callable[[Any], bool]]) -> Predicate:
    def check(doc: dict[str, Any]) -> bool:
        value = _get(doc, path)
        return all(c(value) for c in checks)
    return check


def compile_when(condition: dict[str, Any]) -> Predicate:
    """Compile a condition mapping into a predicate over a doc (as a plain dict)."""
    if not isinstance(condition, dict):
        raise ConfigError(f"when must be a mapping like {{'tags.lang': {{'$eq': 'en'}}}}, got {condition!r}")
    tests: list[Predicate] = []
    for key, value in condition.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise ConfigError(f"when: {key} takes a non-empty list of conditions")
            tests.append(_combine([compile_when(v) for v in value], all if key == "$and" else any))
        elif key == "$not":
            tests.append(_negate(compile_when(value)))
        elif key.startswith("$"):
            raise ConfigError(f"when: {key!r} cannot stand at the top of a condition; use $and, $or or $not")
        else:
            ops = value if isinstance(value, dict) and value and all(k.startswith("$") for k in value) else {"$eq": value}
            tests.append(_field(key.split("."), [_cmp(op, arg) for op, arg in ops.items()]))
    return _combine(tests, all)
