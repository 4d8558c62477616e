"""``--speculative`` parsing and the speculative_config handed to vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.plugins.speculative.config import (
    SUFFIX_PROPOSER,
    SpeculationSpec,
    is_parallel_drafter,
    parse_speculative,
    shipped_head,
    target_parameters,
    vllm_speculative_config,
)
from engine.plugins.speculative.suffix_index import SuffixParams
from service.settings import Settings


@pytest.mark.parametrize(("text", "spec"), [
    ("ngram", SpeculationSpec("ngram")),
    ("SUFFIX", SpeculationSpec("suffix")),
    ("mtp", SpeculationSpec("mtp")),
    ("mtp:/heads/mine", SpeculationSpec("mtp", "/heads/mine")),
    ("draft:Qwen2.5-Coder-0.5B-Instruct", SpeculationSpec("draft", "Qwen2.5-Coder-0.5B-Instruct")),
    ("suffix:max_depth=16, max_spec_factor=1", SpeculationSpec("suffix", options=(("max_depth", 16), ("max_spec_factor", 1.0)))),
])
def test_parse_accepts_every_method(text: str, spec: SpeculationSpec) -> None:
    assert parse_speculative(text) == spec


@pytest.mark.parametrize(("text", "message"), [
    ("medusa", "unknown speculative method"),
    ("draft", "draft needs a model"),
    ("ngram:foo", "takes no model"),
    ("suffix:foo", "KEY=VALUE knobs"),
    ("suffix:max_cached_tokens=5", "KEY=VALUE knobs"),  # internal, not a flag knob
    ("suffix:min_match=2", "KEY=VALUE knobs"),  # vLLM's config cannot carry it
    ("suffix:max_depth=two", "max_depth needs a int"),
    ("suffix:max_depth=0", "<= max_depth"),
    ("suffix:min_token_prob=1.5", "min_token_prob"),
])
def test_parse_rejects_bad_values(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_speculative(text)


def test_bad_flag_fails_settings_validation_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="speculative"):
        Settings(speculative="eagle9")
    with pytest.raises(ValidationError, match="num_speculative_tokens"):
        Settings(speculative="ngram", num_speculative_tokens=0)


def test_vllm_config_per_method() -> None:
    ngram = vllm_speculative_config(parse_speculative("ngram"), None, "SmolLM2-135M-Instruct")
    assert ngram["method"] == "ngram" and ngram["num_speculative_tokens"] == 4
    suffix = vllm_speculative_config(parse_speculative("suffix"), 6, "SmolLM2-135M-Instruct", max_batch=3)
    assert suffix == {"method": "custom_class", "model": SUFFIX_PROPOSER, "num_speculative_tokens": 6,
                      "num_speculative_tokens_per_batch_size": [(1, 3, 6), (4, 4, 0)],
                      **SuffixParams().as_speculative_config()}
    draft = vllm_speculative_config(parse_speculative("draft:small"), None, "big", draft_path="/models/small")
    assert ngram.get("num_speculative_tokens_per_batch_size") is None  # no limit
    assert draft == {"method": "draft_model", "model": "/models/small", "num_speculative_tokens": 4,
                     "num_speculative_tokens_per_batch_size": [(1, 2, 4), (3, 3, 0)]}


def test_the_learned_drafter_drafts_only_in_small_batches_unless_told_otherwise() -> None:
    mtp = vllm_speculative_config(parse_speculative("mtp"), 2, "SmolLM2-135M-Instruct")
    assert mtp["num_speculative_tokens_per_batch_size"] == [(1, 2, 2), (3, 3, 0)]
    draft = vllm_speculative_config(parse_speculative("draft:small"), 4, "big", draft_path="/models/small", max_batch=8)
    assert draft["num_speculative_tokens_per_batch_size"] == [(1, 8, 4), (9, 9, 0)]
    mtp = vllm_speculative_config(parse_speculative("mtp"), 2, "SmolLM2-135M-Instruct", max_batch=4096)
    assert mtp["num_speculative_tokens_per_batch_size"] == [(1, 4096, 2), (4097, 4097, 0)]


@pytest.mark.parametrize("method", ["ngram", "suffix", "draft:small", "mtp"])
@pytest.mark.parametrize("max_batch", [0, 1, 5])
def test_drafts_stop_above_the_largest_batch_that_still_gains(method, max_batch) -> None:
    """vLLM's own lookup of the schedule: K drafts up to max_batch requests in a step, none above."""
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    spec = parse_speculative(method)
    config = vllm_speculative_config(spec, None, "SmolLM2-135M-Instruct", draft_path="/models/small",
                                     max_batch=max_batch)
    k = config["num_speculative_tokens"]
    by_batch = build_dynamic_sd_schedule_lookup(config["num_speculative_tokens_per_batch_size"], 16, k)[1:]
    assert by_batch == [k] * max_batch + [0] * (16 - max_batch)


