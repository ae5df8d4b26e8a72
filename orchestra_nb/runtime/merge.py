"""Merging documents: joins in a Flow and shard reduces (polling ALL).

The rule, documented for users: documents are matched by `id`, in the order they first appear. For each
field, a value set by a later branch fills a field the earlier one left unset (absent, None or empty);
when both set it, the first branch in `needs` order wins — except `matches`, which are concatenated
(without repeating an id), and `tags` and `scores`, which are merged key by key the same way. After a
shard reduce, matches are re-sorted by score, highest first, when they carry scores (the first score
name of the first match decides).
"""

from __future__ import annotations

from typing import Any

__all__ = ["merge_docs", "sort_matches"]


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, (list, dict, str, bytes)) and len(value) == 0)


def _merge_one(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        if key == "matches" and isinstance(value, list):
            current = base.get("matches") or []
            seen = {m.get("id") for m in current if isinstance(m, dict)}
            base["matches"] = current + [m for m in value if not (isinstance(m, dict) and m.get("id") in seen)]
        elif key in ("tags", "scores") and isinstance(value, dict) and isinstance(base.get(key), dict):
            merged = dict(base[key])
            for k, v in value.items():
                if k not in merged or _unset(merged[k]):
                    merged[k] = v
            base[key] = merged
        elif key not in base or _unset(base[key]):
            base[key] = value
    return base


def merge_docs(branches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge the docs of several branches by id (see the module docstring for the rule)."""
    merged: dict[str, dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for docs in branches:
        for doc in docs:
            key = doc.get("id")
            if not isinstance(key, str):
                anonymous.append(dict(doc))
            elif key in merged:
                _merge_one(merged[key], doc)
            else:
                merged[key] = dict(doc)
    return list(merged.values()) + anonymous


def sort_matches(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for doc in docs:
        matches = doc.get("matches")
        if not matches or not isinstance(matches, list):
            continue
        first = next((m.get("scores") for m in matches if isinstance(m, dict) and m.get("scores")), None)
        if not first:
            continue
        name = next(iter(first))

        def score(m: Any, name: str = name) -> float:
            value = m.get("scores", {}).get(name) if isinstance(m, dict) else None
            return float(value) if isinstance(value, (int, float)) else float("-inf")

        doc["matches"] = sorted(matches, key=score, reverse=True)
    return docs
