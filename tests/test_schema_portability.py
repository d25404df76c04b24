"""Every listed schema is one every framework adapter takes unchanged, and still states every limit.

The rules are the ones the adapters enforce (google-genai, OpenAI strict conversion in openai-agents, LangChain,
pydantic-ai): checked here on the schemas exactly as ``tools/list`` serves them, without any of those libraries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver.tools import Tool

from kling_mcp.config import Settings
from kling_mcp.server import build_server
from kling_mcp.server.schema import drop_null_optionals, portable_schema
from kling_mcp.server.tools import TOOLS

pytestmark = pytest.mark.anyio

LIMIT_KEYWORDS = ("minLength", "maxLength", "minimum", "maximum", "enum", "minItems", "maxItems", "pattern")
# Keywords no listed input schema may carry at any depth: adapters reject or mistranslate each.
BANNED_ANYWHERE = ("$ref", "$defs", "definitions", "additionalProperties", "format", "oneOf", "allOf", "anyOf")


async def listed_tools(settings: Settings) -> dict[str, Any]:
    with anyio.fail_after(20):
        async with Client(build_server(settings)) as client:
            return {t.name: t for t in (await client.list_tools()).tools}


def nodes(schema: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema with its path; the keys of ``properties`` are names, not keywords, so they are stepped over."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                yield from nodes(sub, f"{path}/properties/{name}")
        elif isinstance(value, dict):
            yield from nodes(value, f"{path}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from nodes(item, f"{path}/{key}/{i}")


def portability_problems(schema: dict[str, Any]) -> list[str]:
    """What some adapter would reject, including everything OpenAI strict conversion (openai-agents) refuses."""
    problems = []
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        problems.append("#: the root must be a plain object with properties")
    for path, node in nodes(schema):
        problems += [f"{path}: {key}" for key in BANNED_ANYWHERE if key in node]
        kind = node.get("type")
        if (path.count("/properties/") or path.endswith("/items")) and not isinstance(kind, str):
            problems.append(f"{path}: type must be one name, not {kind!r}")
        if "default" in node and node["default"] is None:
            problems.append(f"{path}: default null")
        if kind == "object" and not node.get("properties"):
            problems.append(f"{path}: an object without properties is open, which strict conversion refuses")
        required = node.get("required", [])
        if not set(required) <= set(node.get("properties", {})):
            problems.append(f"{path}: requires undeclared {sorted(set(required) - set(node.get('properties', {})))}")
    return problems


def resolved(schema: Any, defs: dict[str, Any]) -> Any:
    """The SDK's own schema with references resolved: where the limits it states live."""
    if isinstance(schema, list):
        return [resolved(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return resolved(
            {**defs[schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}, defs
        )
    return {k: resolved(v, defs) for k, v in schema.items()}


def limits_by_field(schema: Any, field: str = "") -> set[tuple[str, str, str]]:
    """(field path, keyword, value) for every limit, wherever a union or a list puts it."""
    found: set[tuple[str, str, str]] = set()
    if isinstance(schema, list):
        for item in schema:
            found |= limits_by_field(item, field)
        return found
    if not isinstance(schema, dict):
        return found
    found |= {(field, key, repr(schema[key])) for key in LIMIT_KEYWORDS if key in schema}
    for name, sub in (schema.get("properties") or {}).items():
        found |= limits_by_field(sub, f"{field}.{name}")
    for key in ("items", "anyOf"):
        if key in schema:
            found |= limits_by_field(schema[key], field + ("[]" if key == "items" else ""))
    return found


def sdk_schemas() -> dict[str, dict[str, Any]]:
    """The schemas the SDK derives from the signatures, before the server shapes them."""
    return {spec.fn.__name__: Tool.from_function(spec.fn).parameters for spec in TOOLS}


async def test_every_input_schema_is_portable_and_strict_convertible(settings: Settings) -> None:
    tools = await listed_tools(settings)
    assert len(tools) == len(TOOLS)
    problems = {name: portability_problems(tool.input_schema) for name, tool in tools.items()}
    assert problems == {name: [] for name in tools}


async def test_output_schemas_carry_no_references_or_open_keywords(settings: Settings) -> None:
    """Results really carry nulls (and clients validate them against the schema), so nulls stay in type lists."""
    tools = await listed_tools(settings)
    for name, tool in tools.items():
        assert tool.output_schema is not None
        for path, node in nodes(tool.output_schema):
            assert not {"$ref", "$defs", "additionalProperties", "format", "title"} & node.keys(), (name, path)


async def test_portable_schemas_keep_every_limit_the_signatures_state(settings: Settings) -> None:
    tools = await listed_tools(settings)
    for name, raw in sdk_schemas().items():
        expected = limits_by_field(resolved(raw, raw.get("$defs", {})))
        assert expected, name
        assert limits_by_field(tools[name].input_schema) == expected, name


async def test_optional_fields_are_left_out_of_required_and_keep_their_type(settings: Settings) -> None:
    tools = await listed_tools(settings)
    story = tools["storyboard"].input_schema
    assert story["required"] == ["shots"]
    assert story["properties"]["image_url"]["type"] == "string"
    assert story["properties"]["shots"]["items"]["required"] == ["prompt"]
    assert tools["list_jobs"].input_schema["properties"]["status"]["type"] == "string"
    assert "required" not in tools["list_jobs"].input_schema


def test_the_checks_catch_what_adapters_reject() -> None:
    """The rules above fail on each construct the adapters were seen to break on."""
    open_nested = {"type": "object", "properties": {"a": {"type": "object", "additionalProperties": False}}}
    assert any("additionalProperties" in p for p in portability_problems(open_nested))
    assert any("without properties" in p for p in portability_problems(open_nested))
    ref = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "string"}}}
    assert {"#: $defs", "#/properties/a: $ref"} <= set(portability_problems(ref))
    nullable = {"type": "object", "properties": {"a": {"type": ["string", "null"], "default": None}}}
    assert set(portability_problems(nullable)) == {
        "#/properties/a: type must be one name, not ['string', 'null']",
        "#/properties/a: default null",
    }
    assert portability_problems({"anyOf": [{"type": "object", "properties": {}}]})


