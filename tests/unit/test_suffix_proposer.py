"""Suffix decoding proposer, driven the way vLLM 0.32's model runner drives a ``custom_class`` drafter."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest

from engine.plugins.speculative.suffix import SuffixParams, SuffixProposer

K = 5
MAX_LEN = 256


# The paper's knobs in every step, which the expected drafts below are worked out for; eager small steps (the
# shipped default) have a test of their own.
PAPER = {"eager_max_batch": 0}


def make_proposer(k: int = K, max_len: int = MAX_LEN, schedule: list | None = None, **params) -> SuffixProposer:
    config = SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=k, num_speculative_tokens_per_batch_size=schedule),
        model_config=SimpleNamespace(max_model_len=max_len),
        scheduler_config=SimpleNamespace(max_num_seqs=8),
    )
    return SuffixProposer(config, SuffixParams(**{**PAPER, **params}))


class Batch:
    """vLLM's persistent batch as a proposer sees it: int32 token rows and each row's length."""

    def __init__(self, proposer: SuffixProposer, rows: int = 4, max_len: int = MAX_LEN) -> None:
        self.proposer = proposer
        # Past a row's length lie stale tokens, as in vLLM, never zeros to lean on.
        self.tokens = np.full((rows, max_len), 77, np.int32)
        self.lengths = np.zeros(rows, np.int32)

    def put(self, row: int, sequence: list[int]) -> None:
        self.tokens[row, : len(sequence)] = sequence
        self.lengths[row] = len(sequence)

    def append(self, row: int, tokens: list[int]) -> None:
        n = self.lengths[row]
        self.tokens[row, n : n + len(tokens)] = tokens
        self.lengths[row] = n + len(tokens)

    def step(self, sampled: list[list[int]]) -> list[list[int]]:
        return self.proposer.propose(sampled, self.lengths, self.tokens)

    def decode(self, row: int, tokens: list[int]) -> list[int]:
        """Feed ``tokens`` one step each to a lone row; the draft after the last one."""
        for token in tokens:
            self.append(row, [token])
            draft = self.step([[]] * row + [[token]])[row]
        return draft


def test_a_pattern_repeated_from_the_prompt_is_drafted_up_to_the_match_length():
    batch = Batch(make_proposer())
    batch.put(0, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2, 3])
    assert batch.step([[3]]) == [[4, 5, 6]]  # matched 3 tokens: at most ceil(1.0 * 3) drafted
    batch.append(0, [4, 5, 6, 7])
    assert batch.step([[4, 5, 6, 7]]) == [[8, 40, 41, 1, 2]]  # matched 7: capped at K


def test_small_steps_draft_eagerly_by_default_and_larger_ones_as_the_paper():
    """Shipped knobs: in a step of at most 2 requests one repeated token proposes two, and a match runs to
    twice its length; in larger steps a draft needs a 2-token match and stays within its length."""
    config = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=K),
                             model_config=SimpleNamespace(max_model_len=MAX_LEN), scheduler_config=SimpleNamespace(max_num_seqs=8))
    batch = Batch(SuffixProposer(config))
    batch.put(0, [9, 5, 6, 7, 8, 1, 5])
    batch.put(1, [9, 5, 6, 7, 8, 9, 5])
    batch.put(2, [30, 31, 32])
    assert batch.step([[5], [5]]) == [[6, 7], [6, 7, 8, 9]]  # matched 1 token: two; (9, 5): four
    for row in range(3):
        batch.append(row, [40])
    assert batch.step([[40], [40], [40]]) == [[], [], []]  # three requests: nothing repeats 2 tokens
    batch.put(1, [9, 5, 6, 7, 8, 1, 9, 5])  # a new request in row 1
    assert batch.step([[40], [5], [40]]) == [[], [6, 7], []]  # (9, 5) again: at most its length


def test_max_spec_factor_scales_the_draft_to_the_match():
    batch = Batch(make_proposer(max_spec_factor=0.5))
    batch.put(0, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2, 3])
    assert batch.step([[3]]) == [[4, 5]]


@pytest.mark.parametrize(("min_token_prob", "draft"), [(0.1, [3, 51]), (0.5, [3]), (0.7, [])])
def test_the_most_frequent_continuation_is_followed_while_likely_enough(min_token_prob, draft):
    # After (1, 2): 3 twice, 4 once (p=2/3); after (1, 2, 3): 50 or 51, the later wins the tie (p=1/3).
    batch = Batch(make_proposer(min_token_prob=min_token_prob))
    batch.put(0, [1, 2, 3, 50, 1, 2, 3, 51, 1, 2, 4, 52, 7, 1, 2])
    assert batch.step([[2]]) == [draft]


def test_a_second_request_with_the_same_prompt_drafts_the_first_ones_output():
    prompt, output = list(range(1000, 1030)), list(range(100, 140))
    batch = Batch(make_proposer())
    batch.put(0, prompt)
    assert batch.decode(0, output) == []  # nothing repeats within the first request
    batch.put(0, prompt + output[:1])  # the first finished; the next one reuses its row
    assert batch.step([output[:1]]) == [output[1:6]]


def test_a_request_moved_to_another_row_keeps_its_context_and_the_finished_one_is_shared():
    first, other = list(range(1000, 1030)), [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2]
    output = list(range(100, 120))
    batch = Batch(make_proposer())
    batch.put(0, first)
    batch.put(1, other)
    for token in output:
        batch.append(0, [token])
        batch.step([[token], [2]])
    # Row 0's request finishes; vLLM condenses the batch, moving row 1 into row 0.
    batch.put(0, other + [3])
    assert batch.step([[3]]) == [[4, 5, 6]]
    batch.put(1, first + output[:1])
    assert batch.step([[4], output[:1]])[1] == output[1:6]


def test_a_request_back_from_a_skipped_step_resumes_in_any_row():
    sequence = [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2]
    batch = Batch(make_proposer())
    batch.put(0, sequence)
    batch.step([[2]])
    batch.put(0, [60, 61, 62])  # unscheduled for a step: another request is prefilling in its row
    assert batch.step([[]]) == [[]]
    batch.put(2, sequence + [3])
    assert batch.step([[], [], [3]])[2] == [4, 5, 6]


@pytest.mark.parametrize("filler", [2, 80], ids=["shorter", "longer"])
def test_a_reused_row_never_drafts_from_the_previous_requests_prompt(filler):
    # The archive keeps outputs with only max_depth tokens of their prompt before them; a run deeper
    # in the first prompt can only be drafted if that prompt leaked into the next request's context.
    prompt = [7, 500, 501, 502, 503, 504, 505] + list(range(1000, 1040))
    batch = Batch(make_proposer())
    batch.put(0, prompt)
    batch.decode(0, [90, 91, 92])
    batch.put(0, list(range(2000, 2000 + filler)) + [500, 501])
    assert batch.step([[501]]) == [[]]


def test_rows_in_prefill_get_no_draft():
    batch = Batch(make_proposer())
    batch.put(0, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2, 3])
    batch.put(1, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2, 3])
    assert batch.step([[], [3]]) == [[], [4, 5, 6]]


def test_drafts_stay_within_k_and_the_room_before_max_model_len():
    max_len = 64
    batch = Batch(make_proposer(max_len=max_len), max_len=max_len)
    batch.put(0, [1, 2, 3, 1, 2, 3])
    for n in range(6, max_len):
        draft = batch.step([[batch.tokens[0, n - 1].item()]])[0]
        room = max_len - n - 1
        assert len(draft) == min(K, room) if n >= 11 else len(draft) <= min(K, room)
        assert draft == [(n + i) % 3 + 1 for i in range(len(draft))]
        batch.append(0, [n % 3 + 1])
    assert batch.step([[1]]) == [[]]  # at max_model_len


def test_only_the_most_recent_outputs_are_kept():
    def serve(batch: Batch, prompt: list[int], output: list[int]) -> list[int]:
        batch.put(0, prompt)
        batch.decode(0, output)
        batch.put(0, prompt + output[:1])
        return batch.step([output[:1]])[0]

    prompts = [list(range(1000 * i, 1000 * i + 30)) for i in range(1, 5)]
    outputs = [list(range(100 * i, 100 * i + 40)) for i in range(1, 5)]
    by_count = Batch(make_proposer(max_cached_requests=2))
    by_tokens = Batch(make_proposer(max_cached_tokens=100))  # one output and its prompt tail fit
    for prompt, output in zip(prompts, outputs):
        assert serve(by_count, prompt, output) == output[1:6]
        assert serve(by_tokens, prompt, output) == output[1:6]  # the ring wraps several times
    for i, draft in ((0, []), (2, outputs[2][1:6])):  # the first two outputs are gone
        by_count.put(0, prompts[i] + outputs[i][:1])
        assert by_count.step([outputs[i][:1]]) == [draft]


def test_batch_churn_never_breaks_the_proposer(caplog):
    rng = random.Random(0)
    max_len, rows = 96, 6
    proposer = make_proposer(max_len=max_len, max_cached_tokens=40, max_cached_requests=5)
    batch = Batch(proposer, rows=rows, max_len=max_len)
    prompts = [[rng.randrange(8) for _ in range(rng.randrange(1, 40))] for _ in range(4)]
    drafts: list[list[int]] = [[] for _ in range(rows)]
    with caplog.at_level(logging.WARNING):
        for _ in range(600):
            sampled: list[list[int]] = []
            for row in range(rows):
                event = rng.random()
                if event < 0.1 or batch.lengths[row] >= max_len - 1:  # a new request, still in prefill
                    batch.put(row, list(rng.choice(prompts)) + [rng.randrange(8) for _ in range(rng.randrange(3))])
                    sampled.append([])
                elif event < 0.15:  # a move, or a swap with another row
                    other = rng.randrange(rows)
                    a, b = batch.tokens[row].copy(), batch.tokens[other].copy()
                    batch.tokens[row], batch.tokens[other] = b, a
                    batch.lengths[[row, other]] = batch.lengths[[other, row]]
                    sampled.append([rng.randrange(8)] if batch.lengths[row] else [])
                else:  # decode: accept some of the draft, then a token of its own
                    room = max_len - 1 - batch.lengths[row]
                    accepted = (drafts[row][: rng.randrange(len(drafts[row]) + 1)] + [rng.randrange(8)])[:room]
                    batch.append(row, accepted)
                    sampled.append(accepted)
            drafts = batch.step(sampled)
            for row, draft in enumerate(drafts):
                assert len(draft) <= max(0, min(K, max_len - batch.lengths[row] - 1))
                assert all(isinstance(token, int) and 0 <= token < 8 for token in draft)
                assert draft == [] or sampled[row]
    assert not caplog.records


def test_a_failure_costs_drafts_not_the_engine(caplog):
    proposer = make_proposer()
    tokens, lengths = np.zeros((1, MAX_LEN), np.int32), np.array([3], np.int32)
    assert proposer.propose([[1], [2]], lengths, tokens) == [[], []]  # a row the batch does not have
    assert "suffix proposer failed" in caplog.text
    batch = Batch(proposer)
    batch.put(0, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2, 3])
    assert batch.step([[3]]) == [[4, 5, 6]]


def test_no_drafts_in_steps_above_the_schedule_and_requests_still_followed():
    """The batch-size schedule vLLM applies to its own proposers holds for this one too; while it drafts
    nothing, every row is still indexed, so drafts resume as soon as the batch shrinks."""
    sequence = [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 1, 2]
    batch = Batch(make_proposer(schedule=[(1, 2, K), (3, 3, 0)]))
    for row in range(3):
        batch.put(row, sequence)
    assert batch.step([[2], [2]]) == [[3, 4], [3, 4]]  # two requests: drafts (matched 2 tokens)
    for row in range(3):
        batch.append(row, [3])
    assert batch.step([[3], [3], [3]]) == [[], [], []]  # three: none
    batch.append(0, [4])
    assert batch.step([[4]]) == [[5, 6, 7, 8]]  # alone again: its index kept up through the quiet step