# The shapes of the two targets measured under load (their config.json entries).
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152, "num_attention_heads": 9,
                "num_key_value_heads": 3, "intermediate_size": 1536, "head_dim": 64, "tie_word_embeddings": True}
QWEN_CODER_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "vocab_size": 151936, "num_attention_heads": 12,
                   "num_key_value_heads": 2, "intermediate_size": 8960, "tie_word_embeddings": False}


def _model_dir(tmp_path: Path, name: str, config: dict) -> Path:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    return tmp_path / name


def test_the_target_size_is_read_from_its_config(tmp_path) -> None:
    assert target_parameters(_model_dir(tmp_path, "small", SMOLLM2_135M)) == pytest.approx(134.5e6, rel=0.01)
    assert target_parameters(_model_dir(tmp_path, "coder", QWEN_CODER_1_5B)) == pytest.approx(1.78e9, rel=0.01)
    vlm = _model_dir(tmp_path, "vlm", {"model_type": "llava", "text_config": QWEN_CODER_1_5B})
    assert target_parameters(vlm) == target_parameters(tmp_path / "coder")
    assert target_parameters(tmp_path / "missing") is None
    assert target_parameters(_model_dir(tmp_path, "odd", {"hidden_size": 8})) is None


@pytest.mark.parametrize("method", ["ngram", "suffix"])
def test_on_a_large_target_every_method_drafts_only_in_small_steps(method, tmp_path) -> None:
    """Verification rows of a >= 1B target are compute under load (suffix decoding: 0.80-0.84x at 8 requests on
    the 1.5B), so the methods without a limit get one there; a small target keeps drafting in every step."""
    spec = parse_speculative(method)
    large = vllm_speculative_config(spec, 4, "coder", target_params=target_parameters(
        _model_dir(tmp_path, "coder", QWEN_CODER_1_5B)))
    assert large["num_speculative_tokens_per_batch_size"] == [(1, 2, 4), (3, 3, 0)]
    small = vllm_speculative_config(spec, 4, "small", target_params=target_parameters(
        _model_dir(tmp_path, "small", SMOLLM2_135M)))
    assert "num_speculative_tokens_per_batch_size" not in small
    told = vllm_speculative_config(spec, 4, "coder", max_batch=4096, target_params=2_000_000_000)
    assert told["num_speculative_tokens_per_batch_size"] == [(1, 4096, 4), (4097, 4097, 0)]  # the flag wins


def test_the_max_batch_flag_is_validated() -> None:
    assert Settings(speculative="ngram", speculative_max_batch=0).speculative_max_batch == 0
    with pytest.raises(ValidationError, match="speculative_max_batch"):
        Settings(speculative="ngram", speculative_max_batch=-1)


def test_mtp_uses_the_head_shipped_for_the_default_model() -> None:
    head = shipped_head("smollm2-135m-instruct")
    assert head is not None and (head / "model.safetensors").exists()
    config = vllm_speculative_config(parse_speculative("mtp"), None, "SmolLM2-135M-Instruct")
    best = json.loads((head / "metrics.json").read_text())["serve_draft_tokens"]
    assert config == {"method": "eagle3", "model": str(head), "num_speculative_tokens": best,
                      "parallel_drafting": True, "num_speculative_tokens_per_batch_size": [(1, 2, best), (3, 3, 0)]}
    shipped = json.loads((head / "config.json").read_text())
    assert shipped["num_hidden_layers"] == 1 and shipped["hidden_size"] == 576 and shipped["draft_vocab_size"] < 49152
    assert (head / "model.safetensors").stat().st_size < 20 * 1024 * 1024


