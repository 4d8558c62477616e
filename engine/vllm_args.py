"""Settings, plugins and ``--engine-arg`` -> the keyword arguments of vLLM's ``AsyncEngineArgs``.

Three sources, one rule each: leanserve's own engine flags; what each active plugin
contributes (two plugins may not set one argument); and ``--engine-arg NAME=VALUE`` for
every other vLLM argument (parallelism, the distributed executor, ...), so a ``vllm serve``
user finds everything without a new leanserve setting per argument. An argument that has a
leanserve flag must be set with that flag, so there is one way to set each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from service.settings import CoreSettings

CPU_DEFAULT_KV_CACHE_GIB = 4.0

# vLLM engine argument -> the leanserve flag that sets it.
FLAG_OF_ARG = {
    "model": "--model",
    "served_model_name": "--served-model-name",
    "max_model_len": "--max-model-len",
    "dtype": "--dtype",
    "enforce_eager": "--enforce-eager",
    "max_num_seqs": "--max-num-seqs",
    "tensor_parallel_size": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "kv_cache_memory_bytes": "--kv-cache-gib",
    "seed": "--seed",
    "otlp_traces_endpoint": "--otlp-traces-endpoint",
}


def core_engine_args(settings: CoreSettings, model_path: str, served_model_name: str) -> dict[str, Any]:
    """leanserve's own engine flags, by vLLM's names (unset optional flags are left to vLLM)."""
    args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": [served_model_name],
        "dtype": settings.dtype,
        "enforce_eager": settings.enforce_eager,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "seed": settings.seed,
    }
    optional = {
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "kv_cache_memory_bytes": None if settings.kv_cache_gib is None else int(settings.kv_cache_gib * (1 << 30)),
        "otlp_traces_endpoint": settings.otlp_traces_endpoint,  # vLLM's llm_request spans join ours
    }
    args.update({name: value for name, value in optional.items() if value is not None})
    return args


def merge_engine_args(
    core: Mapping[str, Any], from_plugins: Sequence[tuple[str, Mapping[str, Any]]], extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Core flags, then plugins' contributions, then ``--engine-arg``s; raises ValueError on a clash."""
    merged = dict(core)
    owner = {name: FLAG_OF_ARG.get(name, "leanserve") for name in merged}
    for plugin_name, contributed in from_plugins:
        for name, value in contributed.items():
            if name in owner:
                raise ValueError(f"plugin {plugin_name} sets engine argument {name!r}, already set by {owner[name]}")
            merged[name] = value
            owner[name] = f"the {plugin_name} plugin"
    for name, value in extra.items():
        if name in FLAG_OF_ARG:
            raise ValueError(f"--engine-arg {name}: use {FLAG_OF_ARG[name]} instead")
        if name in owner:
            raise ValueError(f"--engine-arg {name}: already set by {owner[name]}")
        merged[name] = value
        owner[name] = "--engine-arg"
    if merged.get("logits_processors") and merged.get("speculative_config"):
        # vLLM 0.32 refuses this pair at engine start (v1/sample/logits_processor/__init__.py); say it now.
        raise ValueError(f"vLLM runs no custom logits processors (from {owner['logits_processors']}) with "
                         f"speculative decoding (from {owner['speculative_config']}): choose one")
    return merged


def resolve_dtype(requested: str) -> str:
    """``auto`` means float32 on CPUs without native bf16 (AVX512-BF16/AMX).

    vLLM's CPU build picks bf16 for ``auto``; on an AVX2-only CPU bf16 matmuls
    fall back to slow paths: SmolLM2-135M decoded 3.2x faster and prefilled 6x
    faster in float32 on this project's 2-core AMD EPYC (benchmarks/RESULTS.md).
    """
    import torch
    from vllm.platforms import current_platform

    if requested == "auto" and current_platform.is_cpu() and not torch.cpu._is_avx512_bf16_supported():
        return "float32"
    return requested


def async_engine_args(args: Mapping[str, Any]) -> AsyncEngineArgs:
    """vLLM's ``AsyncEngineArgs`` with this platform's defaults; raises ValueError naming an unknown argument."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    known = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown vLLM engine argument(s): {', '.join(unknown)}")
    resolved = {**args, "dtype": resolve_dtype(args.get("dtype", "auto"))}
    resolved["structured_outputs_config"] = structured_outputs_config(resolved.get("structured_outputs_config"))
    if "kv_cache_memory_bytes" not in resolved and current_platform.is_cpu():
        # vLLM's CPU default (a fraction of the NUMA node) fails on small machines.
        resolved["kv_cache_memory_bytes"] = int(CPU_DEFAULT_KV_CACHE_GIB * (1 << 30))
    return AsyncEngineArgs(**resolved)


def structured_outputs_config(given: Any = None) -> Any:
    """vLLM's guided-decoding settings, JSON compact by default: a small model allowed free whitespace
    between JSON tokens fills ``max_tokens`` with newlines and never closes the object. An
    ``--engine-arg structured_outputs_config={...}`` overrides it."""
    from vllm.config import StructuredOutputsConfig

    if isinstance(given, StructuredOutputsConfig):
        return given
    return StructuredOutputsConfig(**{"backend": "xgrammar", "disable_any_whitespace": True, **(given or {})})
