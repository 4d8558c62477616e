"""``AdaptiveEngine``: two vLLM engines posing as one, switching writer token by token.

Entropy Adaptive Decoding (Ruan et al., 2025): the small model writes while its
next-token entropy stays low; when the policy (policy.py) finds it too uncertain, the
large model takes over *at that token*, and hands back once confident again.

A hand-over never reorders, duplicates or leaks a token: every token is checked
against its entropy (which the tap sends from the engine core) before it reaches the
client. When the small model's token triggers a hand-over it is discarded and the
large model writes that position instead; the outgoing stream is closed (which aborts
its engine request), so nothing it produced afterwards is seen. The incoming model
continues from the exact token ids produced so far (never re-tokenized text); what
it must prefill beyond its prefix cache is the catch-up, reported in ``usage`` and
metrics.

Each of ``n`` choices switches on its own; stop strings are watched over the joined
answer (stops.py), so one that straddles a hand-over still ends it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from engine.plugins.adaptive.channel import EntropyChannel
from engine.plugins.adaptive.plugin import AdaptiveOptions, AdaptiveSettings, TapOptions
from engine.plugins.adaptive.policy import POLICIES, Model, SwitchPolicy
from engine.plugins.adaptive.stats import CATCHUP_TOKENS, LARGE_FRACTION, SWITCHES, TOKENS
from engine.plugins.adaptive.stops import StopWatcher
from engine.protocol import (
    Engine,
    GenerationDelta,
    GenerationRequest,
    InvalidRequestError,
    MetricUpdate,
    ModelInfo,
    Prompt,
    StatsSink,
)
from engine.streams import merge_streams
from engine.tools import ToolCalling, ToolChoice

if TYPE_CHECKING:
    from engine.factory import EnginePlan

_ENTROPY_WAIT_S = 5.0


@dataclasses.dataclass
class _Tally:
    """One sequence's accounting, reported as ``usage.adaptive``."""

    small_tokens: int = 0
    large_tokens: int = 0
    switches: int = 0
    catchup_tokens: int = 0

    def count(self, writer: Model, tokens: int) -> None:
        if writer == "small":
            self.small_tokens += tokens
        else:
            self.large_tokens += tokens

    def as_usage(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class AdaptiveEngine:
    """An ``Engine`` over a small and a large engine that share one tokenizer."""

    def __init__(self, small: Engine, large: Engine, channel: EntropyChannel, settings: AdaptiveSettings,
                 on_stats: StatsSink | None = None) -> None:
        self._engines: dict[Model, Engine] = {"small": small, "large": large}
        self._channel = channel
        self._settings = settings
        self._on_stats = on_stats
        self._written = {"small": 0, "large": 0}

    def info(self) -> ModelInfo:
        return self._engines["large"].info()

    async def tokenize(self, text: str) -> list[int]:
        return await self._engines["large"].tokenize(text)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self._engines["large"].detokenize(token_ids)

    async def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                          tools: list[dict] | None = None) -> Prompt:
        return await self._engines["large"].render_chat(messages, add_generation_prompt, tools)

    def tool_calling(self, tools: list[dict], choice: ToolChoice, parallel: bool) -> ToolCalling:
        return self._engines["large"].tool_calling(tools, choice, parallel)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Each of the ``n`` choices is its own switching sequence (seed + i when seeded), merged as they come."""
        sampling = request.sampling
        if sampling.n > 1 and sampling.temperature == 0:
            raise InvalidRequestError(f"n must be 1 when using greedy sampling, got {sampling.n}.", param="n")
        choices = [
            self._sequence(dataclasses.replace(
                request, request_id=f"{request.request_id}-c{i}",
                sampling=dataclasses.replace(sampling, n=1, seed=None if sampling.seed is None else sampling.seed + i),
            ), index=i)
            for i in range(sampling.n)
        ]
        async with aclosing(merge_streams(choices)) as merged:
            async for _, delta in merged:
                yield delta

    def _policy(self, options: AdaptiveOptions | None) -> SwitchPolicy | None:
        if options is not None and not options.enabled:
            return None
        chosen = {"policy": self._settings.adaptive_policy, "threshold": self._settings.adaptive_threshold,
                  "window": self._settings.adaptive_window, "min_dwell": self._settings.adaptive_min_dwell}
        if options is not None:
            chosen.update(options.model_dump(include=set(chosen), exclude_none=True))
        policy = chosen.pop("policy")
        return POLICIES[policy](**chosen)

    async def _sequence(self, request: GenerationRequest, index: int) -> AsyncIterator[GenerationDelta]:
        policy = self._policy(request.options.get("adaptive"))
        structured = request.sampling.structured
        if policy is not None and structured is not None:  # a grammar's state does not survive a hand-over
            raise InvalidRequestError("structured output (guided decoding) and adaptive switching cannot run "
                                      "together: send \"adaptive\": {\"enabled\": false} with it",
                                      param=structured.param, code="unsupported_value")
        active: Model = policy.active if policy is not None else "small"
        produced: list[int] = []
        tally = _Tally()
        stops = StopWatcher(request.sampling.stop)
        # A part hands over without writing only small -> large, and the large model writes before it hands
        # back: two parts write at least one token, so this bound is never what ends the answer.
        for part in range(2 * request.sampling.max_tokens + 2):
            tag = self._channel.open()
            inner = GenerationRequest(
                request_id=f"{request.request_id}-{part}",
                prompt=Prompt([*request.prompt.token_ids, *produced], request.prompt.multimodal),
                sampling=dataclasses.replace(  # stops are watched across hand-overs (stops.py)
                    request.sampling, max_tokens=request.sampling.max_tokens - len(produced), stop=(),
                    min_tokens=max(0, request.sampling.min_tokens - len(produced)),
                    prompt_logprobs=request.sampling.prompt_logprobs if part == 0 else None),
                options={**request.options, "adaptive": TapOptions(tap=tag)},
                trace_headers=request.trace_headers,  # each part is one llm_request span in the trace
            )
            position = 0  # output positions of this engine request, as the tap counts them
            try:
                async with aclosing(self._engines[active].generate(inner)) as stream:
                    async for delta in stream:
                        if delta.cached_tokens is not None and part > 0:
                            tally.catchup_tokens += len(inner.prompt.token_ids) - delta.cached_tokens
                        wanted = await self._observe(policy, tag, range(position, position + len(delta.token_ids)),
                                                     active)
                        position += len(delta.token_ids)
                        if wanted == "large" and active == "small":
                            break  # the small model was unsure of this token: the large model rewrites it
                        produced.extend(delta.token_ids)
                        tally.count(active, len(delta.token_ids))
                        text, stopped = stops.feed(delta.text)
                        finished = stopped or delta.finish_reason is not None
                        if finished and not stopped:
                            text += stops.flush()
                        delta = dataclasses.replace(delta, text=text,
                                                    finish_reason="stop" if stopped else delta.finish_reason)
                        yield self._outgoing(delta, index, part, tally if finished else None)
                        if finished:
                            self._report(tally)
                            return
                        if wanted is not None and wanted != active:
                            break  # confident again: the small model continues after this token
            finally:
                self._channel.close(tag)
            active = "large" if active == "small" else "small"
            tally.switches += 1

    async def _observe(self, policy: SwitchPolicy | None, tag: str, positions: range, active: Model) -> Model | None:
        """Feed the policy the entropy of each new token; the writer it wants next (None: no say).

        A delta may carry several tokens (vLLM merges them when the reader lags); the policy
        stops at the first that changes the writer, since the rest belong to a stretch the
        policy has already handed to the other model.
        """
        if policy is None:
            return None
        wanted: Model | None = None
        for position in positions:
            entropy = await self._channel.entropy(tag, position, _ENTROPY_WAIT_S)
            if entropy is not None:
                wanted = policy.observe(entropy)
                if wanted != active:
                    break
        return wanted

    def _outgoing(self, delta: GenerationDelta, index: int, part: int, tally: _Tally | None) -> GenerationDelta:
        usage = None
        if tally is not None:
            usage = {**(delta.usage or {}), "adaptive": tally.as_usage()}
        return dataclasses.replace(delta, index=index, queue_time_s=delta.queue_time_s if part == 0 else None,
                                   cached_tokens=None, usage=usage)

    def _report(self, tally: _Tally) -> None:
        self._written["small"] += tally.small_tokens
        self._written["large"] += tally.large_tokens
        if self._on_stats is None:
            return
        total = self._written["small"] + self._written["large"]
        self._on_stats([
            MetricUpdate(TOKENS, tally.small_tokens, ("small",)),
            MetricUpdate(TOKENS, tally.large_tokens, ("large",)),
            MetricUpdate(SWITCHES, tally.switches),
            MetricUpdate(CATCHUP_TOKENS, tally.catchup_tokens),
            MetricUpdate(LARGE_FRACTION, self._written["large"] / total if total else 0.0),
        ])

    async def check_health(self) -> None:
        for engine in self._engines.values():
            await engine.check_health()

    async def shutdown(self) -> None:
        for engine in self._engines.values():
            await engine.shutdown()
        self._channel.shutdown()


async def build_adaptive_engine(settings: AdaptiveSettings, plan: EnginePlan, on_stats: StatsSink) -> AdaptiveEngine:
    """Start the large engine (the plan's model) and the small one; refuse models whose tokenizers differ."""
    from engine.vllm_engine import VllmEngine

    small_path = plan.context.resolve_model(settings.adaptive_small)
    check_same_tokenizer(plan.context.model_path, small_path)
    channel = EntropyChannel()
    channel.publish()
    channel.start()
    large = await VllmEngine.start(plan, on_stats)
    small_args = {**plan.engine_args, "model": small_path}
    small = await VllmEngine.start(dataclasses.replace(plan, engine_args=small_args), on_stats,
                                   export_vllm_metrics=False)  # vllm:* stay the served (large) model's
    return AdaptiveEngine(small, large, channel, settings, on_stats)


def check_same_tokenizer(large_path: str, small_path: str) -> None:
    """Token ids cross between the models as they are: their vocabularies must be identical."""
    from transformers import AutoTokenizer

    large, small = AutoTokenizer.from_pretrained(large_path), AutoTokenizer.from_pretrained(small_path)
    if large.get_vocab() != small.get_vocab():
        raise ValueError(f"--adaptive-small {small_path} has another tokenizer than --model {large_path}: "
                         "adaptive switching needs models that share one vocabulary")
