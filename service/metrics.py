"""Every Prometheus metric leanserve exports, defined here and nowhere else.

Other modules build typed stats (``RequestStats``) and hand them to ``record_*``
functions; they never touch prometheus_client themselves. Plugins declare their
series (``engine.protocol.MetricSpec``) and report ``MetricUpdate``s; they are created
and updated here too. Names carry the ``leanserve_`` prefix and a ``model`` label, and
are documented in the README.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from engine.protocol import MetricSpec, MetricUpdate

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
_TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)

TIME_TO_FIRST_TOKEN = Histogram(
    "leanserve_time_to_first_token_seconds",
    "Time from request arrival to the first generated token.",
    ["model"], buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "leanserve_inter_token_latency_seconds",
    "Time between two consecutive output chunks of one choice, per token.",
    ["model"], buckets=_TOKEN_LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "leanserve_time_per_output_token_seconds",
    "Per request: (end - first token) / (output tokens - 1).",
    ["model"], buckets=_TOKEN_LATENCY_BUCKETS,
)
E2E_LATENCY = Histogram(
    "leanserve_e2e_request_latency_seconds",
    "Time from request arrival to its last token.",
    ["model"], buckets=_LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "leanserve_request_queue_time_seconds",
    "Time a request waited before the engine scheduled it (admission + engine queue).",
    ["model"], buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "leanserve_prompt_tokens", "Prompt tokens of requests handed to the engine.", ["model"],
)
GENERATION_TOKENS = Counter(
    "leanserve_generation_tokens", "Tokens generated and returned to clients.", ["model"],
)
REQUESTS = Counter(
    "leanserve_requests", "Completed HTTP requests on /v1 routes by status code.",
    ["model", "endpoint", "status_code"],
)
FINISHED_CHOICES = Counter(
    "leanserve_finished_choices", "Generated choices by finish reason (stop, length, abort).",
    ["model", "finish_reason"],
)
REQUESTS_RUNNING = Gauge(
    "leanserve_requests_running", "Requests currently handed to the engine.", ["model"],
)
REQUESTS_WAITING = Gauge(
    "leanserve_requests_waiting", "Requests admitted but waiting for a running slot.", ["model"],
)
ENGINE_READY = Gauge(
    "leanserve_engine_ready", "1 when the model is loaded and the engine is healthy, else 0.", ["model"],
)


@dataclass
class RequestStats:
    """Timings and token counts of one generation request, recorded when it ends."""

    arrival_s: float
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    inter_token_latencies_s: list[float] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)


_PLUGIN_KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
_plugin_metrics: dict[str, tuple[MetricSpec, Counter | Gauge | Histogram]] = {}


def declare_plugin_metrics(specs: Iterable[MetricSpec]) -> None:
    """Create the series plugins declare (idempotent: one app per process, or several in tests)."""
    for spec in specs:
        known = _plugin_metrics.get(spec.name)
        if known is not None:
            if known[0] != spec:
                raise ValueError(f"metric {spec.name} is declared twice, differently")
            continue
        extra = {"buckets": spec.buckets} if spec.kind == "histogram" and spec.buckets else {}
        metric = _PLUGIN_KINDS[spec.kind](spec.name, spec.documentation, ["model", *spec.labels], **extra)
        _plugin_metrics[spec.name] = (spec, metric)


def record_plugin_updates(model: str, updates: Sequence[MetricUpdate]) -> None:
    """Apply what an engine reported through its stats channel (``engine.protocol.StatsSink``)."""
    for update in updates:
        spec, metric = _plugin_metrics[update.name]
        child = metric.labels(model, *update.labels)
        if spec.kind == "counter":
            child.inc(update.value)
        elif spec.kind == "gauge":
            child.set(update.value)
        else:
            child.observe(update.value)


def record_request(model: str, stats: RequestStats) -> None:
    """Record a finished (or aborted) generation request."""
    PROMPT_TOKENS.labels(model).inc(stats.prompt_tokens)
    GENERATION_TOKENS.labels(model).inc(stats.output_tokens)
    for reason in stats.finish_reasons:
        FINISHED_CHOICES.labels(model, reason).inc()
    if stats.scheduled_s is not None:
        QUEUE_TIME.labels(model).observe(stats.scheduled_s - stats.arrival_s)
    if stats.first_token_s is None or stats.last_token_s is None:
        return
    TIME_TO_FIRST_TOKEN.labels(model).observe(stats.first_token_s - stats.arrival_s)
    E2E_LATENCY.labels(model).observe(stats.last_token_s - stats.arrival_s)
    itl = INTER_TOKEN_LATENCY.labels(model)
    for latency in stats.inter_token_latencies_s:
        itl.observe(latency)
    if stats.output_tokens > 1:
        tpot = (stats.last_token_s - stats.first_token_s) / (stats.output_tokens - 1)
        TIME_PER_OUTPUT_TOKEN.labels(model).observe(tpot)


def record_http_request(model: str, endpoint: str, status_code: int) -> None:
    REQUESTS.labels(model, endpoint, str(status_code)).inc()


def set_engine_ready(model: str, ready: bool) -> None:
    ENGINE_READY.labels(model).set(1 if ready else 0)


def running_gauge(model: str) -> Gauge:
    return REQUESTS_RUNNING.labels(model)


def waiting_gauge(model: str) -> Gauge:
    return REQUESTS_WAITING.labels(model)
