"""The HumanEval checker the adaptive benchmark scores with: right code passes, wrong or runaway code fails."""

from __future__ import annotations

from benchmarks.bench.humaneval_check import extract_code, passes

PROBLEM = {
    "task_id": "Demo/0",
    "prompt": 'from typing import List\n\n\ndef total(values: List[int]) -> int:\n    """Sum of values."""\n',
    "entry_point": "total",
    "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n",
}


def test_a_whole_function_in_a_fenced_block_passes_and_gets_the_prompt_imports():
    answer = "Here it is:\n```python\ndef total(values: List[int]) -> int:\n    return sum(values)\n```\nDone."
    assert extract_code(answer, PROBLEM).startswith("from typing import List\n")
    assert passes(answer, PROBLEM)


def test_a_body_only_answer_is_appended_to_the_prompt():
    assert passes("```python\n    return sum(values)\n```", PROBLEM)


def test_an_unclosed_block_cut_at_max_tokens_is_still_read():
    assert passes("```python\ndef total(values):\n    return sum(values)\n", PROBLEM)


def test_wrong_crashing_and_runaway_code_fail():
    assert not passes("```python\ndef total(values):\n    return 0 if not values else 1\n```", PROBLEM)
    assert not passes("```python\ndef total(values):\n    raise SystemExit(3)\n```", PROBLEM)
    assert not passes("```python\ndef total(values):\n    while True:\n        pass\n```", PROBLEM, timeout_s=1)
    assert not passes("```python\ndef total(values):\n    return len(bytearray(1 << 31))\n```", PROBLEM)


def test_the_child_gets_no_environment():
    leak = "```python\nimport os\ndef total(values):\n    assert not os.environ.get('HOME')\n    return sum(values)\n```"
    assert passes(leak, PROBLEM)
