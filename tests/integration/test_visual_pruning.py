"""Visual-token pruning on a real server: the shipped scene reader (``llava-scenes``: a CLIP tower,
projector and SmolLM2-135M trained here to answer questions about rendered scenes) served through
vLLM's multimodal path, images sent as base64 data URLs with the ``openai`` client.

The server writes what it selected (and the embeddings it selected from) into a trace directory,
so that each method's choice inside vLLM is checked against the one-token-at-a-time reference on the
very same embeddings. The model has learned to see, so the held-out questions its card names are asked
too: unpruned and at half the image tokens, it must score what the card and the benchmark state
(``benchmarks/visual_pruning_accuracy.py``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from benchmarks.local_server import free_port, start_server, stop_server
from benchmarks.visual_pruning_accuracy import CARD
from engine.catalogue import resolve_model
from engine.plugins.visual_pruning import selection
from engine.scenes_vlm.held_out import HeldOutQuestion, held_out_questions
from kernels.visual_token_selection import reference
from service.settings import Settings
from tests.prometheus import evaluate_panels

from .conftest import MAX_RUNNING, Server, sample, scrape, serve_command

MODEL = "llava-scenes"
TOKENS_PER_IMAGE = 576
METHODS = ("divprune", "cls", "zoo", "random", "stride")


@pytest.fixture(scope="module")
def trace_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="leanserve-vlm-trace-"))


@pytest.fixture(scope="module")
def vlm_server(trace_dir: Path) -> Server:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-vlm-")) / "server.log"
    command = serve_command(port, "--model", MODEL, "--visual-pruning", "divprune", "--visual-pruning-keep", "0.1",
                            "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-gib", "1")
    env = {**os.environ, "LEANSERVE_VISUAL_PRUNING_TRACE": str(trace_dir), "LEANSERVE_VISUAL_PRUNING_TRACE_TENSORS": "1"}
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, log_path, f"{base_url}/ready", env=env, timeout_s=600)
    try:
        resolved = resolve_model(MODEL, Settings().cache_dir)
        yield Server(base_url, resolved.name, Path(resolved.path), process, log_path)
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def vlm(vlm_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vlm_server.base_url}/v1", api_key="none", max_retries=0, timeout=120)


def image_url(width: int, height: int, seed: int, fmt: str = "PNG") -> str:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_messages(*urls: str, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": url}} for url in urls),
                                         {"type": "text", "text": text}]}]


def ask(client: openai.OpenAI, messages: list[dict], budget: dict | None = None):
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0,
                                          extra_body={"visual_pruning": budget} if budget is not None else None)


def new_traces(trace_dir: Path, before: set[Path]) -> list[dict]:
    return [torch.load(path, weights_only=False) for path in sorted(set(trace_dir.glob("*.pt")) - before)]


def projector_fp32(model_dir: Path) -> selection.ProjectorMLP:
    """The checkpoint's projector in float32, as the model holds it for ZOO-Prune."""
    from safetensors.torch import load_file

    weights = load_file(model_dir / "model.safetensors")
    return selection.ProjectorMLP(*(weights[f"multi_modal_projector.{name}"].float()
                                    for name in ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")))


@pytest.mark.parametrize("keep", [0.5, 0.1, 7])
def test_every_method_fills_exactly_its_placeholders(vlm, keep):
    """Rows returned == placeholders allocated, for every method and budget: usage and the prompt agree."""
    expected = max(1, round(keep * TOKENS_PER_IMAGE)) if isinstance(keep, float) else keep
    full = ask(vlm, image_messages(image_url(64, 48, seed=0)), {"enabled": False}).usage
    assert full.model_extra["visual_pruning"]["image_tokens_after"] == TOKENS_PER_IMAGE
    for method in METHODS:
        response = ask(vlm, image_messages(image_url(64, 48, seed=0)), {"method": method, "keep": keep})
        usage = response.usage.model_extra["visual_pruning"]
        assert usage == {"image_tokens_before": 576, "image_tokens_after": expected,
                         "image_tokens_saved": 576 - expected}, method
        assert response.usage.prompt_tokens == full.prompt_tokens - TOKENS_PER_IMAGE + expected, method
        assert response.choices[0].finish_reason in ("stop", "length")


def test_selection_inside_vllm_equals_the_reference(vlm, vlm_server, trace_dir):
    """Two images of odd sizes per request; each method's choice is recomputed from the traced embeddings."""
    project = projector_fp32(vlm_server.model_dir)
    urls = (image_url(37, 500, seed=1), image_url(641, 479, seed=2, fmt="JPEG"))
    for method in METHODS:
        before = set(trace_dir.glob("*.pt"))
        ask(vlm, image_messages(*urls, text=f"method {method}"), {"method": method, "keep": 23})
        traces = new_traces(trace_dir, before)
        assert sum(trace["images"] for trace in traces) == 2, method
        for trace in traces:
            for image, kept in enumerate(trace["kept"]):
                assert trace["methods"][image] == method
                features, projected = trace["features"][image], trace["projected"][image]  # [N, Dv], [N, Dt]
                if method == "divprune":
                    expected = reference.divprune_reference(projected, 23)
                elif method == "zoo":
                    directions = selection.zoo_directions(features.shape[-1], features.device)
                    expected = reference.zoo_prune_reference(features, projected, project, directions,
                                                             selection.ZOO_STEP, 23)
                elif method == "cls":
                    scores = trace["cls_scores"][image]  # [N]: a distribution over the patches ([CLS] excluded)
                    assert scores.shape == (TOKENS_PER_IMAGE,) and 0.5 < float(scores.sum()) <= 1.0 + 1e-4
                    expected = reference.top_k_reference(scores, 23)
                elif method == "stride":
                    expected = reference.stride_reference(TOKENS_PER_IMAGE, 23)
                else:
                    expected = sorted(kept.tolist())
                    assert len(set(expected)) == 23
                assert kept.tolist() == expected, (method, image)


def test_several_images_over_several_messages(vlm):
    messages = [*image_messages(image_url(100, 100, seed=3)), {"role": "assistant", "content": "A picture."},
                *image_messages(image_url(30, 90, seed=4), image_url(300, 200, seed=5, fmt="WEBP"))]
    usage = ask(vlm, messages, {"keep": 0.25}).usage.model_extra["visual_pruning"]
    assert usage["image_tokens_before"] == 3 * 576 and usage["image_tokens_after"] == 3 * 144


def test_a_per_request_budget_changes_what_the_model_sees(vlm, trace_dir):
    messages = image_messages(image_url(80, 80, seed=6))
    seen = {}
    for keep in (0.5, 0.05):
        before = set(trace_dir.glob("*.pt"))
        response = ask(vlm, messages, {"keep": keep})
        seen[keep] = (response.usage.prompt_tokens, set(new_traces(trace_dir, before)[0]["kept"][0].tolist()))
    assert seen[0.5][0] - seen[0.05][0] == 288 - 29  # the prompt the language model prefilled
    assert (len(seen[0.5][1]), len(seen[0.05][1])) == (288, 29)  # the rows the encoder handed it


def test_bad_budgets_are_400s_naming_the_field(vlm_server):
    for budget, param in [({"keep": 1.5}, "visual_pruning"), ({"keep": 0}, "visual_pruning"),
                          ({"method": "best"}, "visual_pruning.method"), ({"ratio": 0.5}, "visual_pruning.ratio")]:
        response = httpx.post(f"{vlm_server.base_url}/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": image_messages(image_url(20, 20, seed=0)), "max_tokens": 2,
            "visual_pruning": budget})
        assert response.status_code == 400, budget
        assert response.json()["error"]["param"] == param, budget


def test_broken_images_are_400s_while_other_requests_flow(vlm, vlm_server):
    png = base64.b64decode(image_url(200, 200, seed=7).split(",", 1)[1])
    broken = {
        "truncated": "data:image/png;base64," + base64.b64encode(png[: len(png) // 3]).decode(),
        "garbage": "data:image/png;base64," + base64.b64encode(b"\x89PNG this is not a picture").decode(),
        "bad base64": "data:image/png;base64,****",
        "absurd shape": image_url(4000, 1, seed=8),
        "remote": "https://example.com/cat.png",
    }

    def good(seed: int) -> str:
        return ask(vlm, image_messages(image_url(50, 60, seed=seed))).choices[0].finish_reason

    def bad(url: str) -> httpx.Response:
        return httpx.post(f"{vlm_server.base_url}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": image_messages(url), "max_tokens": 2})

    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, seed) for seed in range(10, 14)]
        bads = {name: pool.submit(bad, url) for name, url in broken.items()}
        for name, future in bads.items():
            response = future.result()
            assert response.status_code == 400, name
            assert response.json()["error"]["param"] == "messages[0].content[0].image_url", name
        assert all(future.result() in ("stop", "length") for future in goods)
    assert httpx.get(f"{vlm_server.base_url}/health", timeout=10).status_code == 200


