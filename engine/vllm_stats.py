"""The vLLM stat loggers leanserve installs; the private ``record`` signature lives here and nowhere else.

* ``plugin_stat_logger``: each engine step's ``SchedulerStats`` to the plugins. vLLM calls
  ``record`` in the gateway process after every engine step (AsyncLLM's output handler);
  plugins turn the stats into ``MetricUpdate``s (``Plugin.step_observer``), which go to the
  engine's stats sink.
* ``NoVllmPrometheus``: for a second engine in the process (adaptive switching's small
  model). vLLM's own Prometheus logger unregisters every ``vllm:*`` collector when it is
  created, so a second engine would silently take the ``vllm:*`` series over from the
  first (the served model). Passing this subclass counts as "a custom Prometheus logger",
  so vLLM creates none for that engine and ``vllm:*`` keeps describing the served model.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerBase

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


class NoVllmPrometheus(PrometheusStatLogger):
    """Stands in for vLLM's Prometheus logger of an engine whose ``vllm:*`` series are not exported."""

    def __init__(self, vllm_config, engine_indexes: list[int] | None = None) -> None:  # vLLM's signature
        del vllm_config
        self.engine_indexes = engine_indexes or [0]  # no super().__init__: it would unregister vllm:*

    def record(self, *args, **kwargs) -> None:
        pass

    def record_sleep_state(self, *args, **kwargs) -> None:
        pass

    def record_admission_rejection(self, *args, **kwargs) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass

    def log_metrics_info(self, *args, **kwargs) -> None:
        pass

    def log(self) -> None:
        pass