def test_portable_schema_inlines_references_and_folds_null_unions() -> None:
    raw = {
        "$defs": {"Shot": {"additionalProperties": False, "properties": {"p": {"title": "P", "type": "string"}}}},
        "properties": {
            "shot": {"anyOf": [{"$ref": "#/$defs/Shot"}, {"type": "null"}], "default": None, "description": "d"},
            "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}], "maxLength": 30},
            "kind": {"type": ["integer", "null"], "minimum": 1},
        },
        "type": "object",
    }
    assert portable_schema(raw) == {
        "properties": {
            "shot": {"properties": {"p": {"type": "string"}}, "description": "d"},
            "when": {"type": "string", "maxLength": 30},
            "kind": {"type": "integer", "minimum": 1},
        },
        "type": "object",
    }
    assert portable_schema(raw, nullable=True)["properties"]["when"]["type"] == ["string", "null"]


def test_nulls_for_optional_fields_are_dropped_at_every_depth_and_required_ones_kept() -> None:
    schema = {
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "integer"},
            "c": {"type": "array", "items": {"type": "object", "required": ["p"], "properties": {"p": {}, "q": {}}}},
        },
    }
    value = {"a": None, "b": None, "c": [{"p": None, "q": None}], "unknown": None}
    assert drop_null_optionals(schema, value) == {"a": None, "c": [{"p": None}]}


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def test_a_null_for_an_optional_field_means_absent(settings: Settings, sandbox: Any) -> None:
    nulls = {"duration": None, "aspect_ratio": None, "wait_seconds": None, "idempotency_key": None, "force_new": None}
    with anyio.fail_after(30):
        async with Client(build_server(settings)) as client:
            made = await client.call_tool("generate_video", {"prompt": "a lighthouse", **nulls, "wait_seconds": 0})
            story = await client.call_tool(
                "storyboard", {"shots": [{"prompt": "a", "duration": None}], "image_url": None, "wait_seconds": 0}
            )
            listed = await client.call_tool("list_jobs", {"status": None, "limit": None})
    assert not made.is_error, _text(made)
    assert made.structured_content is not None
    assert made.structured_content["params"]["duration"] == 5
    assert made.structured_content["params"]["aspect_ratio"] == "16:9"
    assert not story.is_error, _text(story)
    assert story.structured_content is not None
    assert story.structured_content["video_seconds"] == 5
    assert not listed.is_error, _text(listed)
    assert listed.structured_content is not None
    assert len(listed.structured_content["jobs"]) == 2


def test_blank_texts_for_optional_fields_are_dropped_and_required_ones_kept() -> None:
    schema = {"type": "object", "required": ["a"], "properties": {"a": {}, "b": {}, "c": {}, "d": {}}}
    assert drop_null_optionals(schema, {"a": "", "b": "", "c": "  ", "d": "x"}) == {"a": "", "d": "x"}


async def test_blank_optional_texts_from_strict_mode_models_mean_absent(settings: Settings, sandbox: Any) -> None:
    """A model in strict mode fills every field, sending "" for the optional texts it means to leave out."""
    blank_key = {"idempotency_key": "", "wait_seconds": 0}
    with anyio.fail_after(30):
        async with Client(build_server(settings)) as client:
            one = await client.call_tool("generate_video", {"prompt": "a lighthouse", **blank_key})
            two = await client.call_tool("generate_video", {"prompt": "a harbour", **blank_key})
            story = await client.call_tool("storyboard", {"shots": [{"prompt": "a"}], "image_url": "", **blank_key})
            ids = [r.structured_content["request_id"] for r in (one, two) if r.structured_content]
            done = [await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 20}) for rid in ids]
            film = await client.call_tool("concat_videos", {"request_ids": ids, "title": " "})
    for result in (one, two, story, *done, film):
        assert not result.is_error, _text(result)
    assert len(set(ids)) == 2  # "" is no key: two requests, two jobs
    assert story.structured_content is not None
    assert story.structured_content["params"]["endpoint"] == "text_to_video"
    assert film.structured_content is not None
    assert film.structured_content["path"].rsplit("/", 1)[-1].startswith("film-")  # the name made without a title


async def test_a_null_for_a_required_field_is_still_explained(settings: Settings, sandbox: Any) -> None:
    with anyio.fail_after(20):
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("generate_video", {"prompt": None})
    assert result.is_error
    assert "- prompt must be text of 1-3072 characters; got null. Fix:" in _text(result)
    assert sandbox.gateway.submit_count == 0