def test_metrics_count_image_tokens_before_and_after(vlm, vlm_server):
    before = scrape(vlm_server)
    usage = ask(vlm, image_messages(image_url(64, 64, seed=9)), {"method": "stride", "keep": 0.25}).usage
    after = scrape(vlm_server)
    prompt = "leanserve_prompt_tokens_total"
    assert sample(after, prompt, model=MODEL) - sample(before, prompt, model=MODEL) == usage.prompt_tokens
    name = "leanserve_visual_pruning_image_tokens_total"
    labels = {"model": MODEL, "method": "stride"}
    assert sample(after, name, stage="encoded", **labels) - sample(before, name, stage="encoded", **labels) == 576
    assert sample(after, name, stage="kept", **labels) - sample(before, name, stage="kept", **labels) == 144


def test_a_text_only_model_refuses_images_and_pruning_options(client, server):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=image_messages(image_url(8, 8, seed=0)),
                                       max_tokens=2)
    assert caught.value.body["code"] == "unsupported_modality"
    assert caught.value.body["param"] == "messages[0].content[0]"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2, extra_body={"visual_pruning": {"keep": 0.5}})
    assert caught.value.body["param"] == "visual_pruning"


def test_an_image_detail_the_server_cannot_honour_is_refused(vlm_server):
    part = {"type": "image_url", "image_url": {"url": image_url(16, 16, seed=0), "detail": "high"}}
    response = httpx.post(f"{vlm_server.base_url}/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": [part]}], "max_tokens": 2})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0].image_url.detail"


