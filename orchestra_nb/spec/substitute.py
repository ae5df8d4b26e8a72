"""`${{ ENV.X }}` and `${{ CONTEXT.X }}` substitution in YAML scalars.

Substitution runs on parsed scalar values, not on the raw text, so it cannot break YAML syntax (a value
holding a colon or a quote stays one scalar) and every error points at the scalar's own line and column.
A scalar that is nothing but one expression takes the value's own type when it comes from `CONTEXT`
(`replicas: ${{ CONTEXT.n }}` with `context={'n': 2}` gives the integer 2); environment variables are
strings, and pydantic's validation turns `"2"` into 2 where the field wants an int. An unset variable or
key is an error rather than an empty string: a silently empty port or path fails later and far away.
`${{ ENV.X:-default }}` gives a default, as in a shell.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SubstitutionError", "has_expression", "substitute"]

_EXPR = re.compile(r"\$\{\{\s*(?P<body>.*?)\s*\}\}")
_BODY = re.compile(r"^(?P<ns>[A-Za-z_]+)\.(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)(?::-(?P<default>.*))?$")


class SubstitutionError(ValueError):
    """A `${{ ... }}` expression that cannot be resolved; the message says which and why."""


def has_expression(value: str) -> bool:
    return "${{" in value


def _lookup(ns: str, key: str, default: str | None, context: Mapping[str, Any]) -> Any:
    if ns == "ENV":
        value = os.environ.get(key)
        if value is None:
            if default is not None:
                return default
            raise SubstitutionError(
                f"environment variable {key!r} is not set (used as ${{{{ ENV.{key} }}}}); set it, or "
                f"give a default: ${{{{ ENV.{key}:-value }}}}")
        return value
    if ns == "CONTEXT":
        current: Any = context
        for part in key.split("."):
            if not isinstance(current, Mapping) or part not in current:
                if default is not None:
                    return default
                known = sorted(context) if isinstance(context, Mapping) else []
                raise SubstitutionError(
                    f"context has no key {key!r} (used as ${{{{ CONTEXT.{key} }}}}); pass it with "
                    f"load_config(..., context={{{key.split('.')[0]!r}: ...}}); context keys: {known}")
            current = current[part]
        return current
    raise SubstitutionError(f"unknown namespace {ns!r} in ${{{{ {ns}.{key} }}}}; use ENV or CONTEXT")


def _parse(body: str) -> tuple[str, str, str | None]:
    match = _BODY.match(body)
    if match is None:
        raise SubstitutionError(
            f"cannot read the expression ${{{{ {body} }}}}; write ${{{{ ENV.NAME }}}} or "
            "${{ CONTEXT.key }}")
    return match["ns"], match["key"], match["default"]


def substitute(value: str, context: Mapping[str, Any] | None = None) -> Any:
    """Resolve every `${{ ... }}` in `value`; a lone CONTEXT expression keeps its value's type."""
    context = context or {}
    whole = _EXPR.fullmatch(value.strip())
    if whole is not None:
        ns, key, default = _parse(whole["body"])
        return _lookup(ns, key, default, context)

    def repl(match: re.Match[str]) -> str:
        ns, key, default = _parse(match["body"])
        return str(_lookup(ns, key, default, context))

    result = _EXPR.sub(repl, value)
    if "${{" in result:
        raise SubstitutionError(f"unclosed expression in {value!r}: every '${{{{' needs a closing '}}}}'")
    return result
