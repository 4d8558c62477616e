"""Pure logic of `leanserve bench`: percentiles, goodput, SLO parsing, ITL, ratios, URL checks."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.bench.cli import build_parser, is_loopback_url, normalise_base_url, parse_list
from benchmarks.bench.client import Endpoint, RequestResult, build_payload
from benchmarks.bench.datasets import BenchRequest
from benchmarks.bench.runner import LoadLevel, arrival_offsets
from benchmarks.bench.stats import distribution, meets_slo, parse_duration, parse_slo, ratios, summarise


def ok_result(index: int, ttft: float, e2el: float, tokens: int, chunks: list[float] | None = None,
              prompt: int = 10) -> RequestResult:
    chunks = chunks or list(np.linspace(ttft, e2el, tokens))
    return RequestResult(index, True, ttft_s=ttft, e2el_s=e2el, chunk_times_s=chunks, prompt_tokens=prompt,
                         output_tokens=tokens, usage_reported=True, status=200)


def test_distribution_matches_numpy_linear_percentiles() -> None:
    values = [0.001 * v for v in (5, 1, 4, 2, 3, 10, 7, 9, 8, 6)]
    d = distribution(values)
    assert d["count"] == 10
    assert d["mean"] == pytest.approx(5.5)
    assert d["p50"] == pytest.approx(5.5)
    assert d["p90"] == pytest.approx(9.1)
    assert d["p99"] == pytest.approx(9.91)


def test_distribution_of_nothing_is_none_not_zero() -> None:
    assert distribution([]) == {"mean": None, "p50": None, "p90": None, "p99": None, "count": 0}


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("0.5s", 0.5), ("250", 0.25), ("1500us", 0.0015),
                                           (" 2 s ", 2.0), ("1e2ms", 0.1)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "fast", "-5ms", "0ms", "5 minutes"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_slo() -> None:
    assert parse_slo("ttft=500ms,tpot=50ms") == {"ttft": 0.5, "tpot": 0.05}
    assert parse_slo("E2EL=2s, itl=0.1s") == {"e2el": 2.0, "itl": 0.1}
    assert parse_slo(None) == {} and parse_slo("") == {}
    for bad in ("ttft", "latency=5ms", "ttft=5ms,ttft=6ms", "ttft=abc"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_slo_flag_errors_are_argparse_errors() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--base-url", "http://127.0.0.1:1", "--slo", "ttft=soon"])


def test_tpot_excludes_the_first_token() -> None:
    r = ok_result(0, ttft=0.2, e2el=1.2, tokens=11)
    assert r.tpot_s == pytest.approx(0.1)
    assert ok_result(0, ttft=0.2, e2el=0.2, tokens=1, chunks=[0.2]).tpot_s is None


def test_itl_one_token_per_chunk_is_the_chunk_gaps() -> None:
    r = ok_result(0, 0.1, 0.4, 4, chunks=[0.1, 0.2, 0.25, 0.4])
    assert r.itl_s == pytest.approx([0.1, 0.05, 0.15])


def test_itl_spreads_multi_token_chunks_per_token() -> None:
    # 1 + 2*2 tokens in 3 chunks: each later chunk carries 2 tokens -> 2 gaps of half its gap each.
    r = ok_result(0, 0.1, 0.5, 5, chunks=[0.1, 0.3, 0.5])
    assert r.itl_s == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert sum(r.itl_s) == pytest.approx(r.e2el_s - r.ttft_s)
    uneven = ok_result(0, 0.1, 0.5, 6, chunks=[0.1, 0.3, 0.5])  # 5 tokens over 2 chunks
    assert len(uneven.itl_s) == 5 and sum(uneven.itl_s) == pytest.approx(0.4)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    results = [ok_result(0, 0.1, 1.0, 10), ok_result(1, 0.6, 1.5, 10), ok_result(2, 0.1, 3.0, 10)]
    slos = {"ttft": 0.5, "tpot": 0.2}
    assert [meets_slo(r, slos) for r in results] == [True, False, False]
    s = summarise(results, duration_s=2.0, slos=slos)
    assert s["good_requests"] == 1 and s["goodput"] == pytest.approx(0.5)
    assert summarise(results, 2.0, {})["goodput"] is None


def test_errors_are_counted_not_dropped() -> None:
    results = [ok_result(0, 0.1, 1.0, 10, prompt=7),
               RequestResult(1, False, status=400, error_type="http_400:invalid_value"),
               RequestResult(2, False, status=400, error_type="http_400:invalid_value"),
               RequestResult(3, False, status=None, error_type="transport:ConnectError")]
    s = summarise(results, duration_s=4.0, slos={"ttft": 1.0}, not_sent=2)
    assert s["requests"] == 6 and s["sent"] == 4 and s["completed"] == 1 and s["failed"] == 5
    assert s["errors"] == {"http_400:invalid_value": 2, "transport:ConnectError": 1, "not_sent": 2}
    assert s["status_codes"] == {"200": 1, "400": 2, "None": 1}
    assert s["ttft_ms"]["count"] == 1
    assert s["prompt_tokens"] == 7 and s["output_tokens"] == 10
    assert s["request_throughput"] == pytest.approx(0.25)
    assert s["output_throughput"] == pytest.approx(2.5)
    assert s["total_token_throughput"] == pytest.approx(17 / 4)


def test_ratios_against_the_first_target() -> None:
    base = summarise([ok_result(0, 0.1, 1.1, 11)], 1.0, {})
    other = summarise([ok_result(0, 0.2, 1.2, 11)], 2.0, {})
    r = ratios(other, base)
    assert r["output_throughput"] == pytest.approx(0.5)
    assert r["ttft_p50"] == pytest.approx(2.0)
    assert r["goodput"] is None


@pytest.mark.parametrize("url, loopback", [
    ("http://127.0.0.1:8000", True), ("http://localhost:8000/v1", True), ("http://[::1]:8000", True),
    ("http://127.8.9.10", True), ("http://10.0.0.1:8000", False), ("https://api.openai.com/v1", False),
    ("http://192.168.1.5", False), ("not a url", False),
])
def test_loopback_check(url: str, loopback: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: (
        [(0, 0, 0, "", ("93.184.216.34", 0))] if host == "api.openai.com" else real(host, *a, **k)))
    assert is_loopback_url(url) is loopback


def test_remote_targets_are_refused_without_allow_remote(capsys: pytest.CaptureFixture) -> None:
    from benchmarks.bench.cli import main

    with pytest.raises(SystemExit):
        main(["--base-url", "http://10.1.2.3:8000"])
    assert "--allow-remote" in capsys.readouterr().err


def test_base_url_forms() -> None:
    assert normalise_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert normalise_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert parse_list("1,4,16", int) == [1, 4, 16]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_list("0,4", int)


def test_payloads_stream_with_usage() -> None:
    request = BenchRequest("Hi", 8, images=("data:image/png;base64,AAAA",))
    completion = build_payload(Endpoint("http://x", "m"), request)
    assert completion["stream"] and completion["stream_options"] == {"include_usage": True}
    assert completion["prompt"] == "Hi" and completion["max_tokens"] == 8 and completion["ignore_eos"]
    chat = build_payload(Endpoint("http://x", "m", api="chat", ignore_eos=False), request)
    assert "ignore_eos" not in chat
    content = chat["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Hi"} and content[1]["image_url"]["url"].startswith("data:")


def test_poisson_arrivals_are_seeded_and_have_the_right_rate() -> None:
    a = arrival_offsets(2000, rate=4.0, seed=3)
    assert a == arrival_offsets(2000, rate=4.0, seed=3) and a != arrival_offsets(2000, rate=4.0, seed=4)
    assert a[0] == 0 and all(x <= y for x, y in zip(a, a[1:]))
    assert len(a) / a[-1] == pytest.approx(4.0, rel=0.1)
    assert LoadLevel(request_rate=2.0, concurrency=4).label == "rate=2/s, c≤4"
