"""The plugin contract: everything one work-saving feature brings to leanserve.

A plugin is a sub-package ``engine/plugins/<name>/`` whose ``__init__`` exposes
``PLUGIN``, an instance of a ``Plugin`` subclass, and one line in
``engine/registry.py`` (or, out of tree, a module path in ``LEANSERVE_PLUGINS``).
It overrides only the hooks it needs:

* ``settings_model``      its settings group; each field becomes a ``--flag`` and a
                          ``LEANSERVE_*`` variable, and has the plugin's name in it;
* ``request_options``     a pydantic model for the per-request field named after the
                          plugin (``extra_body={"<name>": {...}}``), validated by the gateway;
* ``metrics``             the Prometheus series it declares (``MetricSpec``);
* ``engine_args``         what it adds to vLLM's ``AsyncEngineArgs`` (``speculative_config``,
                          ``hf_overrides``, multimodal options ...);
* ``register_in_vllm``    registration inside every vLLM process (model classes, processors,
                          attention backends), run from leanserve's one ``vllm.general_plugins``
                          entry point: the engine core is a separate process;
* ``step_observer``       turns vLLM's per-step scheduler statistics into metric updates (called
                          once with ``None`` as the engine starts: its series at zero, see below);
* ``sampling_args``       what of its request options rides to vLLM in ``SamplingParams.extra_args``
                          (a logits processor or attention backend reads them there; the gateway's
                          request id is always there too, under ``REQUEST_ID_KEY``, for code inside
                          vLLM that reports per-request figures back);
* ``processor_args``      what rides in the prompt's ``mm_processor_kwargs`` when it has images or
                          video (vLLM's multimodal processor and the model read them there);
* ``cache_salt``          a prefix-cache salt for prompts whose KV entries it computes differently
                          (blocks are shared only between prompts of one salt);
* ``request_finished``    per-request accounting for ``usage`` and metrics;
* ``engine_builder``      an engine of its own making (e.g. one composing two vLLM engines).

The hooks that see vLLM objects (``step_observer``, ``request_finished``) receive them
untyped here so that this module, which the gateway imports, never imports vLLM.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from engine.protocol import GenerationRequest, MetricSpec, MetricUpdate

REQUEST_ID_KEY = "leanserve_request_id"  # SamplingParams.extra_args: the gateway's request id

if TYPE_CHECKING:
    from engine.factory import EnginePlan
    from engine.protocol import Engine, StatsSink


class NoSettings(BaseModel):
    """The settings group of a plugin without flags."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class EngineContext:
    """What a plugin may know about the engine it joins, before the engine starts."""

    served_model_name: str
    model_path: str
    cache_dir: Path
    resolve_model: Callable[[str], str]  # a catalogue name or directory -> a local model directory


@dataclass(frozen=True)
class FinishedRequest:
    """A request as the engine saw it end: what was asked, what came out, vLLM's last output."""

    request: GenerationRequest
    output_tokens: tuple[int, ...]  # per choice
    final_output: Any  # vLLM's last RequestOutput (DELTA mode: only the last tokens)


@dataclass(frozen=True)
class RequestAccounting:
    """A finished request's share of what a plugin did: ``usage[<plugin name>]`` and metric updates."""

    usage: Mapping[str, float] = field(default_factory=dict)
    updates: Sequence[MetricUpdate] = ()


# vLLM SchedulerStats -> updates. Called once with None when the engine starts: counters grown by 0 then
# exist before traffic, so a dashboard's rate() of them is not extrapolated from a first sample mid-window.
StepObserver = Callable[[Any], Sequence[MetricUpdate]]
EngineBuilder = Callable[["EnginePlan", "StatsSink"], Awaitable["Engine"]]  # the plan of the engine it replaces


class Plugin:
    """Base class of every plugin; the defaults do nothing, so a plugin overrides what it uses."""

    name: ClassVar[str]
    settings_model: ClassVar[type[BaseModel]] = NoSettings
    request_options: ClassVar[type[BaseModel] | None] = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def enabled(self, settings: BaseModel) -> bool:
        """Whether the plugin takes part at all with these settings (its switch)."""
        return True

    def engine_args(self, settings: BaseModel, context: EngineContext) -> dict[str, Any]:
        """Keyword arguments merged into vLLM's ``AsyncEngineArgs``; raise ValueError to refuse."""
        return {}

    def register_in_vllm(self, settings: BaseModel) -> None:
        """Runs in every vLLM process (gateway, engine core, workers), possibly more than once."""

    def step_observer(self, settings: BaseModel, context: EngineContext) -> StepObserver | None:
        """A callable fed each engine step's vLLM ``SchedulerStats`` in the gateway process."""
        return None

    def sampling_args(self, settings: BaseModel, options: BaseModel | None) -> Mapping[str, Any] | None:
        """This plugin's entry in ``SamplingParams.extra_args`` for one request (None: nothing)."""
        return None

    def processor_args(self, settings: BaseModel, options: BaseModel | None) -> Mapping[str, Any] | None:
        """This plugin's entries in a multimodal prompt's ``mm_processor_kwargs`` (None: nothing)."""
        return None

    def cache_salt(self, settings: BaseModel, options: BaseModel | None, prompt_tokens: int) -> str | None:
        """A salt for prompts whose KV cache this plugin computes differently (None: plain blocks)."""
        return None

    def request_finished(self, settings: BaseModel, options: BaseModel | None,
                         finished: FinishedRequest) -> RequestAccounting | None:
        """Accounting for one finished request (``options``: this plugin's, None if the request gave none)."""
        return None

    def engine_builder(self, settings: BaseModel) -> EngineBuilder | None:
        """An engine this plugin builds itself instead of the plain vLLM engine (at most one plugin may)."""
        return None


@dataclass(frozen=True)
class ActivePlugin:
    """A plugin with its validated settings group (and the module it was loaded from)."""

    module: str
    plugin: Plugin
    settings: BaseModel

    @property
    def name(self) -> str:
        return self.plugin.name
