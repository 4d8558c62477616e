"""What a response is made of, gathered from engine deltas: one accumulator for every endpoint.

``UsageTally`` counts tokens and sums plugins' per-request accounting (it serves streams
too, for ``stream_options.include_usage``); ``ChoiceAccumulator`` also keeps each choice's
text, logprobs and finish reason for a non-streamed answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.protocol import GenerationDelta, TokenLogprob


class UsageTally:
    """``usage`` of one response: prompt and completion tokens, plus ``usage[<plugin>]`` from the engine."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens read from vLLM's prefix cache
        self._plugins: dict[str, dict[str, float]] = {}

    def add(self, delta: GenerationDelta) -> None:
        self.completion_tokens += len(delta.token_ids)
        if delta.expanded_prompt_tokens:
            self.prompt_tokens += delta.expanded_prompt_tokens  # image tokens the model read count as prompt
        if delta.cached_tokens:
            self.cached_tokens += delta.cached_tokens
        if delta.usage:
            self._add_plugin_usage(delta.usage)

    def _add_plugin_usage(self, usage: Mapping[str, Mapping[str, float]]) -> None:
        """Several engine requests (prompts of one /v1/completions call) add up, figure by figure."""
        for plugin, figures in usage.items():
            total = self._plugins.setdefault(plugin, {})
            for name, value in figures.items():
                total[name] = total.get(name, 0) + value

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            **self._plugins,
        }


class ChoiceAccumulator:
    """Every choice of a non-streamed response, indexed as the response numbers them."""

    def __init__(self, num_choices: int, prompt_tokens: int) -> None:
        self.texts: list[list[str]] = [[] for _ in range(num_choices)]
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(num_choices)]
        self.finish_reasons: list[str | None] = [None] * num_choices
        self.usage = UsageTally(prompt_tokens)

    def add(self, index: int, delta: GenerationDelta) -> None:
        self.texts[index].append(delta.text)
        if delta.logprobs:
            self.logprobs[index].extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reasons[index] = delta.finish_reason
        self.usage.add(delta)

    def text(self, index: int) -> str:
        return "".join(self.texts[index])
