"""Per-request plugin options: validated once here, then passed to the engine untouched.

A plugin that takes options declares a pydantic model for the request field named after
it (``extra_body={"<plugin>": {...}}`` with the ``openai`` client); the engine lists them
in ``ModelInfo.request_options``. The gateway knows no plugin: it only checks fields
against the models it is given, and a bad value is a 400 naming the exact field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from engine.protocol import ModelInfo
from service.errors import bad_request

# OpenAI fields this server cannot honour, and what to send instead.
_UNSUPPORTED_HINTS = {
    "functions": "send tools",
    "function_call": "send tool_choice",
    "audio": "this server generates text only",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "the served models do not reason in a separate channel",
    "verbosity": "not supported",
    "web_search_options": "this server has no web search",
}


def plugin_options(body: BaseModel, info: ModelInfo) -> dict[str, Any]:
    """The validated options of each plugin the request names (absent plugins are left out).

    Any other field the body does not define is a 400 naming it: a request is never served
    without something it asked for.
    """
    extras = body.model_extra or {}
    for name in info.disabled_options:
        if name in extras:
            raise bad_request(f"`{name}` is not enabled on this server", param=name, code="plugin_disabled")
    for name in extras:
        if name not in info.request_options:
            hint = _UNSUPPORTED_HINTS.get(name, "see the README's list of supported fields")
            raise bad_request(f"`{name}` is not supported by this server ({hint})", param=name,
                              code="unsupported_parameter")
    options: dict[str, Any] = {}
    for name, model in info.request_options.items():
        if name not in extras:
            continue
        try:
            options[name] = model.model_validate(extras[name])
        except ValidationError as error:
            first = error.errors()[0]
            param = ".".join([name, *(str(part) for part in first.get("loc", ()))])
            raise bad_request(f"{param}: {first.get('msg', 'invalid value')}", param=param,
                              code="invalid_value") from error
    return options
