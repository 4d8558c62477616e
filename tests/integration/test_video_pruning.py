"""Qwen2.5-VL and Efficient Video Sampling on a real server: a Qwen2.5-VL model (random 4-block vision
tower, real Qwen2.5-Coder-0.5B) served by vLLM's CPU runner with ``--video-pruning-rate``, which kills
vLLM 0.32's CPU engine at the first image or video unless the plugin's runner fix is in place.

Token counts are checked against what the model really prefilled: a request's ``prompt_tokens`` with a
video equals the same text's without it, plus the markup around the video, plus the video tokens kept.
Whether the kept tokens are the right ones (EVS drops temporally static patches) needs a model that has
learned to see: that is part 2's trained model.
"""

from __future__ import annotations

import base64
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.local_server import free_port, start_server, stop_server
from tests.prometheus import evaluate_panels
from tests.videos import mp4_bytes, video_data_url

from .conftest import Server, sample, scrape, serve_command
from .test_visual_pruning import image_url

MODEL = "qwen2.5-vl-coder-0.5b-tiny"
RATE = 0.75
MARKUP = 2  # <|vision_start|> and <|vision_end|> around each image's or video's tokens
# 16 frames of 320x240: 8 frame pairs; the recipe's 64-token frame budget resizes 240x320 to 168x252 = 6x9 tokens.
VIDEO_TOKENS_BEFORE = 8 * 6 * 9
VIDEO_TOKENS_AFTER = int(VIDEO_TOKENS_BEFORE * (1 - RATE))
IMAGE_640x480_TOKENS = 13 * 18  # 640x480 within the 256-token image budget: 504x364 px


