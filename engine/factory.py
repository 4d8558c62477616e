"""``Settings`` in, an ``Engine`` out: the only place that knows which engine to build.

Two steps, because they fail differently:

* ``plan_engine`` runs before the HTTP server listens: it resolves (and may download)
  the model, asks each active plugin for its engine arguments and validates them all;
  a bad flag stops the process with a message naming it.
* ``start_engine`` runs in the background while ``/health`` already answers: it hands
  the plugins over to vLLM's processes and loads the model — a plain ``VllmEngine``,
  or the engine a plugin builds itself (e.g. one composing two vLLM engines).

The gateway gets from here the plan's description (served name, metric specs) and an
``Engine``; it never imports vLLM or a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from engine.catalogue import resolve_model
from engine.plugin import ActivePlugin, EngineBuilder, EngineContext
from engine.protocol import Engine, MetricSpec, StatsSink
from engine.registry import hand_over_to_vllm
from engine.vllm_args import core_engine_args, merge_engine_args

if TYPE_CHECKING:
    from service.settings import CoreSettings


@dataclass(frozen=True)
class EnginePlan:
    """Everything decided before an engine starts: the model, the plugins, vLLM's arguments."""

    context: EngineContext
    plugins: tuple[ActivePlugin, ...]  # the active ones
    engine_args: dict[str, Any]
    metrics: tuple[MetricSpec, ...]  # of every loaded plugin, active or not: /metrics documents them all
    disabled_options: tuple[str, ...] = ()  # request fields of loaded plugins these settings leave off
    builder: EngineBuilder | None = None

    @property
    def served_model_name(self) -> str:
        return self.context.served_model_name


def plan_engine(settings: CoreSettings) -> EnginePlan:
    """Resolve the model and the plugins' contributions; raises ValueError naming what is wrong."""
    resolved = resolve_model(settings.model, settings.cache_dir)
    context = EngineContext(
        served_model_name=settings.served_model_name or resolved.name,
        model_path=resolved.path,
        cache_dir=settings.cache_dir,
        resolve_model=lambda name: resolve_model(name, settings.cache_dir).path,
    )
    active = settings.active_plugins()
    contributions = [(item.name, item.plugin.engine_args(item.settings, context)) for item in active]
    engine_args = merge_engine_args(
        core_engine_args(settings, context.model_path, context.served_model_name), contributions, settings.engine_args,
    )
    builders = [(item.name, builder) for item in active if (builder := item.plugin.engine_builder(item.settings))]
    if len(builders) > 1:
        raise ValueError(f"plugins {', '.join(name for name, _ in builders)} each build the engine: enable one")
    metrics = tuple(spec for group in settings.plugin_groups() for spec in group.plugin.metrics)
    disabled = tuple(group.name for group in settings.plugin_groups()
                     if group.plugin.request_options is not None and group not in active)
    return EnginePlan(context, active, engine_args, metrics, disabled, builders[0][1] if builders else None)


async def start_engine(plan: EnginePlan, on_stats: StatsSink) -> Engine:
    """Load the engine the plan describes (called once, in the background)."""
    hand_over_to_vllm(plan.plugins)
    if plan.builder is not None:
        return await plan.builder(plan, on_stats)
    from engine.vllm_engine import VllmEngine

    return await VllmEngine.start(plan, on_stats)


def engine_starter(plan: EnginePlan, on_stats: StatsSink) -> partial:
    """A no-argument coroutine factory, the form ``service.app.create_app`` takes."""
    return partial(start_engine, plan, on_stats)
