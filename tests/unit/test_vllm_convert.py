"""The conversions between the seam's types and vLLM's, on vLLM's own classes (no engine)."""

from __future__ import annotations

from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind

from engine.protocol import MultimodalItem, Prompt, SamplingOptions
from engine.vllm_convert import to_sampling_params, to_vllm_prompt, token_logprobs


def test_sampling_params_stream_deltas_and_carry_plugin_args():
    options = SamplingOptions(max_tokens=7, n=2, temperature=0.5, top_p=0.9, seed=3, stop=("\n",), logprobs=2,
                              ignore_eos=True)
    params = to_sampling_params(options, {"tally": {"label": "x"}})
    assert params.output_kind == RequestOutputKind.DELTA
    assert (params.max_tokens, params.n, params.temperature, params.top_p, params.seed) == (7, 2, 0.5, 0.9, 3)
    assert (params.stop, params.logprobs, params.ignore_eos) == (["\n"], 2, True)
    assert params.extra_args == {"tally": {"label": "x"}}
    assert to_sampling_params(options).extra_args is None


def test_prompts_with_and_without_multimodal_items():
    assert to_vllm_prompt(Prompt([1, 2, 3])) == {"type": "token", "prompt_token_ids": [1, 2, 3]}
    items = (MultimodalItem("image", "first"), MultimodalItem("video", "clip"), MultimodalItem("image", "second"))
    assert to_vllm_prompt(Prompt([5], items)) == {
        "prompt_token_ids": [5], "multi_modal_data": {"image": ["first", "second"], "video": ["clip"]}}


def test_logprobs_keep_token_ids_in_rank_order():
    output = CompletionOutput(index=0, text="ab", token_ids=[7, 9], cumulative_logprob=None, logprobs=[
        {7: Logprob(-0.1, 1, "a"), 8: Logprob(-2.5, 2, "c"), 6: Logprob(-3.0, 3, "d")},
        {4: Logprob(-0.2, 1, "x"), 9: Logprob(-1.7, 2, "b")},
    ])
    entries = token_logprobs(output, num_top=2)
    assert [(e.token_id, e.token, e.logprob) for e in entries] == [(7, "a", -0.1), (9, "b", -1.7)]
    assert [(t.token_id, t.token) for t in entries[0].top] == [(7, "a"), (8, "c")]
    assert [(t.token_id, t.token) for t in entries[1].top] == [(4, "x"), (9, "b")]
    assert token_logprobs(output, num_top=0)[0].top == ()