def test_concurrent_requests_with_different_budgets_each_get_their_own(vlm, trace_dir):
    """Images of several requests may share one encoder call: each keeps its own method and count."""
    budgets = [{"method": "divprune", "keep": 0.1}, {"method": "cls", "keep": 20}, {"method": "zoo", "keep": 0.25},
               {"method": "stride", "keep": 3}, {"enabled": False}]
    expected = [58, 20, 144, 3, 576]
    before = set(trace_dir.glob("*.pt"))
    with ThreadPoolExecutor(len(budgets)) as pool:
        responses = list(pool.map(lambda pair: ask(vlm, image_messages(image_url(90, 70, seed=20 + pair[0])), pair[1]),
                                  enumerate(budgets)))
    for response, kept in zip(responses, expected, strict=True):
        assert response.usage.model_extra["visual_pruning"]["image_tokens_after"] == kept
    traced = sorted(len(index) for trace in new_traces(trace_dir, before) for index in trace["kept"])
    assert traced == sorted(expected)


def test_the_dashboard_panel_shows_the_share_pruned(vlm, vlm_server, tmp_path):
    title = "Visual pruning: image tokens encoded vs prefilled"
    seeds = iter(range(500, 510))
    found = evaluate_panels(vlm_server.base_url, tmp_path, [title],
                            lambda: ask(vlm, image_messages(image_url(64, 64, seed=next(seeds))), {"keep": 0.25}))
    by_stage, [(_, pruned_share)] = found[title]
    stages = {(labels["method"], labels["stage"]) for labels, value in by_stage if value > 0}
    assert stages == {("divprune", "encoded"), ("divprune", "kept")}
    assert pruned_share == pytest.approx(1 - round(0.25 * TOKENS_PER_IMAGE) / TOKENS_PER_IMAGE, abs=1e-6)


def held_out_accuracy(client: openai.OpenAI, questions: list[HeldOutQuestion], budget: dict,
                      image_of: dict[int, HeldOutQuestion] | None = None) -> float:
    """Share of ``questions`` answered right under ``budget``, asked as the benchmark asks them (greedy,
    a few tokens, as many at once as the server runs); ``image_of`` shows question i another one's image."""
    def right(pair: tuple[int, HeldOutQuestion]) -> bool:
        index, question = pair
        messages = question.messages() if image_of is None else [{"role": "user", "content": [
            image_of[index].messages()[0]["content"][0], {"type": "text", "text": question.text}]}]
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                               extra_body={"visual_pruning": budget})
        return question.is_right(reply.choices[0].message.content or "")

    with ThreadPoolExecutor(MAX_RUNNING) as pool:
        return sum(pool.map(right, enumerate(questions))) / len(questions)


def card_ci_set() -> tuple[dict, list[HeldOutQuestion]]:
    card = json.loads(CARD.read_text())
    return card, held_out_questions(card["ci_set"]["questions"])


def test_the_shipped_model_scores_what_its_card_states(vlm):
    """Unpruned and with DivPrune at 50%, the card's held-out questions score what the benchmark measured."""
    card, questions = card_ci_set()
    tolerance = card["ci_set"]["tolerance"]
    unpruned = held_out_accuracy(vlm, questions, {"enabled": False})
    assert unpruned == pytest.approx(card["ci_set"]["unpruned"], abs=tolerance)
    assert unpruned > card["chance"]["all"] + 0.1  # above the best blind guess
    half = held_out_accuracy(vlm, questions, {"method": "divprune", "keep": 0.5})
    assert half == pytest.approx(card["ci_set"]["divprune@0.5"], abs=tolerance)


def test_answers_need_the_image(vlm):
    """Each question asked about the next question's scene: the model reads the image, so it scores far lower."""
    card, questions = card_ci_set()
    swapped = {index: questions[(index + 1) % len(questions)] for index in range(len(questions))}
    # a swapped image can still hold the same answer, by chance: compare with the card's own score
    assert held_out_accuracy(vlm, questions, {"enabled": False}, image_of=swapped) < card["ci_set"]["unpruned"] - 0.15
