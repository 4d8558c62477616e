"""``VllmEngine``: the ``Engine`` protocol on vLLM's in-process ``AsyncLLM`` (V1).

The engine core runs in a subprocess that vLLM spawns; this object lives in the
gateway's event loop, so everything here must stay cheap per token: it only
translates vLLM's ``RequestOutput`` deltas into ``GenerationDelta`` and lets the
active plugins see each request's options on the way in and its output at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from vllm.exceptions import VLLMClientError
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

from engine.plugin import REQUEST_ID_KEY, ActivePlugin, FinishedRequest
from engine.protocol import (
    EngineDeadError,
    GenerationDelta,
    GenerationRequest,
    InvalidRequestError,
    MetricUpdate,
    ModelInfo,
    Prompt,
    StatsSink,
)
from engine.tools import ToolCalling, ToolChoice
from engine.video_decoding import with_decoded_videos
from engine.vllm_args import async_engine_args
from engine.vllm_convert import (
    engine_queue_time,
    input_modalities,
    prompt_token_logprobs,
    to_sampling_params,
    to_vllm_prompt,
    token_logprobs,
)
from engine.vllm_stats import NoVllmPrometheus, plugin_stat_logger
from engine.vllm_tool_calls import messages_for_template, tool_calling

if TYPE_CHECKING:
    from engine.factory import EnginePlan


def _expanded_tokens(output: Any, request: GenerationRequest) -> int | None:
    """Placeholder tokens vLLM's processor added to a multimodal prompt (each image's k tokens, less its one)."""
    if not request.prompt.multimodal or output.prompt_token_ids is None:
        return None
    return len(output.prompt_token_ids) - len(request.prompt.token_ids)


class VllmEngine:
    """An ``Engine`` backed by one vLLM ``AsyncLLM``."""

    def __init__(self, llm: AsyncLLM, info: ModelInfo, plugins: Sequence[ActivePlugin] = (),
                 on_stats: StatsSink | None = None) -> None:
        self._llm = llm
        self._info = info
        self._plugins = tuple(plugins)
        self._on_stats = on_stats
        self._tokenizer = llm.get_tokenizer()
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    @classmethod
    async def start(cls, plan: EnginePlan, on_stats: StatsSink | None = None,
                    export_vllm_metrics: bool = True) -> VllmEngine:
        """Load the model the plan names, with its plugins; runs vLLM's blocking start-up off the event loop.

        ``on_stats`` receives the metric updates of plugins (per engine step and per request).
        ``export_vllm_metrics=False`` for a second engine in the process: the ``vllm:*`` series
        stay the first engine's (vllm_stats.NoVllmPrometheus says why).
        """
        args = async_engine_args(plan.engine_args)
        observers = [observer for item in plan.plugins
                     if (observer := item.plugin.step_observer(item.settings, plan.context)) is not None]
        loggers: list[type] = [plugin_stat_logger(observers, on_stats)] if observers and on_stats else []
        if not export_vllm_metrics:
            loggers.append(NoVllmPrometheus)
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=loggers or None)
        if observers and on_stats:
            on_stats([update for observe in observers for update in observe(None)])  # their series, at zero
        options = {item.name: item.plugin.request_options for item in plan.plugins if item.plugin.request_options}
        info = ModelInfo(name=plan.served_model_name, max_model_len=llm.model_config.max_model_len,
                         request_options=options, disabled_options=plan.disabled_options,
                         modalities=input_modalities(llm.model_config))
        return cls(llm, info, plan.plugins, on_stats)

    def info(self) -> ModelInfo:
        return self._info

    async def tokenize(self, text: str) -> list[int]:
        """Off the event loop, as vLLM's own server does: a long prompt does not stall other
        streams, and requests arriving together reach the engine together (one prefill step)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._tokenizer_pool, partial(self._tokenizer.encode, text, add_special_tokens=False),
            )
        except Exception as error:  # text the tokenizer cannot take: the request's fault, never a 500
            raise InvalidRequestError(f"the text could not be tokenized: {error}", param="prompt",
                                      code="tokenization_error") from error

    async def detokenize(self, token_ids: list[int]) -> str:
        if any(token_id >= len(self._tokenizer) for token_id in token_ids):
            raise InvalidRequestError(f"token ids must be below the vocabulary size {len(self._tokenizer)}",
                                      param="tokens")
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_pool, partial(self._tokenizer.decode, token_ids))

    async def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                          tools: list[dict] | None = None) -> Prompt:
        messages, template_tools = messages_for_template(self._tokenizer.chat_template, messages, tools)
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tools=template_tools, tokenize=False, add_generation_prompt=add_generation_prompt,
            )
        except Exception as error:  # jinja errors: a message the template cannot render
            raise InvalidRequestError(f"chat template failed: {error}", param="messages",
                                      code="chat_template_error") from error
        return Prompt(await self.tokenize(text))

    def tool_calling(self, tools: list[dict], choice: ToolChoice, parallel: bool) -> ToolCalling:
        return tool_calling(self._tokenizer, tools, choice, parallel)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        num_top = request.sampling.logprobs
        output_tokens = [0] * request.sampling.n
        first = True
        try:
            params = to_sampling_params(request.sampling, self._sampling_extra_args(request))
            request = replace(request, prompt=await with_decoded_videos(request.prompt))  # plugins see the frames
            prompt = to_vllm_prompt(request.prompt, self._processor_kwargs(request), self._cache_salt(request))
            async for output in self._llm.generate(prompt, params, request.request_id,
                                                    trace_headers=request.trace_headers):
                queue_time = engine_queue_time(output) if first else None
                cached = output.num_cached_tokens if first else None
                expanded = _expanded_tokens(output, request) if first else None
                prompt_logprobs = (prompt_token_logprobs(output, request.sampling.prompt_logprobs)
                                   if first and request.sampling.prompt_logprobs is not None else None)
                first = False
                for choice in output.outputs:
                    output_tokens[choice.index] += len(choice.token_ids)
                usage = None
                if output.finished:
                    usage = self._finish_accounting(FinishedRequest(request, tuple(output_tokens), output))
                for position, choice in enumerate(output.outputs):
                    yield GenerationDelta(
                        index=choice.index,
                        text=choice.text,
                        token_ids=list(choice.token_ids),
                        finish_reason=choice.finish_reason,
                        logprobs=token_logprobs(choice, num_top) if num_top is not None else None,
                        queue_time_s=queue_time,
                        cached_tokens=cached if position == 0 else None,
                        prompt_logprobs=prompt_logprobs if position == 0 else None,
                        expanded_prompt_tokens=expanded if position == 0 else None,
                        usage=usage if position == len(output.outputs) - 1 else None,
                    )
        except VllmEngineDeadError as error:
            raise EngineDeadError(str(error) or "the engine died") from error
        except (VLLMClientError, ValueError) as error:
            message = error.args[0] if error.args else str(error)
            param = getattr(error, "parameter", None)
            if param is None and request.sampling.structured is not None:  # e.g. a schema xgrammar cannot compile
                param = request.sampling.structured.param
            raise InvalidRequestError(message, param=param) from error

    def _sampling_extra_args(self, request: GenerationRequest) -> dict[str, Any]:
        """Each plugin's per-request arguments, under its name, and the request id, for code running inside vLLM."""
        extra: dict[str, Any] = {REQUEST_ID_KEY: request.request_id} if self._plugins else {}
        for item in self._plugins:
            args = item.plugin.sampling_args(item.settings, request.options.get(item.name))
            if args is not None:
                extra[item.name] = dict(args)
        return extra

    def _processor_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        """Plugins' entries in ``mm_processor_kwargs``, for prompts with images or video."""
        if not request.prompt.multimodal:
            return {}
        kwargs: dict[str, Any] = {}
        for item in self._plugins:
            kwargs.update(item.plugin.processor_args(item.settings, request.options.get(item.name)) or {})
        return kwargs

    def _cache_salt(self, request: GenerationRequest) -> str | None:
        """The plugins' prefix-cache salts for this prompt, joined (None: no plugin changes its KV entries)."""
        salts = [salt for item in self._plugins
                 if (salt := item.plugin.cache_salt(item.settings, request.options.get(item.name),
                                                    len(request.prompt.token_ids))) is not None]
        return "|".join(salts) if salts else None

    def _finish_accounting(self, finished: FinishedRequest) -> dict[str, Mapping[str, float]]:
        """Plugins' per-request usage (returned) and metric updates (sent to the stats sink)."""
        usage: dict[str, Mapping[str, float]] = {}
        updates: list[MetricUpdate] = []
        for item in self._plugins:
            options = finished.request.options.get(item.name)
            accounting = item.plugin.request_finished(item.settings, options, finished)
            if accounting is None:
                continue
            if accounting.usage:
                usage[item.name] = dict(accounting.usage)
            updates.extend(accounting.updates)
        if updates and self._on_stats is not None:
            self._on_stats(updates)
        return usage

    async def check_health(self) -> None:
        if self._llm.errored:
            raise EngineDeadError(str(self._llm.dead_error))
        try:
            await self._llm.check_health()
        except Exception as error:
            raise EngineDeadError(str(error)) from error

    async def shutdown(self) -> None:
        self._llm.shutdown()
