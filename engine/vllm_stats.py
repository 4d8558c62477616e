"""The one vLLM stat logger leanserve installs: each engine step's ``SchedulerStats`` to the plugins.

vLLM calls ``record`` in the gateway process after every engine step (AsyncLLM's output
handler). Plugins turn the stats into ``MetricUpdate``s (``Plugin.step_observer``), which
go to the engine's stats sink; the private ``record`` signature lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.v1.metrics.loggers import StatLoggerBase

from engine.plugin import StepObserver
from engine.protocol import StatsSink


def plugin_stat_logger(observers: Sequence[StepObserver], sink: StatsSink) -> type[StatLoggerBase]:
    """A stat-logger class (vLLM instantiates it) that feeds ``observers`` and sends their updates to ``sink``."""

    class PluginStatLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:  # vLLM's signature
            del vllm_config, engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            if scheduler_stats is None:
                return
            updates = [update for observe in observers for update in observe(scheduler_stats)]
            if updates:
                sink(updates)

        def log_engine_initialized(self) -> None:
            pass

    return PluginStatLogger
