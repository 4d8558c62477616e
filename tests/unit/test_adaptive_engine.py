"""AdaptiveEngine's hand-over mechanics on two scripted engines: no gap, duplicate, reorder or leak.

Each scripted engine continues a context with token id = position in the sequence and
text = its own letter, so the output spells who wrote each position. Entropies are
scripted per (writer, position); the real tap and models are tested in integration.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.catalogue import resolve_model
from engine.plugins.adaptive.engine import AdaptiveEngine, check_same_tokenizer
from engine.plugins.adaptive.plugin import AdaptiveOptions, AdaptiveSettings
from engine.plugins.adaptive.stops import StopWatcher
from engine.protocol import (
    GenerationDelta,
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    Prompt,
    SamplingOptions,
    StructuredOutput,
)
from service.settings import Settings

PROMPT = [100, 101, 102]


class ScriptedEngine:
    def __init__(self, letter: str, channel: ScriptedChannel) -> None:
        self.letter, self.channel = letter, channel
        self.produced_after_close = 0

    def info(self) -> ModelInfo:
        return ModelInfo(name="m", max_model_len=4096)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        context = list(request.prompt.token_ids)
        tag = request.options["adaptive"].tap
        self.channel.bind(tag, self.letter, len(context) - len(PROMPT))
        yield GenerationDelta(0, "", [], cached_tokens=len(context) // 2)  # prefill done, nothing yet
        for step in range(request.sampling.max_tokens):
            position = len(context) - len(PROMPT)
            context.append(position)
            last = step == request.sampling.max_tokens - 1
            yield GenerationDelta(0, self.letter, [position], finish_reason="length" if last else None)


class ScriptedChannel:
    """Entropy of (writer, absolute position), served per tag with positions local to the request."""

    def __init__(self, high: dict[str, set[int]]) -> None:
        self.high = high
        self.bound: dict[str, tuple[str, int]] = {}
        self.count = 0

    def open(self) -> str:
        self.count += 1
        return f"{self.count:032x}"

    def bind(self, tag: str, letter: str, offset: int) -> None:
        self.bound[tag] = (letter, offset)

    def close(self, tag: str) -> None:
        self.bound.pop(tag, None)

    async def entropy(self, tag: str, position: int, timeout_s: float) -> float:
        letter, offset = self.bound[tag]
        return 5.0 if offset + position in self.high[letter] else 0.1


def _run(high_small: set[int], high_large: set[int], max_tokens: int = 12, options=None, stop=(), window: int = 1):
    channel = ScriptedChannel({"s": high_small, "L": high_large})
    small, large = ScriptedEngine("s", channel), ScriptedEngine("L", channel)
    settings = AdaptiveSettings(adaptive_small="x", adaptive_threshold=1.0, adaptive_window=window,
                                adaptive_min_dwell=2)
    engine = AdaptiveEngine(small, large, channel, settings)
    request = GenerationRequest("r", Prompt(PROMPT), SamplingOptions(max_tokens=max_tokens, stop=stop),
                                {"adaptive": options} if options else {})

    async def collect():
        return [delta async for delta in engine.generate(request)]

    deltas = asyncio.run(collect())
    text = "".join(d.text for d in deltas)
    ids = [t for d in deltas for t in d.token_ids]
    return text, ids, deltas[-1].usage["adaptive"]


def test_the_large_model_rewrites_the_uncertain_token_and_hands_back_after_its_dwell():
    text, ids, usage = _run(high_small={3}, high_large=set())
    assert ids == list(range(12))  # every position once, in order
    # small writes 0-2; its token 3 was uncertain: discarded, the large writes 3 and 4 (dwell 2), then small.
    assert text == "sssLLsssssss"
    # Catch-up: the scripted engines find half of each context cached: (3 + 3) / 2, then (3 + 5) / 2.
    assert usage == {"small_tokens": 10, "large_tokens": 2, "switches": 2, "catchup_tokens": 3 + 4}


def test_the_large_model_keeps_writing_while_uncertain():
    text, ids, usage = _run(high_small={2}, high_large={2, 3, 4, 5})
    assert ids == list(range(12))
    assert text == "ssLLLLLsssss"
    assert usage["switches"] == 2


def test_switching_off_and_threshold_zero_are_one_model():
    assert _run({1, 2}, set(), options=AdaptiveOptions(enabled=False))[0] == "s" * 12
    assert _run({1, 2}, set(), options=AdaptiveOptions(threshold=0))[0] == "L" * 12


def test_a_request_picks_its_own_policy():
    # Window (0.1, 5.0): its mean 2.55 stays under 3, its 0.8-quantile 4.02 does not.
    assert _run({3}, set(), options=AdaptiveOptions(threshold=3.0, policy="ead"), window=2)[0] == "s" * 12
    assert _run({3}, set(), options=AdaptiveOptions(threshold=3.0, policy="quantile"), window=2)[0] == "sssLLsssssss"
    # Two uncertain small tokens close together: the windowed rules' dwell lets the second through (the small model
    # writes 5, and the large model takes over only at 6); token-level deferral hands position 5 itself over.
    assert _run({3, 5}, set(), options=AdaptiveOptions(threshold=3.0, policy="quantile"), window=2)[0] == "sssLLsLLssss"
    assert _run({3, 5}, set(), options=AdaptiveOptions(threshold=3.0, policy="token"), window=2)[0] == "sssLLLLsssss"


def test_a_request_sets_the_window_and_the_dwell():
    # The server's dwell is 2; this request asks the large model to write at least 4 tokens.
    assert _run({3}, set(), options=AdaptiveOptions(min_dwell=4, policy="token"))[0] == "sssLLLLsssss"
    # A window of 3 low entropies before handing back: the large model writes 3, 4, 5.
    assert _run({3}, set(), options=AdaptiveOptions(window=3, policy="token"))[0] == "sssLLLssssss"


def test_models_with_different_vocabularies_are_refused(tmp_path):
    model = resolve_model("default", Settings().cache_dir).path
    other = tmp_path / "other"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if Path(model, name).exists():
            shutil.copy(Path(model, name), other / name)
    check_same_tokenizer(model, str(other))  # same files: accepted
    data = json.loads((other / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzz-new-token"] = len(data["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another tokenizer"):
        check_same_tokenizer(model, str(other))


def test_each_choice_switches_on_its_own():
    channel = ScriptedChannel({"s": {2}, "L": set()})
    settings = AdaptiveSettings(adaptive_small="x", adaptive_threshold=1.0, adaptive_window=1, adaptive_min_dwell=2)
    engine = AdaptiveEngine(ScriptedEngine("s", channel), ScriptedEngine("L", channel), channel, settings)
    request = GenerationRequest("r", Prompt(PROMPT), SamplingOptions(max_tokens=6, n=3, seed=5))

    async def collect():
        return [delta async for delta in engine.generate(request)]

    deltas = asyncio.run(collect())
    for index in range(3):
        own = [d for d in deltas if d.index == index]
        assert "".join(d.text for d in own) == "ssLLss"
        assert [t for d in own for t in d.token_ids] == list(range(6))
        assert own[-1].usage["adaptive"]["switches"] == 2
    greedy = GenerationRequest("g", Prompt(PROMPT), SamplingOptions(max_tokens=6, n=2, temperature=0))
    with pytest.raises(InvalidRequestError, match="greedy"):
        asyncio.run(anext(engine.generate(greedy)))


def test_a_stop_string_across_a_hand_over_ends_the_answer():
    text, ids, usage = _run(high_small={3}, high_large=set(), options=None, stop=("sL",))
    assert text == "ss"  # "sss" + "L": the stop string straddles the hand-over; cut before it
    assert usage["switches"] == 1


def test_stop_watcher_holds_back_only_what_may_begin_a_stop():
    watcher = StopWatcher(["END", "xy"])
    assert watcher.feed("abcE") == ("abc", False)
    assert watcher.feed("N") == ("", False)
    assert watcher.feed("q") == ("ENq", False)
    assert watcher.feed("x") == ("", False)
    assert watcher.feed("y tail") == ("", True)
    other = StopWatcher(["END"])
    assert other.feed("the EN") == ("the ", False) and other.flush() == "EN"


def test_guided_decoding_is_refused_while_switching_and_served_with_switching_off():
    channel = ScriptedChannel({"s": set(), "L": set()})
    settings = AdaptiveSettings(adaptive_small="x", adaptive_threshold=1.0, adaptive_window=1, adaptive_min_dwell=2)
    engine = AdaptiveEngine(ScriptedEngine("s", channel), ScriptedEngine("L", channel), channel, settings)
    sampling = SamplingOptions(max_tokens=3, structured=StructuredOutput("json_object"))

    async def collect(options):
        request = GenerationRequest("r", Prompt(PROMPT), sampling, options)
        return [delta async for delta in engine.generate(request)]

    with pytest.raises(InvalidRequestError) as refused:
        asyncio.run(collect({}))
    assert refused.value.param == "response_format"
    assert "".join(d.text for d in asyncio.run(collect({"adaptive": AdaptiveOptions(enabled=False)}))) == "sss"
