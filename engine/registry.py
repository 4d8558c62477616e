"""Where plugins are found, and how they reach vLLM's own processes.

A built-in plugin is the sub-package ``engine/plugins/<name>/`` plus its name in
``BUILTIN_PLUGINS`` below: that is the one registration line. Plugins kept outside
this repository are module paths in ``LEANSERVE_PLUGINS`` (comma-separated) or
``--plugins``; they are loaded the same way.

vLLM spawns its engine core (and workers) as separate processes, so registration done
in the gateway alone is not enough. ``hand_over_to_vllm`` writes the active plugins and
their settings into an environment variable before the engine starts; spawned processes
inherit it, and ``register_in_vllm_processes`` — leanserve's one ``vllm.general_plugins``
entry point (pyproject.toml), which vLLM runs in every process — reads it back.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo

from engine.plugin import ActivePlugin, Plugin

BUILTIN_PLUGINS = ("speculative", "adaptive", "visual_pruning", "video_pruning", "sparse_prefill")
EXTRA_PLUGINS_ENV = "LEANSERVE_PLUGINS"
VLLM_HANDOFF_ENV = "LEANSERVE_ACTIVE_PLUGINS"


def builtin_modules() -> tuple[str, ...]:
    return tuple(f"engine.plugins.{name}" for name in BUILTIN_PLUGINS)


def split_modules(text: str | None) -> tuple[str, ...]:
    """``"a.b, c.d"`` -> ``("a.b", "c.d")``; the form of ``LEANSERVE_PLUGINS`` and ``--plugins``."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@functools.cache
def load_plugin(module: str) -> Plugin:
    """Import ``module`` and return its ``PLUGIN``; raises ValueError with what is wrong."""
    try:
        plugin = importlib.import_module(module).PLUGIN
    except (ImportError, AttributeError) as error:
        raise ValueError(f"plugin module {module!r} cannot be loaded: {error}") from error
    if not isinstance(plugin, Plugin):
        raise ValueError(f"{module}.PLUGIN is not an engine.plugin.Plugin")
    return plugin


def load_plugins(modules: Sequence[str]) -> tuple[tuple[str, Plugin], ...]:
    """(module, plugin) pairs, refusing two plugins of one name."""
    loaded = tuple((module, load_plugin(module)) for module in dict.fromkeys(modules))
    names = [plugin.name for _, plugin in loaded]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two plugins are named {', '.join(duplicates)}")
    return loaded


def plugin_fields(plugins: Sequence[Plugin], taken: Sequence[str]) -> dict[str, tuple[Any, FieldInfo]]:
    """The settings fields every plugin adds to ``Settings``, checked for clashes.

    Each field must have its plugin's name among its words (``speculative``,
    ``num_speculative_tokens``), so flags say which plugin they belong to and two
    plugins cannot claim one flag.
    """
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    for plugin in plugins:
        for name, info in plugin.settings_model.model_fields.items():
            if f"_{plugin.name}_" not in f"_{name}_":
                raise ValueError(f"plugin {plugin.name}: setting {name!r} must contain {plugin.name!r}")
            if name in fields or name in taken:
                raise ValueError(f"plugin {plugin.name}: setting {name!r} is already taken")
            fields[name] = (info.annotation, info)
    return fields


def hand_over_to_vllm(active: Sequence[ActivePlugin]) -> None:
    """Make the active plugins and their settings visible to the vLLM processes spawned from here."""
    payload = [{"module": item.module, "settings": item.settings.model_dump(mode="json")} for item in active]
    os.environ[VLLM_HANDOFF_ENV] = json.dumps(payload)


def handed_over() -> list[ActivePlugin]:
    """The plugins ``hand_over_to_vllm`` announced to this process (none if it was not called)."""
    payload = json.loads(os.environ.get(VLLM_HANDOFF_ENV) or "[]")
    active = []
    for entry in payload:
        plugin = load_plugin(entry["module"])
        active.append(ActivePlugin(entry["module"], plugin, plugin.settings_model.model_validate(entry["settings"])))
    return active


def register_in_vllm_processes() -> None:
    """The ``vllm.general_plugins`` entry point: vLLM calls it in every process it starts."""
    for item in handed_over():
        item.plugin.register_in_vllm(item.settings)
