"""MkDocs hook: render the YAML reference tables from the JSON Schema (`orchestra export schema`).

A page writes `<!-- schema: Flow.with -->` (a `$defs` entry, optionally followed by a property whose
object to list) and gets a table of keys, types and defaults generated at build time, so the page
cannot drift from what `load_config` accepts. tests/test_docs.py checks the tables list every key.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["on_page_markdown", "schema_table"]

_MARKER = re.compile(r"<!-- schema: ([A-Za-z]+)(?:\.([A-Za-z_]+))? -->")
_EXPRESSION_PATTERN = r"\$\{\{.*\}\}"


def _type(prop: dict[str, Any]) -> str:
    """A short type label: `int`, `list[str]`, `str or list[str]`, `Flow`, ..."""
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return " or ".join(json.dumps(v) for v in prop["enum"])
    options = prop.get("anyOf")
    if options:
        parts = [_type(o) for o in options if o.get("pattern") != _EXPRESSION_PATTERN]
        return " or ".join(dict.fromkeys(p for p in parts if p))
    kind = prop.get("type")
    if isinstance(kind, list):
        return " or ".join(_short(k) for k in kind)
    if kind == "array":
        items = prop.get("items") or {}
        return f"list[{_type(items) or 'any'}]"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"dict[str, {_type(values)}]" if isinstance(values, dict) else "mapping"
    return _short(kind) if kind else "any"


def _short(kind: Any) -> str:
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}.get(
        str(kind), str(kind))


def _default(prop: dict[str, Any]) -> str:
    for candidate in [prop, *prop.get("anyOf", [])]:
        if "default" in candidate:
            return f"`{json.dumps(candidate['default'])}`"
    return ""


def schema_table(schema: dict[str, Any], definition: str, member: str | None = None) -> str:
    """The Markdown table of one `$defs` object (or of its object-valued property `member`)."""
    try:
        obj = schema["$defs"][definition]
        if member is not None:
            obj = obj["properties"][member]
    except KeyError:
        raise ValueError(f"the schema has no {definition}{'.' + member if member else ''}; "
                         f"known definitions: {sorted(schema['$defs'])}") from None
    props = sorted(obj["properties"].items())
    described = any(prop.get("description") for _, prop in props)
    rows = ["| key | type | default |" + (" description |" if described else ""),
            "|---|---|---|" + ("---|" if described else "")]
    for key, prop in props:
        row = f"| `{key}` | `{_type(prop)}` | {_default(prop)} |"
        if described:
            row += " " + str(prop.get("description", "")).replace("|", "\\|").replace("\n", " ") + " |"
        rows.append(row)
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- schema:" not in markdown:
        return markdown
    from orchestra_nb.spec.schema import yaml_schema

    schema = yaml_schema()
    return _MARKER.sub(lambda m: schema_table(schema, m.group(1), m.group(2)), markdown)
