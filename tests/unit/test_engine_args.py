"""Settings, plugins and --engine-arg reach vLLM's AsyncEngineArgs, each argument set one way only."""

from __future__ import annotations

import dataclasses

import pytest

from engine.vllm_args import FLAG_OF_ARG, async_engine_args, core_engine_args, merge_engine_args
from service.cli import add_settings_flags, settings_from_args
from service.cli import main as cli_main
from service.settings import Settings

ENGINE_FLAGS = dict(max_model_len=1024, dtype="bfloat16", enforce_eager=True, max_num_seqs=3,
                    tensor_parallel_size=2, gpu_memory_utilization=0.5, kv_cache_gib=0.5, seed=7,
                    otlp_traces_endpoint="http://collector:4317")


def test_every_engine_flag_reaches_the_engine_args():
    args = core_engine_args(Settings(**ENGINE_FLAGS), "/models/m", "served")
    assert args == {
        "model": "/models/m", "served_model_name": ["served"], "max_model_len": 1024, "dtype": "bfloat16",
        "enforce_eager": True, "max_num_seqs": 3, "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
        "kv_cache_memory_bytes": 1 << 29, "seed": 7, "otlp_traces_endpoint": "http://collector:4317",
    }
    assert set(args) == set(FLAG_OF_ARG)
    for flag in FLAG_OF_ARG.values():  # each named flag exists
        assert flag.removeprefix("--").replace("-", "_") in Settings.model_fields


def test_engine_arg_flag_parses_json_values_and_text():
    import argparse

    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    args = parser.parse_args(["--engine-arg", "pipeline_parallel_size=2", "--engine-arg",
                              "distributed-executor-backend=ray", "--engine-arg", 'hf_overrides={"a": [1, 2]}'])
    settings = settings_from_args(args)
    assert settings.engine_args == {"pipeline_parallel_size": 2, "distributed_executor_backend": "ray",
                                    "hf_overrides": {"a": [1, 2]}}


def test_engine_args_from_env(monkeypatch):
    monkeypatch.setenv("LEANSERVE_ENGINE_ARGS", '{"pipeline_parallel_size": 2}')
    assert Settings().engine_args == {"pipeline_parallel_size": 2}


def test_engine_arg_without_value_is_refused():
    with pytest.raises(SystemExit):
        cli_main(["serve", "--engine-arg", "pipeline_parallel_size"])


def test_merge_keeps_one_way_per_argument():
    core = {"model": "/m", "dtype": "auto"}
    merged = merge_engine_args(core, [("speculative", {"speculative_config": {"method": "ngram"}})],
                               {"pipeline_parallel_size": 2})
    assert merged == {"model": "/m", "dtype": "auto", "speculative_config": {"method": "ngram"},
                      "pipeline_parallel_size": 2}
    with pytest.raises(ValueError, match="use --max-model-len"):
        merge_engine_args(core, [], {"max_model_len": 10})
    with pytest.raises(ValueError, match="already set by the speculative plugin"):
        merge_engine_args(core, [("speculative", {"speculative_config": {}})], {"speculative_config": {}})
    with pytest.raises(ValueError, match="plugin b sets engine argument 'x', already set by the a plugin"):
        merge_engine_args(core, [("a", {"x": 1}), ("b", {"x": 2})], {})
    with pytest.raises(ValueError, match="from the adaptive plugin.*speculative decoding .from the speculative"):
        merge_engine_args(core, [("speculative", {"speculative_config": {"method": "ngram"}}),
                                 ("adaptive", {"logits_processors": ["x:Y"]})], {})


def test_async_engine_args_accepts_every_vllm_argument_and_names_unknown_ones():
    args = async_engine_args({"model": "/m", "pipeline_parallel_size": 2, "distributed_executor_backend": "mp"})
    assert (args.pipeline_parallel_size, args.distributed_executor_backend) == (2, "mp")
    assert args.dtype in ("float32", "bfloat16", "auto")  # resolved for this platform
    with pytest.raises(ValueError, match="unknown vLLM engine argument.*no_such_arg"):
        async_engine_args({"model": "/m", "no_such_arg": 1})


def test_the_engine_flags_map_to_real_vllm_arguments():
    from vllm.engine.arg_utils import AsyncEngineArgs

    assert set(FLAG_OF_ARG) <= {field.name for field in dataclasses.fields(AsyncEngineArgs)}
