"""Admission control, API-key checks and settings parsing, without a model."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Gauge

from service.admission import AdmissionController, AdmissionRejected
from service.auth import key_matches
from service.cli import main as cli_main
from service.cli import settings_from_args
from service.settings import Settings


def _gauges() -> tuple[Gauge, Gauge]:
    registry = CollectorRegistry()
    return Gauge("running", "r", registry=registry), Gauge("waiting", "w", registry=registry)


def test_admission_bounds_running_and_queued():
    running, waiting = _gauges()
    controller = AdmissionController(max_running=2, max_queued=1, running=running, waiting=waiting)

    async def scenario() -> None:
        release = asyncio.Event()
        entered: list[int] = []

        async def hold(i: int) -> None:
            async with controller.slot():
                entered.append(i)
                await release.wait()

        tasks = [asyncio.create_task(hold(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert entered == [0, 1]  # the third waits in the queue
        assert (running._value.get(), waiting._value.get()) == (2, 1)
        with pytest.raises(AdmissionRejected):
            async with controller.slot():
                pass
        release.set()
        await asyncio.gather(*tasks)
        assert entered == [0, 1, 2]
        assert (running._value.get(), waiting._value.get(), controller.in_flight) == (0, 0, 0)

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_no_trace():
    running, waiting = _gauges()
    controller = AdmissionController(max_running=1, max_queued=1, running=running, waiting=waiting)

    async def scenario() -> None:
        release = asyncio.Event()

        async def hold() -> None:
            async with controller.slot():
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert (controller.in_flight, waiting._value.get()) == (1, 0)
        release.set()
        await holder
        assert (controller.in_flight, running._value.get()) == (0, 0)

    asyncio.run(scenario())


def test_key_matches():
    assert key_matches("b", ("a", "b"))
    assert not key_matches("c", ("a", "b"))
    assert not key_matches("", ("a",))


def test_api_keys_from_env(monkeypatch):
    monkeypatch.setenv("LEANSERVE_API_KEYS", "k1, k2,,")
    monkeypatch.setenv("LEANSERVE_PORT", "9001")
    settings = Settings()
    assert settings.api_keys == ("k1", "k2")
    assert settings.port == 9001


def test_cli_flags_override_env(monkeypatch):
    import argparse

    from service.cli import add_settings_flags

    monkeypatch.setenv("LEANSERVE_PORT", "9001")
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    args = parser.parse_args(["--port", "8123", "--api-key", "a", "--api-key", "b", "--enforce-eager"])
    settings = settings_from_args(args)
    assert (settings.port, settings.api_keys, settings.enforce_eager) == (8123, ("a", "b"), True)
    assert settings_from_args(parser.parse_args([])).port == 9001


def test_invalid_setting_is_refused():
    with pytest.raises(SystemExit):
        cli_main(["serve", "--port", "not-a-number"])
