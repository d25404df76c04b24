"""How the tools' schemas are listed, and how a rejected argument is explained against them.

Listed input schemas are *portable*: every framework adapter takes them unchanged (google-genai crashes on a nested
``additionalProperties``, OpenAI strict conversion gives up on an unresolved ``$ref``, others mishandle type lists
and ``anyOf`` with null). So references are inlined, and an optional field is simply left out of ``required``
with its non-null type. Validation never reads these dicts: pydantic checks the arguments against the functions'
own signatures, so every limit still holds server-side, and ``drop_null_optionals`` keeps a null sent for an
optional field meaning "absent", as it did when the schema said so.
"""

from __future__ import annotations

import inspect
from typing import Any

from mcp.server.mcpserver.tools import Tool
from pydantic import ValidationError

from kling_mcp.errors import InvalidInputError, must_be, show_value

# Keywords some adapter rejects or mistranslates, and that validation does not need from the listed schema.
_DROPPED = frozenset({"title", "additionalProperties", "format", "$defs"})


def portable_schema(schema: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    """The schema with ``$ref`` inlined and without the keywords in ``_DROPPED`` or null defaults.

    ``nullable=False`` (inputs) drops null from every union and type list. ``nullable=True`` (outputs) keeps it as a
    type list: results really carry nulls, and clients validate structured results against the output schema.
    """
    defs = schema.get("$defs", {})
    out = _portable(schema, defs, nullable)
    assert isinstance(out, dict)
    return out


def _portable(node: Any, defs: dict[str, Any], nullable: bool) -> Any:
    if isinstance(node, list):
        return [_portable(item, defs, nullable) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _portable({**defs[ref.removeprefix("#/$defs/")], **siblings}, defs, nullable)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "properties" and isinstance(value, dict):  # its keys are names, not keywords
            out[key] = {name: _portable(sub, defs, nullable) for name, sub in value.items()}
        else:
            out[key] = _portable(value, defs, nullable)
    return _without_null(out, nullable)


def _without_null(node: dict[str, Any], nullable: bool) -> dict[str, Any]:
    """Folds ``anyOf: [X, null]`` into X (or, for outputs, X with a type list); drops null from type lists."""
    types = node.get("type")
    if isinstance(types, list) and not nullable:
        kept = [t for t in types if t != "null"]
        node = {**node, "type": kept[0] if len(kept) == 1 else kept}
    options = node.get("anyOf")
    if not (isinstance(options, list) and {"type": "null"} in options):
        return node
    others = [o for o in options if o != {"type": "null"}]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(others) != 1 or not isinstance(others[0], dict):
        return {**rest, "anyOf": others} if not nullable else node
    (other,) = others
    if not nullable:
        return {**other, **rest}
    if isinstance(other.get("type"), str) and "anyOf" not in other:
        return {**other, **rest, "type": [other["type"], "null"]}
    return node


def shape_tool(tool: Tool) -> Tool:
    """The tool as it is listed: portable schemas and a clean description."""
    tool.parameters = portable_schema(tool.parameters)
    tool.description = inspect.cleandoc(tool.description)
    output = tool.output_schema
    if output is not None:
        shaped = portable_schema(output, nullable=True)
        # Results always carry every field, and may carry more: saying so costs tokens on every turn.
        for key in ("required", "description"):
            shaped.pop(key, None)
        # The SDK hands out this very dict as the output schema, so it is rewritten in place.
        output.clear()
        output.update(shaped)
    return tool


def _absent(item: Any) -> bool:
    return item is None or (isinstance(item, str) and not item.strip())


def drop_null_optionals(schema: dict[str, Any], value: Any) -> Any:
    """``value`` without the nulls and blank texts given for fields ``schema`` does not require, at any depth: they
    mean "absent".

    The listed schemas no longer say an optional field may be null, but clients that send null for "not set" exist,
    and a field with a default would otherwise reject it. Models in strict mode must fill every field, and send ""
    for the optional texts they mean to leave out.
    """
    props = schema.get("properties")
    if isinstance(value, dict) and isinstance(props, dict):
        required = set(schema.get("required", ()))
        return {
            key: drop_null_optionals(props.get(key, {}), item)
            for key, item in value.items()
            if not _absent(item) or key in required
        }
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return [drop_null_optionals(items, item) for item in value]
    return value


# --- explaining a rejected argument --------------------------------------------------------------------------

# pydantic's bound errors: the ctx key holding the bound, and how the fix says which side to go.
_NUMBER_BOUND = {
    "greater_than_equal": ("ge", "{} or more"),
    "greater_than": ("gt", "more than {}"),
    "less_than_equal": ("le", "{} or less"),
    "less_than": ("lt", "less than {}"),
}
_TOO_LONG = frozenset({"string_too_long", "too_long"})
_TOO_SHORT = frozenset({"string_too_short", "too_short"})
_CHOICE = frozenset({"literal_error", "enum"})


def explain_validation(tool: Tool | None, name: str, error: ValidationError) -> str:
    """One sentence per bad field: the field, the limit the listed schema states for it, what was given, the fix."""
    schema: dict[str, Any] = tool.parameters if tool else {}
    lines = [f"Invalid arguments for {name}; nothing was submitted or charged."]
    for err in error.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidInputError):
            lines.append(f"- {cause}")
            continue
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) or "(arguments)"
        lines.append("- " + _sentence(field, err, _schema_at(schema, loc), _schema_at(schema, loc[:-1])))
    lines.append("Fix the fields above and call again.")
    return "\n".join(lines)


