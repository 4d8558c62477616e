"""Console tables and the JSON result file: one place that decides what a result looks like."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks.bench.client import RequestResult
from benchmarks.bench.stats import RATIO_KEYS, ratio_name


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


def request_records(results: Sequence[RequestResult]) -> list[dict]:
    """Per-request rows (milliseconds), kept in the JSON so CDFs can be redrawn later."""
    return [{
        "index": r.index, "ok": r.ok, "status": r.status, "error_type": r.error_type, "error": r.error_message,
        "start_ms": _ms(r.start_s), "ttft_ms": _ms(r.ttft_s), "tpot_ms": _ms(r.tpot_s), "e2el_ms": _ms(r.e2el_s),
        "itl_ms": [round(x * 1000.0, 3) for x in r.itl_s], "prompt_tokens": r.prompt_tokens,
        "output_tokens": r.output_tokens,
    } for r in results]


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_level(level: dict) -> str:
    """A table of one load level: one row per target, then ratios against the first target."""
    header = (f"{'target':<14}{'ok/sent':>9}{'req/s':>8}{'out tok/s':>10}{'tot tok/s':>10}{'goodput':>9}"
              f"{'TTFT p50':>10}{'p90':>8}{'p99':>8}{'TPOT p50':>10}{'p99':>8}{'ITL p50':>9}{'E2E p50':>9}"
              f"{'p99':>8}  errors")
    lines = [f"== {level['label']} (order: {', '.join(level['order'])})", header]
    for name, s in level["runs"].items():
        lines.append(
            f"{name:<14}{s['completed']:>4}/{s['sent']:<4}{_fmt(s['request_throughput'], 2):>8}"
            f"{_fmt(s['output_throughput']):>10}{_fmt(s['total_token_throughput']):>10}"
            f"{_fmt(s['goodput'], 2):>9}{_fmt(s['ttft_ms']['p50']):>10}{_fmt(s['ttft_ms']['p90']):>8}"
            f"{_fmt(s['ttft_ms']['p99']):>8}{_fmt(s['tpot_ms']['p50']):>10}{_fmt(s['tpot_ms']['p99']):>8}"
            f"{_fmt(s['itl_ms']['p50']):>9}{_fmt(s['e2el_ms']['p50']):>9}{_fmt(s['e2el_ms']['p99']):>8}"
            f"  {s['errors'] or ''}")
    for name, r in level.get("ratios", {}).items():
        shown = ", ".join(f"{ratio_name(k, st)} {_fmt(r[ratio_name(k, st)], 3)}" for k, st in RATIO_KEYS
                          if r.get(ratio_name(k, st)) is not None)
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)
