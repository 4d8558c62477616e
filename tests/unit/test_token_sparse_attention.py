"""Token Sparse Attention: the batched and Triton paths against the reference, and the rule's promises
(kernels/token_sparse_attention)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels.token_sparse_attention import reference, token_sparse_attention, vectorised
from kernels.token_sparse_attention.reference import SparsityConfig

# (L, H, H_kv, D): one token, fewer tokens than any window, odd lengths; GQA 3 and 7 to 1, plain MHA; D 64 and 80.
SHAPES = [(1, 4, 4, 64), (5, 9, 3, 64), (37, 14, 2, 80), (37, 4, 4, 64), (301, 9, 3, 64), (301, 14, 2, 80)]
CONFIGS = [SparsityConfig(coverage=0.05, window=8, min_tokens=4),
           SparsityConfig(coverage=0.3, window=3, min_tokens=1),
           SparsityConfig(coverage=0.1, window=64, min_tokens=2),  # window larger than the short prompts
           SparsityConfig(coverage=0.2, window=4, min_tokens=1000)]  # min_tokens larger than every prompt
BF16_ATOL = 2e-2  # bf16 output rounding (2^-8 relative) on values of magnitude ≲ 2, plus bf16 softmax weights


def _cases(shapes=SHAPES, configs=CONFIGS):
    """Every (shape, config), prompts no longer than the window included."""
    return [pytest.param(shape, config, id=f"{shape}-{config.coverage}-{config.window}-{config.min_tokens}")
            for shape in shapes for config in configs]


def _inputs(length, heads, kv_heads, dim, seed=0, dtype=torch.float32):
    """query [L, H, D], key/value [L, H_kv, D], scale: a few heavy-hitter keys so attention concentrates."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(length, heads, dim, generator=generator)
    key = torch.randn(length, kv_heads, dim, generator=generator)
    key[::7] *= 3  # heavy hitters: a seventh of the keys draw large logits
    value = torch.randn(length, kv_heads, dim, generator=generator)
    return query.to(dtype), key.to(dtype), value.to(dtype), 1.5 * dim ** -0.5


def _dense(query, key, value, scale):
    """Dense causal attention, [L, H, D] out, through PyTorch's SDPA with grouped-query heads."""
    q, k, v = (t.transpose(0, 1).float() for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("window", "dtype"), [(1, torch.float32), (8, torch.float32), (500, torch.float32),
                                               (8, torch.bfloat16)])
