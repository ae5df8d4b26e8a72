"""The JSON Schema of the YAML format (`orchestra export schema`), for editor completion and checks.

It is generated from the spec models, so it cannot drift from what `load_config` accepts: the same
key sets (`FLOW_WITH_KEYS`, `DEPLOYMENT_WITH_KEYS`, ...) that the loader checks select the properties
here. Two widenings keep valid files valid: any scalar may be a `${{ ENV.X }}` / `${{ CONTEXT.X }}`
expression (resolved before validation), and `uses` may be a string or an inline Executor mapping. A file
whose `jtype` is neither Flow nor Deployment is an Executor YAML (`jtype: MyExecutor`).
"""

from __future__ import annotations

import copy
from typing import Any

from orchestra_nb.spec.models import ExecutorSpec, GatewaySpec
from orchestra_nb.spec.yaml import (
    DEPLOYMENT_WITH_KEYS,
    EXECUTOR_KEYS,
    EXECUTOR_YAML_KEYS,
    FLOW_WITH_KEYS,
    GATEWAY_KEYS,
)

__all__ = ["SCHEMA_ID", "yaml_schema"]

SCHEMA_ID = "https://orchestra-nb.dev/schema/orchestra.schema.json"
_EXPRESSION = {"type": "string", "pattern": r"\$\{\{.*\}\}"}


def _widen(prop: dict[str, Any]) -> dict[str, Any]:
    """Allow a substitution expression wherever a value is not already any string."""
    if prop.get("type") == "string" and "enum" not in prop and "const" not in prop:
        return prop
    return {"anyOf": [prop, _EXPRESSION], **{k: prop[k] for k in ("title", "description") if k in prop}}


def _properties(model: Any, keys: frozenset[str], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    props = schema["properties"]
    return {k: _widen(copy.deepcopy(props[k])) for k in sorted(keys) if k in props}


def _object(properties: dict[str, Any], description: str, required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "description": description, "properties": properties,
                           "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def yaml_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of Flow, Deployment and Executor YAML files."""
    defs: dict[str, Any] = {}
    executor_yaml = _object({
        "jtype": {"type": "string", "description": "The Executor class name."},
        "version": {"type": ["string", "number"]},
        "with": {"type": "object", "description": "Arguments of the class's __init__."},
        "py_modules": {"type": "array", "items": {"type": "string"},
                       "description": "Python files holding the class, relative to this YAML."},
        "metas": {"type": "object"},
    }, "An Executor YAML: `jtype: MyExecutor` with its arguments.", ["jtype"])
    assert set(executor_yaml["properties"]) == EXECUTOR_YAML_KEYS
    executor_props = _properties(ExecutorSpec, EXECUTOR_KEYS, defs)
    executor_props["uses"] = {
        "description": "A class name from py_modules, a dotted module.Class, an Executor YAML path, or "
                       "an inline Executor mapping.",
        "anyOf": [{"type": "string"}, {"$ref": "#/$defs/ExecutorYAML"}]}
    executor_props["needs"] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                               "description": "Executors (or 'gateway') this one waits for."}
    executor_props["py_modules"] = {"anyOf": [{"type": "string"},
                                              {"type": "array", "items": {"type": "string"}}]}
    defs["ExecutorYAML"] = executor_yaml
    defs["Executor"] = _object(executor_props, "One executor of a Flow (the options of Flow.add).")
    gateway_props = _properties(GatewaySpec, GATEWAY_KEYS, defs)
    defs["Gateway"] = _object(gateway_props, "Gateway options.")
    flow_with = {**{k: gateway_props[k] for k in FLOW_WITH_KEYS if k in gateway_props},
                 "name": {"type": "string"}, "log_config": {"type": "string"},
                 "env": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}}
    defs["Flow"] = _object({
        "jtype": {"const": "Flow"},
        "version": {"type": ["string", "number"]},
        "with": _object(flow_with, "The Flow's own options: name, log_config, env and gateway options."),
        "gateway": {"$ref": "#/$defs/Gateway"},
        "executors": {"type": "array", "items": {"$ref": "#/$defs/Executor"}},
    }, "A Flow: a gateway in front of a DAG of executors.", ["jtype"])
    dep_with: dict[str, Any] = {}
    for key in sorted(DEPLOYMENT_WITH_KEYS):
        if key in executor_props:
            dep_with[key] = executor_props[key]
        elif key in gateway_props:
            dep_with[key] = gateway_props[key]
    dep_with.update({"name": {"type": "string"}, "log_config": {"type": "string"},
                     "port": gateway_props["port"], "protocol": gateway_props["protocol"],
                     "host": gateway_props["host"]})
    defs["Deployment"] = _object({
        "jtype": {"const": "Deployment"},
        "version": {"type": ["string", "number"]},
        "with": _object(dep_with, "Executor and gateway options of the Deployment."),
        "gateway": {"$ref": "#/$defs/Gateway"},
        "executor": {"$ref": "#/$defs/Executor"},
    }, "A Deployment: one executor behind its own gateway.", ["jtype"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "orchestra-nb YAML",
        "description": "A Flow, a Deployment or an Executor YAML file of orchestra-nb.",
        "type": "object",
        "required": ["jtype"],
        "if": {"properties": {"jtype": {"const": "Flow"}}},
        "then": {"$ref": "#/$defs/Flow"},
        "else": {
            "if": {"properties": {"jtype": {"const": "Deployment"}}},
            "then": {"$ref": "#/$defs/Deployment"},
            "else": {"$ref": "#/$defs/ExecutorYAML"},
        },
        "$defs": defs,
    }
