"""How the tools' schemas are listed, and how a rejected argument is explained against them."""

from __future__ import annotations

import inspect
import json
from typing import Any

from mcp.server.mcpserver.tools import Tool
from pydantic import ValidationError


def compact_schema(schema: Any, *, in_properties: bool = False) -> Any:
    """Drops what costs a model tokens and says nothing: auto titles, and anyOf-with-null where a type list does.

    Validation does not use these dicts (pydantic validates the arguments), so this only changes what is listed.
    """
    if isinstance(schema, list):
        return [compact_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if in_properties:
        return {name: compact_schema(sub) for name, sub in schema.items()}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None) or (key == "additionalProperties" and value is True):
            continue  # what JSON Schema assumes anyway
        out[key] = compact_schema(value, in_properties=key in ("properties", "$defs"))
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (other,) = [o for o in options if o != {"type": "null"}]
        if isinstance(other, dict) and isinstance(other.get("type"), str) and "anyOf" not in other:
            del out["anyOf"]
            out = {**other, **out, "type": [other["type"], "null"]}
    return out


def shape_tool(tool: Tool) -> Tool:
    """The tool as it is listed: compact schemas and a clean description."""
    tool.parameters = compact_schema(tool.parameters)
    tool.description = inspect.cleandoc(tool.description)
    output = tool.output_schema
    if output is not None:
        compacted = compact_schema(output)
        # Results always carry every field, and may carry more: saying so costs tokens on every turn.
        for key in ("required", "additionalProperties", "description"):
            compacted.pop(key, None)
        output.clear()
        output.update(compacted)
    return tool


def explain_validation(tool: Tool | None, name: str, error: ValidationError) -> str:
    """Names each bad field, what was given, and the limit the schema states for it."""
    props: dict[str, Any] = tool.parameters.get("properties", {}) if tool else {}
    lines = [f"Invalid arguments for {name}; nothing was submitted or charged."]
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        field_name = ".".join(loc) or "(arguments)"
        top = props.get(loc[0], {}) if loc else {}
        limit = top.get("description") or ""
        shown = json.dumps(err.get("input"), default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        text = f"- {field_name}: {err['msg']}; got {shown}."
        if limit:
            text += f" Limit: {limit}"
        lines.append(text)
    lines.append("Fix the fields above and call again.")
    return "\n".join(lines)