def test_mtp_uses_the_head_shipped_for_the_qwen_coder_target() -> None:
    head = shipped_head("Qwen2.5-Coder-1.5B-Instruct")
    assert head is not None and is_parallel_drafter(head)
    config = vllm_speculative_config(parse_speculative("mtp"), None, "Qwen2.5-Coder-1.5B-Instruct")
    assert config["method"] == "eagle3" and config["model"] == str(head) and config["parallel_drafting"]
    shipped = json.loads((head / "config.json").read_text())
    # The target's width and vocabulary (its embedding is shared); one tap of its 28 layers and a 2,048-row draft
    # vocabulary keep the drafter under the 20 MB at this width (fc H x H, head 2048 x H).
    assert shipped["hidden_size"] == 1536 and shipped["vocab_size"] == 151936 and shipped["draft_vocab_size"] == 2048
    assert shipped["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [25]
    assert "layer_types" not in shipped and 0 <= shipped["mask_token_id"] < shipped["vocab_size"]
    assert (head / "model.safetensors").stat().st_size < 20_000_000


def test_mtp_without_a_head_explains_how_to_get_one(tmp_path) -> None:
    with pytest.raises(ValueError, match="train_drafter"):
        vllm_speculative_config(parse_speculative("mtp"), None, "Qwen2.5-Coder-0.5B-Instruct")
    with pytest.raises(ValueError, match="no config.json"):
        vllm_speculative_config(parse_speculative(f"mtp:{tmp_path}"), None, "any")


def test_a_request_opts_out_through_extra_args_read_by_the_scheduler() -> None:
    from engine.plugin import EngineContext
    from engine.plugins.speculative.opt_out import OptOutScheduler, wants_speculation
    from engine.plugins.speculative.plugin import PLUGIN, SpeculativeOptions, SpeculativeSettings

    settings = SpeculativeSettings(speculative="ngram")
    args = PLUGIN.sampling_args(settings, SpeculativeOptions(enabled=False))
    assert args == {"enabled": False} and not wants_speculation({"speculative": args})
    assert wants_speculation(None) and wants_speculation({"speculative": {"enabled": True}}) and wants_speculation({})
    assert PLUGIN.sampling_args(settings, None) is None
    with pytest.raises(ValueError):
        SpeculativeOptions(enabled="no")
    context = EngineContext("SmolLM2-135M-Instruct", "/models/x", Path("/tmp"), lambda name: name)
    engine_args = PLUGIN.engine_args(settings, context)
    assert engine_args["scheduler_cls"] == f"{OptOutScheduler.__module__}.{OptOutScheduler.__name__}"


def test_suffix_knobs_reach_the_proposer_through_vllms_config() -> None:
    """vLLM builds the proposer from its SpeculativeConfig alone: the flag's knobs must survive that trip."""
    from vllm.config import SpeculativeConfig

    spec = parse_speculative("suffix:max_cached_requests=7,max_spec_factor=0.5,min_token_prob=0.25,max_depth=16")
    assert str(spec) == "suffix:max_cached_requests=7,max_spec_factor=0.5,min_token_prob=0.25,max_depth=16"
    config = vllm_speculative_config(spec, 6, "SmolLM2-135M-Instruct")
    fields = {k: v for k, v in config.items() if k not in ("method", "model", "num_speculative_tokens")}
    vllm_side = SpeculativeConfig.__new__(SpeculativeConfig)  # the fields as vLLM stores them, no model lookup
    vllm_side.__dict__.update(fields)
    assert SuffixParams.from_speculative_config(vllm_side) == SuffixParams(
        max_cached_requests=7, max_spec_factor=0.5, min_token_prob=0.25, max_depth=16)
    assert set(fields) <= set(SpeculativeConfig.__dataclass_fields__)  # every entry is a field vLLM has
