"""Turn request outcomes into the reported figures: percentiles, throughput, goodput, errors.

Definitions follow vLLM's ``bench serve`` so the two can be cross-checked: throughput is
over the run's wall time (first send to last answer), TPOT excludes the first token,
goodput counts requests that meet every SLO. Failed requests never enter the latency
figures but always appear in ``failed`` and ``errors``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from benchmarks.bench.client import RequestResult

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "itl", "e2el")
_UNITS = {"ms": 1e-3, "s": 1.0, "us": 1e-6}


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"0.5s"``, ``"250us"`` → seconds; a bare number is milliseconds (as in vLLM)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(ms|s|us)?\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 500ms, 0.5s)")
    value = float(match.group(1)) * _UNITS[match.group(2) or "ms"]
    if value <= 0:
        raise ValueError(f"an SLO must be positive: {text!r}")
    return value


def parse_slo(text: str | None) -> dict[str, float]:
    """``"ttft=500ms,tpot=50ms"`` → {"ttft": 0.5, "tpot": 0.05}. Keys: ttft, tpot, itl (max per request), e2el."""
    if not text:
        return {}
    slos = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_METRICS:
            raise ValueError(f"bad SLO {part!r}: use KEY=DURATION with KEY in {', '.join(SLO_METRICS)}")
        if key in slos:
            raise ValueError(f"SLO {key} given twice")
        slos[key] = parse_duration(value)
    return slos


def distribution(values_s: Iterable[float]) -> dict[str, float | None]:
    """mean, p50, p90, p99 in milliseconds (linear interpolation, numpy's and vLLM's default)."""
    values = np.asarray(list(values_s), dtype=float) * 1000.0
    if values.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}, "count": 0}
    return {"mean": float(values.mean()), **{f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES},
            "count": int(values.size)}


def meets_slo(result: RequestResult, slos: dict[str, float]) -> bool:
    """A request is good when it succeeded and every given SLO holds (ITL: its worst gap)."""
    if not result.ok:
        return False
    observed = {"ttft": result.ttft_s, "tpot": result.tpot_s, "e2el": result.e2el_s,
                "itl": max(result.itl_s, default=None)}
    return all(observed[key] is None or observed[key] <= bound for key, bound in slos.items())


def summarise(results: Sequence[RequestResult], duration_s: float, slos: dict[str, float],
              not_sent: int = 0) -> dict:
    """All figures of one run (one target at one load level)."""
    ok = [r for r in results if r.ok]
    errors = Counter(r.error_type for r in results if not r.ok)
    if not_sent:
        errors["not_sent"] = not_sent
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.output_tokens or 0 for r in ok)
    good = sum(meets_slo(r, slos) for r in ok)
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    return {
        "requests": len(results) + not_sent,
        "sent": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok) + not_sent,
        "errors": dict(sorted(errors.items())),
        "status_codes": dict(sorted(Counter(str(r.status) for r in results).items())),
        "duration_s": duration_s,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "usage_prompt_tokens_all": sum(r.prompt_tokens or 0 for r in results),
        "usage_output_tokens_all": sum(r.output_tokens or 0 for r in results),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(output_tokens),
        "total_token_throughput": per_s(prompt_tokens + output_tokens),
        "slo_s": slos,
        "good_requests": good if slos else None,
        "goodput": per_s(good) if slos else None,
        "ttft_ms": distribution(r.ttft_s for r in ok),
        "tpot_ms": distribution(t for r in ok if (t := r.tpot_s) is not None),
        "itl_ms": distribution(x for r in ok for x in r.itl_s),
        "e2el_ms": distribution(r.e2el_s for r in ok),
    }


RATIO_KEYS = (
    ("request_throughput", None), ("output_throughput", None), ("total_token_throughput", None), ("goodput", None),
    ("ttft_ms", "p50"), ("ttft_ms", "p99"), ("tpot_ms", "p50"), ("tpot_ms", "p99"), ("itl_ms", "p50"),
    ("e2el_ms", "p50"), ("e2el_ms", "p99"),
)


def ratio_name(key: str, stat: str | None) -> str:
    return key if stat is None else f"{key.removesuffix('_ms')}_{stat}"


def ratios(summary: dict, baseline: dict) -> dict[str, float | None]:
    """summary / baseline for throughput (higher is better) and latency (lower is better) figures."""
    out = {}
    for key, stat in RATIO_KEYS:
        a, b = summary.get(key), baseline.get(key)
        if stat is not None:
            a, b = (a or {}).get(stat), (b or {}).get(stat)
        out[ratio_name(key, stat)] = a / b if a is not None and b else None
    return out
