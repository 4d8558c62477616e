"""The plugin contract without a model: discovery, settings composition, the hand-over to vLLM's
processes, per-request options and usage through the gateway, and the speculative plugin's stats."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace

import httpx
import pytest
from pydantic import BaseModel

from engine.plugin import Plugin
from engine.plugins.speculative.stats import METRICS, SpeculationObserver, request_usage
from engine.protocol import GenerationDelta, GenerationRequest
from engine.registry import VLLM_HANDOFF_ENV, hand_over_to_vllm, handed_over, load_plugin, plugin_fields
from service.app import create_app
from service.cli import main as cli_main
from service.settings import Settings, settings_class
from tests.plugins.tally import TallyOptions
from tests.unit.fake_engine import FakeEngine

TALLY = "tests.plugins.tally"


def test_builtin_plugins_are_found_by_name_and_their_flags_are_settings():
    assert {"speculative", "num_speculative_tokens"} <= set(Settings.model_fields)
    assert [group.name for group in Settings().plugin_groups()] == ["speculative", "adaptive", "visual_pruning",
                                                                 "video_pruning", "sparse_prefill"]
    assert Settings().active_plugins() == ()  # off unless switched on
    assert [group.name for group in Settings(speculative="ngram").active_plugins()] == ["speculative"]


def test_an_extra_plugin_adds_its_flags_and_variables(monkeypatch):
    cls = settings_class((TALLY,))
    monkeypatch.setenv("LEANSERVE_TALLY_WEIGHT", "3")
    settings = cls(plugins=(TALLY,))
    assert settings.tally_weight == 3.0
    group = {g.name: g for g in settings.plugin_groups()}["tally"]
    assert group.module == TALLY and group.settings.tally_weight == 3.0
    with pytest.raises(ValueError, match="greater than 0"):
        cls(tally_weight=0)


def test_a_plugin_named_but_not_loaded_is_refused():
    with pytest.raises(ValueError, match="not loaded"):
        Settings(plugins=(TALLY,))


def test_plugin_loading_errors_name_the_module():
    with pytest.raises(ValueError, match="no_such_module"):
        load_plugin("tests.plugins.no_such_module")
    with pytest.raises(ValueError, match="PLUGIN"):
        load_plugin("tests.unit.fake_engine")


class _Clash(BaseModel):
    port: int = 1


class _Unprefixed(BaseModel):
    weight: int = 1


def _plugin(name: str, model: type[BaseModel]) -> Plugin:
    return type("P", (Plugin,), {"name": name, "settings_model": model})()


def test_plugin_settings_carry_the_plugin_name_and_never_clash():
    with pytest.raises(ValueError, match="must contain 'tally'"):
        plugin_fields([_plugin("tally", _Unprefixed)], taken=())
    with pytest.raises(ValueError, match="already taken"):
        plugin_fields([_plugin("port", _Clash)], taken=("port",))


def test_hand_over_reaches_a_fresh_process(monkeypatch):
    import subprocess
    import sys

    settings = settings_class((TALLY,))(speculative="suffix", tally_weight=2.0)
    monkeypatch.delenv(VLLM_HANDOFF_ENV, raising=False)
    hand_over_to_vllm([group for group in settings.plugin_groups() if group.name in ("speculative", "tally")])
    code = ("from engine.registry import handed_over; import json; "
            "print(json.dumps({g.name: g.settings.model_dump(mode='json') for g in handed_over()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == {
        "speculative": {"speculative": "suffix", "num_speculative_tokens": None, "speculative_max_batch": None,
                        "speculative_min_acceptance": None},
        "tally": {"tally": True, "tally_weight": 2.0, "tally_marker_dir": None},
    }
    assert [g.name for g in handed_over()] == ["speculative", "tally"]


def test_bad_plugin_flag_stops_the_cli_before_serving():
    with pytest.raises(SystemExit):
        cli_main(["serve", "--plugins", TALLY, "--tally-weight", "heavy"])


class _PluginEngine(FakeEngine):
    """The scripted engine, taking the tally option and reporting usage as an engine must."""

    def __init__(self) -> None:
        super().__init__()
        self._info = type(self._info)(name="fake", max_model_len=4096, request_options={"tally": TallyOptions})
        self.seen_options: list[dict] = []

    async def generate(self, request: GenerationRequest):
        self.seen_options.append(dict(request.options))
        async for delta in super().generate(request):
            if delta.finish_reason and "tally" in request.options and delta.index == request.sampling.n - 1:
                delta = GenerationDelta(**{**delta.__dict__, "usage": {"tally": {"tokens": 1.5}}})
            yield delta


def _post_all(engine: FakeEngine, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """Each (path, body) in turn through the real app around ``engine``."""

    async def scenario() -> list[httpx.Response]:
        app = create_app(Settings(), "fake", lambda: asyncio.sleep(0, engine))
        async with app.router.lifespan_context(app):
            while not app.state.server.ready:
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return [await client.post(path, json=body) for path, body in requests]

    return asyncio.run(scenario())


def test_gateway_validates_options_once_and_sums_usage_without_knowing_the_plugin():
    engine = _PluginEngine()
    two, plain, bad = _post_all(engine, [
        ("/v1/completions", {"model": "fake", "prompt": ["ab", "cd"], "max_tokens": 2, "tally": {"label": "x"}}),
        ("/v1/completions", {"model": "fake", "prompt": "ab", "max_tokens": 2}),
        ("/v1/completions", {"model": "fake", "prompt": "ab", "max_tokens": 2, "tally": {"label": 7}}),
    ])
    assert two.status_code == 200 and two.json()["usage"]["tally"] == {"tokens": 3.0}  # 2 prompts x 1.5
    assert "tally" not in plain.json()["usage"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tally.label"
    assert engine.seen_options[0] == {"tally": TallyOptions(label="x")} and engine.seen_options[2] == {}


def test_a_disabled_plugins_field_is_refused_not_ignored():
    engine = FakeEngine()
    engine._info = type(engine._info)(name="fake", max_model_len=4096, disabled_options=("tally",))
    (refused,) = _post_all(engine, [("/v1/chat/completions", {
        "model": "fake", "messages": [{"role": "user", "content": "hi"}], "tally": {"label": "x"}})])
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tally" and refused.json()["error"]["code"] == "plugin_disabled"


def test_the_plan_lists_what_each_plugin_brings():
    from engine.factory import plan_engine

    cls = settings_class((TALLY,))
    plan = plan_engine(cls(speculative="ngram", num_speculative_tokens=3, tally=False))
    assert plan.engine_args["speculative_config"]["num_speculative_tokens"] == 3
    assert [item.name for item in plan.plugins] == ["speculative"]
    assert plan.disabled_options == ("adaptive", "visual_pruning", "video_pruning", "sparse_prefill", "tally")
    assert {spec.name for spec in plan.metrics} >= {"leanserve_spec_decode_drafts", "leanserve_tally_weighted_tokens"}
    assert plan.engine_args["served_model_name"] == [plan.served_model_name]


def test_speculation_observer_reports_counts_and_since_start_gauges():
    observe = SpeculationObserver("ngram", 4)
    step = SimpleNamespace(num_running_reqs=3, spec_decoding_stats=SimpleNamespace(
        num_drafts=2, num_draft_tokens=8, num_accepted_tokens=3, num_accepted_tokens_per_pos=[2, 1, 0, 0]))
    first = {(u.name, u.labels): u.value for u in observe(step)}
    assert first[("leanserve_spec_decode_drafts", ("ngram",))] == 2
    # three requests ran, two had drafts verified
    assert first[("leanserve_spec_decode_request_steps", ("ngram", "true"))] == 2
    assert first[("leanserve_spec_decode_request_steps", ("ngram", "false"))] == 1
    assert first[("leanserve_spec_decode_accepted_tokens_by_position", ("ngram", "1"))] == 1
    assert ("leanserve_spec_decode_accepted_tokens_by_position", ("ngram", "2")) not in first
    # two drafts, per-position counts 2, 1, 0, 0: one accepted 1 token, the other 2
    histogram = {labels[1]: v for (name, labels), v in first.items()
                 if name == "leanserve_spec_decode_drafts_by_accepted_length"}
    assert histogram == {"1": 1, "2": 1}
    second = {(u.name, u.labels): u.value for u in observe(step)}
    assert second[("leanserve_spec_decode_acceptance_rate", ("ngram",))] == 6 / 16
    assert second[("leanserve_spec_decode_mean_accepted_length", ("ngram",))] == 1 + 6 / 4
    # a step that verified no drafts: its requests all count as undrafted; an idle report counts nothing
    quiet = observe(SimpleNamespace(num_running_reqs=4, spec_decoding_stats=None))
    assert [(u.name, u.labels, u.value) for u in quiet] == [("leanserve_spec_decode_request_steps", ("ngram", "false"), 4)]
    assert observe(SimpleNamespace(num_running_reqs=0, spec_decoding_stats=None)) == []


def test_every_speculation_series_is_exported_at_zero_before_the_first_step() -> None:
    """A rate() over a series born mid-window is extrapolated from its own first sample, so a panel dividing a
    late-born position by the drafts counter could show more than 100%: the series exist from the start."""
    from prometheus_client import generate_latest

    from service.metrics import declare_plugin_metrics, record_plugin_updates

    declare_plugin_metrics(METRICS)
    record_plugin_updates("zero-model", SpeculationObserver("suffix", 3)(None))
    exported = generate_latest().decode()
    at_zero = re.findall(r'^leanserve_spec_decode_(\w+)_total\{([^}]*model="zero-model"[^}]*)\} 0\.0$', exported,
                         re.MULTILINE)
    positions = {labels for name, labels in at_zero if name == "accepted_tokens_by_position"}
    assert positions == {f'method="suffix",model="zero-model",position="{k}"' for k in range(3)}
    lengths = {labels for name, labels in at_zero if name == "drafts_by_accepted_length"}
    assert lengths == {f'accepted="{k}",method="suffix",model="zero-model"' for k in range(4)}
    assert {name for name, _ in at_zero} >= {"drafts", "draft_tokens", "accepted_tokens", "request_steps"}


def test_a_requests_speculative_usage_adds_up_its_choices_verifications() -> None:
    """vLLM's per-choice histogram: entry j counts the verifications with j drafts accepted."""
    first = SimpleNamespace(histogram=[3, 1, 2], num_draft_tokens=12)  # 6 verifications, 1 + 2 * 2 accepted
    second = SimpleNamespace(histogram=[1, 0, 1], num_draft_tokens=4)
    assert request_usage([first, None, second]) == {"draft_tokens": 16, "accepted_tokens": 7, "steps_with_drafts": 8}
    assert request_usage([]) == {"draft_tokens": 0, "accepted_tokens": 0, "steps_with_drafts": 0}