@pytest.fixture(scope="module")
def qwen_vl_server() -> Server:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-qwen-vl-")) / "server.log"
    command = serve_command(port, "--model", MODEL, "--video-pruning-rate", str(RATE), "--dtype", "float32",
                            "--max-model-len", "4096", "--kv-cache-gib", "1")
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, log_path, f"{base_url}/ready", timeout_s=600)
    try:
        yield Server(base_url, MODEL, Path(), process, log_path)
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def qwen_vl(qwen_vl_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{qwen_vl_server.base_url}/v1", api_key="none", max_retries=0, timeout=180)


def messages(*media: dict, text: str = "What happens here?") -> list[dict]:
    return [{"role": "user", "content": [*media, {"type": "text", "text": text}]}]


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(client: openai.OpenAI, content: list[dict], max_tokens: int = 3):
    return client.chat.completions.create(model=MODEL, messages=content, max_tokens=max_tokens, temperature=0)


@pytest.fixture(scope="module")
def text_only_prompt_tokens(qwen_vl: openai.OpenAI) -> int:
    return ask(qwen_vl, messages()).usage.prompt_tokens


def test_a_video_is_prefilled_with_the_tokens_evs_kept(qwen_vl, text_only_prompt_tokens):
    usage = ask(qwen_vl, messages(video_part(video_data_url(mp4_bytes())))).usage
    assert usage.model_extra["video_pruning"] == {"video_tokens_before": VIDEO_TOKENS_BEFORE,
                                                  "video_tokens_after": VIDEO_TOKENS_AFTER,
                                                  "video_tokens_saved": VIDEO_TOKENS_BEFORE - VIDEO_TOKENS_AFTER}
    assert usage.prompt_tokens == text_only_prompt_tokens + MARKUP + VIDEO_TOKENS_AFTER


def test_images_and_a_video_in_one_request_streamed(qwen_vl, text_only_prompt_tokens):
    content = messages(image_part(image_url(640, 480, seed=1)), video_part(video_data_url(mp4_bytes(seed=3))),
                       image_part(image_url(640, 480, seed=2)))
    stream = qwen_vl.chat.completions.create(model=MODEL, messages=content, max_tokens=3, temperature=0, stream=True,
                                             stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    assert usage.prompt_tokens == (text_only_prompt_tokens + 3 * MARKUP + 2 * IMAGE_640x480_TOKENS
                                   + VIDEO_TOKENS_AFTER)
    assert usage.model_extra["video_pruning"]["video_tokens_after"] == VIDEO_TOKENS_AFTER


def test_the_text_model_inside_still_answers(qwen_vl):
    answer = ask(qwen_vl, [{"role": "user", "content": "What is the capital of France? One word."}], max_tokens=8)
    assert "Paris" in answer.choices[0].message.content


def test_broken_videos_are_400s_while_other_requests_flow(qwen_vl, qwen_vl_server):
    clip = mp4_bytes(frames=12, width=96, height=64)
    broken = {
        "truncated": video_data_url(clip[: len(clip) // 2]),
        "garbage": video_data_url(b"\x00\x00\x00\x18ftypmp42 but nothing else" * 10),
        "empty": video_data_url(b""),
        "bad base64": "data:video/mp4;base64,****",
        "an image": image_url(32, 32, seed=0),
        "frames too large": video_data_url(mp4_bytes(frames=2, width=2048, height=1088)),
        "remote": "https://example.com/clip.mp4",
    }

    def good(seed: int) -> str:
        return ask(qwen_vl, messages(video_part(video_data_url(mp4_bytes(frames=4, width=64, height=64,
                                                                         seed=seed))))).choices[0].finish_reason

    def bad(url: str) -> httpx.Response:
        return httpx.post(f"{qwen_vl_server.base_url}/v1/chat/completions", timeout=120,
                          json={"model": MODEL, "messages": messages(video_part(url)), "max_tokens": 2})

    with ThreadPoolExecutor(6) as pool:
        goods = [pool.submit(good, seed) for seed in range(3)]
        bads = {name: pool.submit(bad, url) for name, url in broken.items()}
        for name, future in bads.items():
            response = future.result()
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["param"] == "messages[0].content[0].video_url", name
        assert all(future.result() in ("stop", "length") for future in goods)
    assert httpx.get(f"{qwen_vl_server.base_url}/health", timeout=10).status_code == 200


def test_more_videos_than_allowed_and_bad_rates_are_400s_naming_the_field(qwen_vl_server):
    url = video_data_url(mp4_bytes(frames=2, width=64, height=64))
    for body, param in [({"messages": messages(video_part(url), video_part(url))}, "messages"),
                        ({"messages": messages(), "video_pruning": {"rate": 1.0}}, "video_pruning.rate"),
                        ({"messages": messages(), "video_pruning": {"rate": -0.1}}, "video_pruning.rate"),
                        ({"messages": messages(), "video_pruning": {"ratio": 0.5}}, "video_pruning.ratio")]:
        response = httpx.post(f"{qwen_vl_server.base_url}/v1/chat/completions", timeout=60,
                              json={"model": MODEL, "max_tokens": 2, **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_concurrent_requests_each_get_their_own_rate(qwen_vl, text_only_prompt_tokens):
    """Videos of several requests may share one encoder call: each is pruned at its own request's rate."""
    options = [{"rate": 0.5}, {"enabled": False}, None, {"rate": 0.9}, {"rate": 0.0}]
    # EVS keeps int(432 x (1 - rate)) tokens, never fewer than one frame pair (54).
    expected = [216, VIDEO_TOKENS_BEFORE, VIDEO_TOKENS_AFTER, 54, VIDEO_TOKENS_BEFORE]

    def ask_with(pair: tuple[int, dict | None]):
        index, option = pair
        return qwen_vl.chat.completions.create(
            model=MODEL, messages=messages(video_part(video_data_url(mp4_bytes(seed=40 + index)))), max_tokens=2,
            temperature=0, extra_body={"video_pruning": option} if option is not None else None)

    with ThreadPoolExecutor(len(options)) as pool:
        responses = list(pool.map(ask_with, enumerate(options)))
    for response, kept in zip(responses, expected, strict=True):
        assert response.usage.model_extra["video_pruning"]["video_tokens_after"] == kept
        assert response.usage.prompt_tokens == text_only_prompt_tokens + MARKUP + kept


def test_metrics_count_video_tokens_before_and_after(qwen_vl, qwen_vl_server):
    before = scrape(qwen_vl_server)
    usage = ask(qwen_vl, messages(video_part(video_data_url(mp4_bytes(seed=5))))).usage
    after = scrape(qwen_vl_server)
    prompt = "leanserve_prompt_tokens_total"
    assert sample(after, prompt, model=MODEL) - sample(before, prompt, model=MODEL) == usage.prompt_tokens
    name = "leanserve_video_pruning_video_tokens_total"
    labels = {"model": MODEL, "method": "evs"}
    assert (sample(after, name, stage="encoded", **labels) - sample(before, name, stage="encoded", **labels)
            == VIDEO_TOKENS_BEFORE)
    assert sample(after, name, stage="kept", **labels) - sample(before, name, stage="kept", **labels) == VIDEO_TOKENS_AFTER


def test_a_model_without_video_refuses_it(client, server):
    url = "data:video/mp4;base64," + base64.b64encode(b"\x00").decode()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=messages(video_part(url)), max_tokens=2)
    assert caught.value.body["code"] == "unsupported_modality"
    assert caught.value.body["param"] == "messages[0].content[0]"


def test_the_dashboard_panel_shows_the_share_pruned(qwen_vl, qwen_vl_server, tmp_path):
    title = "Video pruning (EVS): video tokens encoded vs prefilled"
    seeds = iter(range(40, 50))
    found = evaluate_panels(qwen_vl_server.base_url, tmp_path, [title],
                            lambda: ask(qwen_vl, messages(video_part(video_data_url(mp4_bytes(seed=next(seeds)))))))
    by_stage, [(_, pruned_share)] = found[title]
    assert {labels["stage"] for labels, value in by_stage if value > 0} == {"encoded", "kept"}
    assert pruned_share == pytest.approx(1 - VIDEO_TOKENS_AFTER / VIDEO_TOKENS_BEFORE, abs=1e-6)
