"""The join merge rule and the `when` condition language, as documented in their modules."""

from __future__ import annotations

import pytest

from orchestra_nb.errors import ConfigError
from orchestra_nb.runtime.merge import merge_docs, sort_matches
from orchestra_nb.runtime.when import compile_when


def test_merge_by_id_first_branch_wins_unset_fields_fill_in() -> None:
    a = [{"id": "1", "text": "from a", "tags": {"x": 1}}, {"id": "2", "text": "only a"}]
    b = [{"id": "1", "text": "from b", "embedding": [1, 2], "tags": {"x": 9, "y": 2}},
         {"id": "3", "text": "only b"}]
    merged = merge_docs([a, b])
    assert [d["id"] for d in merged] == ["1", "2", "3"]
    assert merged[0] == {"id": "1", "text": "from a", "embedding": [1, 2], "tags": {"x": 1, "y": 2}}


def test_merge_concatenates_matches_without_repeating_ids_and_sorts_by_score() -> None:
    a = [{"id": "q", "matches": [{"id": "m1", "scores": {"cos": 0.2}}]}]
    b = [{"id": "q", "matches": [{"id": "m1", "scores": {"cos": 0.2}}, {"id": "m2", "scores": {"cos": 0.9}}]}]
    [doc] = sort_matches(merge_docs([a, b]))
    assert [m["id"] for m in doc["matches"]] == ["m2", "m1"]


@pytest.mark.parametrize(("condition", "doc", "expected"), [
    ({"tags.lang": "en"}, {"tags": {"lang": "en"}}, True),
    ({"tags.lang": {"$eq": "en"}}, {"tags": {"lang": "de"}}, False),
    ({"tags.n": {"$gte": 2, "$lt": 5}}, {"tags": {"n": 3}}, True),
    ({"tags.n": {"$gt": 2}}, {"tags": {"n": "a string"}}, False),
    ({"tags.n": {"$in": [1, 2]}}, {"tags": {"n": 2}}, True),
    ({"tags.n": {"$nin": [1, 2]}}, {}, True),
    ({"uri": {"$exists": True}}, {"uri": "s3://x"}, True),
    ({"uri": {"$exists": False}}, {"uri": "s3://x"}, False),
    ({"text": {"$regex": "^urgent"}}, {"text": "urgent: call"}, True),
    ({"$or": [{"text": "a"}, {"text": "b"}]}, {"text": "b"}, True),
    ({"$and": [{"text": "a"}, {"tags.k": 1}]}, {"text": "a", "tags": {"k": 2}}, False),
    ({"$not": {"text": "a"}}, {"text": "a"}, False),
    ({"tags.missing.deeper": {"$ne": 1}}, {"tags": {}}, True),
])
def test_when_conditions(condition: dict, doc: dict, expected: bool) -> None:
    assert compile_when(condition)(doc) is expected


@pytest.mark.parametrize(("condition", "message"), [
    ({"tags.x": {"$like": 1}}, "unknown operator '\\$like'"),
    ({"$or": []}, "non-empty list"),
    ({"$gt": 1}, "cannot stand at the top"),
    ({"tags.x": {"$in": 3}}, "takes a list"),
    ("tags.x == 1", "must be a mapping"),
])
def test_bad_conditions_say_what_is_wrong(condition: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_when(condition)  # type: ignore[arg-type]


def test_a_bad_when_fails_when_the_flow_is_built() -> None:
    from orchestra_nb import Flow

    with pytest.raises(ConfigError, match="unknown operator"):
        Flow().add(name="a").add(name="b", when={"tags.x": {"$like": 1}})