def _schema_at(schema: dict[str, Any], loc: list[str]) -> dict[str, Any]:
    """The listed schema of the value at ``loc`` (object keys and list indexes); {} where the schema says nothing."""
    node: Any = schema
    for part in loc:
        if not isinstance(node, dict):
            return {}
        if part.isdigit() and isinstance(node.get("items"), dict):
            node = node["items"]
        else:
            node = (node.get("properties") or {}).get(part, {})
    return node if isinstance(node, dict) else {}


def _sentence(field: str, err: Any, schema: dict[str, Any], parent: dict[str, Any]) -> str:
    kind: str = err["type"]
    value = err.get("input")
    wanted = _describe(schema)
    if kind == "missing":
        return must_be(field, "given", None) + f" Fix: add it as {wanted}."
    if kind == "extra_forbidden":
        known = _and_list(list((parent.get("properties") or {}).keys()))
        limit = "left out, as it is not a known field"
        return must_be(field, limit, show_value(value)) + f" Fix: remove it; the known fields are {known}."
    if kind in _TOO_LONG | _TOO_SHORT and isinstance(value, str | list):
        unit = "character" if isinstance(value, str) else "item"
        shown = show_value(value) if value in ("", []) else _count(len(value), unit)
        return must_be(field, wanted, shown) + f" Fix: {_resize(kind, len(value), err, unit)}."
    if kind in _NUMBER_BOUND:
        key, side = _NUMBER_BOUND[kind]
        return must_be(field, wanted, show_value(value)) + f" Fix: use {side.format(_num(err['ctx'][key]))}."
    if kind in _CHOICE:
        return must_be(field, wanted, show_value(value)) + " Fix: use one of those values."
    return must_be(field, wanted, show_value(value)) + f" Fix: send {wanted}."


def _resize(kind: str, size: int, err: Any, unit: str) -> str:
    ctx = err.get("ctx", {})
    if kind in _TOO_LONG:
        over = size - int(ctx.get("max_length", size))
        return f"shorten it by {_count(over, unit)}" if unit == "character" else f"remove {_count(over, unit)}"
    under = int(ctx.get("min_length", size)) - size
    return f"add {_count(under, unit)}" if size else f"give at least {_count(under, unit)}"


def _describe(schema: dict[str, Any]) -> str:
    """What a listed schema allows, as the noun phrase that follows "must be"."""
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    kind = schema.get("type")
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind in ("integer", "number"):
        noun = "a whole number" if kind == "integer" else "a number"
        return noun + _range(low, high, None)
    if kind == "string":
        return "text" + _range(schema.get("minLength"), schema.get("maxLength"), "character")
    if kind == "array":
        return "a list" + _range(schema.get("minItems"), schema.get("maxItems"), "item")
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        return "an object with " + _and_list(list((schema.get("properties") or {}).keys()))
    return "a valid value"


def _range(low: Any, high: Any, unit: str | None) -> str:
    """The bounds as words: ' from 3 to 15' for numbers; ' of 1-6 items', ' of at most 200 characters' for sizes."""
    if low is not None and high is not None:
        return f" of {_num(low)}-{_num(high)} {unit}s" if unit else f" from {_num(low)} to {_num(high)}"
    if high is None and low is None:
        return ""
    which, bound = ("at most", high) if high is not None else ("at least", low)
    return f" of {which} " + (_count(bound, unit) if unit else _num(bound))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _and_list(names: list[str]) -> str:
    if len(names) <= 1:
        return names[0] if names else "none"
    return ", ".join(names[:-1]) + " and " + names[-1]


def _count(n: float, unit: str) -> str:
    return f"{_num(n)} {unit}" + ("" if n == 1 else "s")
