"""What a user of the official ``openai`` client sees, against the real default model."""

from __future__ import annotations

import asyncio

import openai
import pytest

CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_paris(client, server, tokenizer):
    response = client.chat.completions.create(
        model=server.model, messages=CAPITAL_QUESTION, temperature=0, max_tokens=40,
    )
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    rendered = tokenizer.apply_chat_template(CAPITAL_QUESTION, tokenize=False, add_generation_prompt=True)
    assert response.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    # The answer's tokens plus the end-of-turn token that stopped it.
    assert response.usage.completion_tokens == len(tokenizer.encode(choice.message.content, add_special_tokens=False)) + 1
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_stream_matches_plain_greedy(client, server):
    plain = client.chat.completions.create(model=server.model, messages=CAPITAL_QUESTION, temperature=0, max_tokens=30)
    stream = client.chat.completions.create(
        model=server.model, messages=CAPITAL_QUESTION, temperature=0, max_tokens=30,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_max_tokens_and_max_completion_tokens_cap_length(client, server):
    for field in ("max_tokens", "max_completion_tokens"):
        response = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            temperature=0, **{field: 7},
        )
        assert response.choices[0].finish_reason == "length"
        assert response.usage.completion_tokens == 7


def test_n_choices_and_seed_reproducibility(client, server):
    kwargs = dict(model=server.model, messages=[{"role": "user", "content": "Name a colour."}],
                  temperature=1.0, max_tokens=12, n=3, seed=1234, logprobs=True)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    other_seed = client.chat.completions.create(**{**kwargs, "seed": 99})
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in second.choices]
    assert texts != [c.message.content for c in other_seed.choices]
    assert first.usage.completion_tokens == sum(len(c.logprobs.content) for c in first.choices)


def test_chat_logprobs(client, server):
    response = client.chat.completions.create(
        model=server.model, messages=CAPITAL_QUESTION, temperature=0, max_tokens=6,
        logprobs=True, top_logprobs=3,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs))
    assert "".join(e.token for e in content) == response.choices[0].message.content


def test_completion_plain_stop_and_usage(client, server, tokenizer):
    prompt = "1, 2, 3, 4,"
    response = client.completions.create(model=server.model, prompt=prompt, max_tokens=20, temperature=0, stop=[" 7"])
    choice = response.choices[0]
    assert choice.text.startswith(" 5, 6,")
    assert " 7" not in choice.text
    assert choice.finish_reason == "stop"
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))


def test_completion_stream_several_prompts(client, server):
    prompts = ["The capital of France is", "1, 2, 3,"]
    plain = client.completions.create(model=server.model, prompt=prompts, max_tokens=8, temperature=0)
    stream = client.completions.create(
        model=server.model, prompt=prompts, max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finish = {}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in plain.choices}
    assert finish == {0: "length", 1: "length"}
    assert usage.completion_tokens == plain.usage.completion_tokens == 16
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_completion_token_id_prompt_and_logprobs(client, server, tokenizer):
    ids = tokenizer.encode("The capital of France is", add_special_tokens=False)
    by_ids = client.completions.create(model=server.model, prompt=ids, max_tokens=5, temperature=0, logprobs=2)
    by_text = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    logprobs = by_ids.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert "".join(logprobs.tokens) == by_ids.choices[0].text
    assert logprobs.text_offset[0] == 0
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def test_sampling_penalties_change_output(client, server):
    base = dict(model=server.model, prompt="the the the the the", max_tokens=16, temperature=0)
    plain = client.completions.create(**base).choices[0].text
    penalised = client.completions.create(**base, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    assert plain != penalised
    assert penalised.count("the") < plain.count("the")


def test_models_list(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]


def test_concurrent_requests_each_get_their_own_answer(client, server):
    prompts = [f"{i} + {i} =" for i in range(1, 5)]

    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=client.base_url, api_key=client.api_key, max_retries=0) as async_client:
            responses = await asyncio.gather(*(
                async_client.completions.create(model=server.model, prompt=p, max_tokens=6, temperature=0)
                for p in prompts
            ))
        return [r.choices[0].text for r in responses]

    concurrent = asyncio.run(ask_all())
    sequential = [
        client.completions.create(model=server.model, prompt=p, max_tokens=6, temperature=0).choices[0].text
        for p in prompts
    ]
    assert len(concurrent) == 4 and all(concurrent)
    # bf16 on CPU is not batch-invariant bit for bit; most answers must still agree.
    assert sum(a == b for a, b in zip(concurrent, sequential)) >= 3


def test_wrong_key_is_refused_by_the_client(server):
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
