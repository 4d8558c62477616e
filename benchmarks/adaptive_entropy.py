"""How exact is the entropy EntropyTap reports? Compared, token by token, with the entropy of the
full next-token distribution vLLM itself returns (``logprobs=-1``, raw logprobs: before temperature).

    python -m benchmarks.adaptive_entropy --model default --prompts 8 --max-tokens 32 --out out.json

Runs one real vLLM engine in this process with the tap installed (engine core in its own
process, as when serving) and the gateway's end of the side channel. Reports the largest and
mean absolute error in nats, the count of tokens with and without a tap record, and the time
the record waited for (or beat) its token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
import uuid
from pathlib import Path

from benchmarks.bench.chat_prompts import CHAT_PROMPTS

TAP = "engine.plugins.adaptive.entropy:EntropyTap"


async def measure(model_dir: str, prompts: list[str], max_tokens: int, temperature: float) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from engine.plugins.adaptive.channel import EntropyChannel
    from engine.vllm_args import async_engine_args

    channel = EntropyChannel()
    channel.publish()
    channel.start()
    args = async_engine_args({"model": model_dir, "enforce_eager": True, "max_model_len": 2048, "max_logprobs": -1,
                              "logits_processors": [TAP], "kv_cache_memory_bytes": 1 << 30})
    llm = AsyncLLM.from_engine_args(args)
    tokenizer = llm.get_tokenizer()
    errors: list[float] = []
    missing = 0
    try:
        async def one(prompt: str) -> None:
            nonlocal missing
            tag = channel.open()
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer.encode(text, add_special_tokens=False)
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=0, logprobs=-1,
                                    output_kind=RequestOutputKind.DELTA, extra_args={"adaptive": {"tap": tag}})
            position = 0
            async for output in llm.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
                for distribution in output.outputs[0].logprobs or []:
                    exact = -sum(math.exp(entry.logprob) * entry.logprob for entry in distribution.values()
                                 if entry.logprob > -math.inf)
                    tapped = await channel.entropy(tag, position, timeout_s=5)
                    if tapped is None:
                        missing += 1
                    else:
                        errors.append(abs(tapped - exact))
                    position += 1
            channel.close(tag)

        started = time.monotonic()
        await asyncio.gather(*(one(prompt) for prompt in prompts))
        elapsed = time.monotonic() - started
    finally:
        llm.shutdown()
        channel.shutdown()
    return {"tokens": len(errors) + missing, "missing": missing, "max_abs_error_nats": max(errors, default=0.0),
            "mean_abs_error_nats": sum(errors) / max(len(errors), 1), "seconds": elapsed,
            "prompts": len(prompts), "max_tokens": max_tokens, "temperature": temperature}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    from engine.catalogue import resolve_model
    from service.settings import Settings

    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    model_dir = resolve_model(options.model, Settings().cache_dir).path
    report = asyncio.run(measure(model_dir, list(CHAT_PROMPTS[: options.prompts]), options.max_tokens,
                                 options.temperature))
    report["model"] = options.model
    print(json.dumps(report, indent=2))
    if options.out:
        options.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