def test_token_scores_match_the_reference(shape, window, dtype):
    query, key, _, scale = _inputs(*shape, dtype=dtype)
    scores = vectorised.token_scores(query, key, window, scale)
    expected = reference.token_scores(query, key, window, scale)
    assert scores.dtype == torch.float32 and scores.shape == (shape[1], shape[0])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(shape[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("shape", "config"), _cases())
def test_select_tokens_is_the_reference_given_the_same_scores(shape, config):
    query, key, _, scale = _inputs(*shape, seed=1)
    scores = vectorised.token_scores(query, key, config.window, scale)
    assert torch.equal(vectorised.select_tokens(scores, config), reference.select_tokens(scores, config))


def test_select_tokens_breaks_ties_as_the_reference():
    """Equal scores everywhere: both take the lowest positions first (stable sort)."""
    scores = torch.full((3, 40), 1 / 40)
    config = SparsityConfig(coverage=0.5, window=4, min_tokens=1)
    kept = vectorised.select_tokens(scores, config)
    assert torch.equal(kept, reference.select_tokens(scores, config))
    assert kept[0].tolist() == list(range(16)) + list(range(36, 40))  # 16 + 4 tokens carry 0.5


@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize(("shape", "config"), _cases())
def test_vectorised_path_matches_the_reference_end_to_end(shape, config, dtype):
    query, key, value, scale = _inputs(*shape, seed=2, dtype=dtype)
    out, kept = vectorised.token_sparse_attention(query, key, value, scale, config)
    expected, expected_kept = reference.token_sparse_attention(query, key, value, scale, config)
    assert torch.equal(kept, expected_kept)
    assert out.shape == query.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-4 if dtype == torch.float32 else BF16_ATOL,
                               rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
@pytest.mark.parametrize(("shape", "config"), _cases(shapes=[(37, 14, 2, 80), (301, 9, 3, 64)], configs=CONFIGS[:2]))
def test_vectorised_path_matches_the_reference_in_bfloat16(shape, config, dtype):
    test_vectorised_path_matches_the_reference_end_to_end(shape, config, dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_coverage_zero_is_dense_causal_attention_on_every_token(shape):
    query, key, value, scale = _inputs(*shape, seed=3)
    config = SparsityConfig(coverage=0.0, window=4, min_tokens=1)
    dense = _dense(query, key, value, scale)
    for path in (reference.token_sparse_attention, vectorised.token_sparse_attention):
        out, kept = path(query, key, value, scale, config)
        assert torch.equal(kept, torch.arange(shape[0]).expand(shape[1], -1))
        torch.testing.assert_close(out, dense, atol=1e-5, rtol=0)


def _minimal_count(scores, config):
    """The rule written out once more: per head, the tail plus the fewest best others reaching 1 - coverage."""
    length = scores.shape[1]
    protected = min(config.window, length)
    needed = []
    for row in scores.double():
        mass, total = row[length - protected:].sum().item(), protected
        for value in row[:length - protected].sort(descending=True).values.tolist():
            if mass >= 1 - config.coverage - 1e-6:
                break
            mass, total = mass + value, total + 1
        needed.append(total)
    return min(length, max(max(needed), config.min_tokens))


@pytest.mark.parametrize(("shape", "config"), _cases(configs=CONFIGS[:2] + CONFIGS[3:]))
def test_kept_sets_keep_their_promises(shape, config):
    length, heads = shape[:2]
    query, key, value, scale = _inputs(*shape, seed=4)
    out, kept = vectorised.token_sparse_attention(query, key, value, scale, config)
    scores = reference.token_scores(query, key, config.window, scale)
    count = kept.shape[1]
    assert kept.shape == (heads, count) and count >= min(config.min_tokens, length)
    assert abs(count - _minimal_count(scores, config)) <= 1  # no head keeps more than the neediest head needs
    tail = set(range(max(0, length - config.window), length))
    for head in range(heads):
        positions = kept[head].tolist()
        assert positions == sorted(set(positions)) and 0 <= positions[0] and positions[-1] < length
        assert tail <= set(positions)  # the window's own tokens are always kept
        assert scores[head, kept[head]].sum() >= 1 - config.coverage - 1e-5  # the head's score mass
        dropped = torch.ones(length, dtype=torch.bool)
        dropped[kept[head]] = False
        assert torch.all(out[dropped, head] == 0)  # exactly zero, not small
        assert torch.all(out[kept[head], head].abs().sum(dim=-1) > 0)


def test_a_concentrated_prompt_drops_most_tokens():
    """Heavy hitters take the mass: the rule then keeps far fewer than L tokens (else nothing above can fail)."""
    query, key, value, scale = _inputs(301, 4, 2, 64, seed=5)
    key[::7] *= 3  # the heavy hitters once more: 9x the logits of the others
    _, kept = vectorised.token_sparse_attention(query, key, value, scale, SparsityConfig(0.1, 8, 4))
    assert kept.shape[1] < 301 // 2


def test_sparsity_config_rejects_bad_values():
    for bad in ({"coverage": -0.01}, {"coverage": 1.0}, {"coverage": 1.5}, {"window": 0}, {"min_tokens": 0},
                {"window": -3}):
        with pytest.raises(ValueError):
            SparsityConfig(**bad)
    assert SparsityConfig(coverage=0.0).coverage == 0.0 and SparsityConfig(coverage=0.99).coverage == 0.99


def test_the_dispatcher_writes_into_out_on_a_cpu():
    query, key, value, scale = _inputs(37, 9, 3, 64, seed=6)
    config = SparsityConfig(0.05, 8, 4)
    out = torch.full_like(query, float("nan"))
    result, kept = token_sparse_attention(query, key, value, scale, config, out)
    expected, expected_kept = reference.token_sparse_attention(query, key, value, scale, config)
    assert result is out and torch.equal(kept, expected_kept)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


# (L, H, H_kv, D, dtype, config): GQA and not, D 64/80/128, window ≥ L, min_tokens > L, coverage 0, 16-bit inputs.
TRITON_CASES = [(37, 4, 2, 64, torch.float32, SparsityConfig(0.1, 8, 4)),
                (53, 6, 3, 80, torch.float32, SparsityConfig(0.05, 20, 3)),
                (23, 2, 2, 128, torch.float32, SparsityConfig(0.3, 5, 1)),
                (5, 4, 1, 64, torch.float32, SparsityConfig(0.1, 64, 1)),
                (1, 2, 1, 64, torch.float32, SparsityConfig(0.1, 4, 1)),
                (33, 4, 4, 64, torch.float32, SparsityConfig(0.0, 4, 1)),
                (29, 3, 3, 64, torch.float32, SparsityConfig(0.2, 4, 100)),
                (45, 4, 1, 64, torch.bfloat16, SparsityConfig(0.1, 16, 2)),
                (40, 2, 1, 64, torch.float16, SparsityConfig(0.1, 16, 2))]


def triton_mismatches() -> list[str]:
    """Each case through the Triton path against the reference: scores, kept sets, outputs (mismatches listed)."""
    from kernels.token_sparse_attention.triton_kernels import token_scores_triton, token_sparse_attention_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mismatches = []
    for length, heads, kv_heads, dim, dtype, config in TRITON_CASES:
        name = f"{(length, heads, kv_heads, dim, dtype, config)}"
        query, key, value, scale = _inputs(length, heads, kv_heads, dim, seed=length, dtype=dtype)
        packed = torch.cat([query, key, value], dim=1).to(device)  # a fused QKV projection: strided views
        q, k, v = packed.split([heads, kv_heads, kv_heads], dim=1)
        scores = token_scores_triton(q, k, config.window, scale).cpu()
        if not torch.allclose(scores, reference.token_scores(query, key, config.window, scale), atol=1e-5, rtol=0):
            mismatches.append(f"{name}: scores")
        out = torch.full_like(q, float("nan"))  # every row written: kept ones by attention, the rest zero
        result, kept = token_sparse_attention_triton(q, k, v, scale, config, out)
        expected, expected_kept = reference.token_sparse_attention(query, key, value, scale, config)
        atol = 1e-4 if dtype == torch.float32 else BF16_ATOL
        if result is not out or not torch.equal(kept.cpu(), expected_kept):
            mismatches.append(f"{name}: kept {kept.tolist()} != {expected_kept.tolist()}")
        elif not torch.allclose(out.cpu().float(), expected.float(), atol=atol, rtol=0):
            mismatches.append(f"{name}: output off by {(out.cpu().float() - expected.float()).abs().max():.2e}")
        elif not torch.equal(out.cpu() == 0, expected == 0):
            mismatches.append(f"{name}: dropped rows")
    return mismatches


def test_triton_kernels_match_the_reference():
    """On a GPU for real; on a CPU through Triton's interpreter in a fresh process (Triton reads
    TRITON_INTERPRET once, and other tests may have imported it already)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        assert triton_mismatches() == []
        return
    code = "from tests.unit.test_token_sparse_attention import triton_mismatches as t; print(t())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
