"""Structured outputs: ``response_format`` (OpenAI) and vLLM's ``structured_outputs`` / ``guided_*`` fields.

All of them become one ``StructuredOutput`` that the engine enforces by guided decoding
(vLLM's xgrammar backend), so the answer is valid by construction, streamed or not. A
schema is checked here first (``jsonschema``'s meta-schema, and a nesting bound that keeps
a hostile schema from recursing through the validators): a bad one is a 400 naming the exact
field, before anything reaches the engine. ``strict: false`` is enforced too: a server that
can guarantee the shape has no reason to guarantee less.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from engine.protocol import StructuredOutput
from service.errors import bad_request

MAX_SCHEMA_DEPTH = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchema(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StructuredOutputsField(_Strict):
    """vLLM's ``extra_body={"structured_outputs": {...}}``: exactly one constraint."""

    json_: dict[str, Any] | None = Field(None, alias="json")
    regex: str | None = Field(None, min_length=1)
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    grammar: str | None = Field(None, min_length=1)
    json_object: Literal[True] | None = None


class GuidedFields(BaseModel):
    """vLLM's older top-level names, still sent by many clients; each maps to ``structured_outputs``."""

    structured_outputs: StructuredOutputsField | None = None
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = Field(None, min_length=1)
    guided_choice: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    guided_grammar: str | None = Field(None, min_length=1)


def _depth(value: object, limit: int) -> int:
    """Nesting depth of a JSON value, counted without recursion (stops past ``limit``)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_schema(schema: object, param: str) -> dict[str, Any]:
    """A JSON schema the validators and the grammar compiler can take, or a 400 naming ``param``."""
    if not isinstance(schema, dict):
        raise bad_request(f"{param} must be a JSON schema object", param=param, code="invalid_schema")
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise bad_request(f"{param} is nested deeper than {MAX_SCHEMA_DEPTH} levels", param=param,
                          code="invalid_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        raise bad_request(f"{param} is not a valid JSON schema{f' at {where}' if where else ''}: {error.message}",
                          param=param, code="invalid_schema") from error
    except (RecursionError, ValueError, TypeError) as error:  # e.g. a $ref cycle or a non-string key
        raise bad_request(f"{param} is not a valid JSON schema: {error}", param=param,
                          code="invalid_schema") from error
    return schema


def _from_response_format(response_format: Any) -> StructuredOutput | None:
    if response_format is None or isinstance(response_format, TextFormat):
        return None
    if isinstance(response_format, JsonObjectFormat):
        return StructuredOutput("json_object", param="response_format")
    param = "response_format.json_schema.schema"
    return StructuredOutput("json", check_schema(response_format.json_schema.schema_, param), param=param)


def _from_vllm_fields(body: GuidedFields) -> list[StructuredOutput]:
    found = []
    if body.structured_outputs is not None:
        field = body.structured_outputs
        set_kinds = [kind for kind in ("json", "regex", "choice", "grammar", "json_object")
                     if getattr(field, "json_" if kind == "json" else kind) is not None]
        if len(set_kinds) != 1:
            raise bad_request("structured_outputs takes exactly one of json, regex, choice, grammar, json_object",
                              param="structured_outputs", code="invalid_value")
        kind = set_kinds[0]
        param = f"structured_outputs.{kind}"
        spec = getattr(field, "json_" if kind == "json" else kind)
        if kind == "json":
            spec = check_schema(spec, param)
        found.append(StructuredOutput(kind, None if kind == "json_object" else spec, param=param))
    for kind in ("json", "regex", "choice", "grammar"):
        spec = getattr(body, f"guided_{kind}")
        if spec is not None:
            param = f"guided_{kind}"
            found.append(StructuredOutput(kind, check_schema(spec, param) if kind == "json" else spec, param=param))
    return found


def structured_output(body: GuidedFields, response_format: Any = None) -> StructuredOutput | None:
    """The request's one output constraint (None: free text); two at once is a 400 naming the second."""
    found = [s for s in (_from_response_format(response_format), *_from_vllm_fields(body)) if s is not None]
    if len(found) > 1:
        raise bad_request(f"{found[0].param} and {found[1].param} each constrain the output: send one",
                          param=found[1].param, code="invalid_value")
    return found[0] if found else None
