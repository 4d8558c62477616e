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


def _mixed_inputs(length, dim, seed=0, dtype=torch.float32):
    """query [L, 4, D], key/value [L, 2, D], scale: heads that need very different numbers of tokens.

    Key/value head 0 has a heavy hitter every 16 positions along a direction u; query head 0 points
    along u (concentrated: the hitters and the window carry the mass), query head 1 is almost zero
    (near-uniform rows: it needs most tokens). Key/value head 1 is plain noise; query head 2 is noise,
    query head 3 a weaker pull toward key/value head 1's hitters (in between)."""
    generator = torch.Generator().manual_seed(seed)
    key = torch.randn(length, 2, dim, generator=generator)
    directions = F.normalize(torch.randn(2, dim, generator=generator), dim=-1)  # [H_kv, D]
    key[::16, 0] += 4 * directions[0]
    key[5::11, 1] += 3 * directions[1]
    query = torch.randn(length, 4, dim, generator=generator)
    query[:, 0] = 0.3 * query[:, 0] + 3 * dim ** 0.5 * directions[0]
    query[:, 1] *= 0.02
    query[:, 3] = 0.5 * query[:, 3] + 1.5 * dim ** 0.5 * directions[1]
    value = torch.randn(length, 2, dim, generator=generator)
    return query.to(dtype), key.to(dtype), value.to(dtype), dim ** -0.5


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
    kept, counts = vectorised.select_tokens(scores, config)
    expected_kept, expected_counts = reference.select_tokens(scores, config)
    assert kept.dtype == counts.dtype == torch.int64
    assert torch.equal(kept, expected_kept) and torch.equal(counts, expected_counts)


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_select_tokens_is_the_reference_when_heads_differ(config):
    query, key, _, scale = _mixed_inputs(301, 32, seed=1)
    scores = vectorised.token_scores(query, key, config.window, scale)
    kept, counts = vectorised.select_tokens(scores, config)
    expected_kept, expected_counts = reference.select_tokens(scores, config)
    assert len(set(counts.tolist())) > 1  # else this case adds nothing to the one above
    assert torch.equal(kept, expected_kept) and torch.equal(counts, expected_counts)


def test_select_tokens_breaks_ties_as_the_reference():
    """Equal scores everywhere: both take the lowest positions first (stable sort)."""
    scores = torch.full((3, 40), 1 / 40)
    config = SparsityConfig(coverage=0.5, window=4, min_tokens=1)
    kept, counts = vectorised.select_tokens(scores, config)
    expected_kept, expected_counts = reference.select_tokens(scores, config)
    assert torch.equal(kept, expected_kept) and torch.equal(counts, expected_counts)
    assert counts.tolist() == [20] * 3  # 16 + 4 tokens carry 0.5
    assert kept[0].tolist() == list(range(16)) + list(range(36, 40))


@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize(("shape", "config"), _cases())
def test_vectorised_path_matches_the_reference_end_to_end(shape, config, dtype):
    query, key, value, scale = _inputs(*shape, seed=2, dtype=dtype)
    out, counts = vectorised.token_sparse_attention(query, key, value, scale, config)
    expected, expected_counts = reference.token_sparse_attention(query, key, value, scale, config)
    assert torch.equal(counts, expected_counts)
    assert out.shape == query.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-4 if dtype == torch.float32 else BF16_ATOL,
                               rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
@pytest.mark.parametrize(("shape", "config"), _cases(shapes=[(37, 14, 2, 80), (301, 9, 3, 64)], configs=CONFIGS[:2]))
def test_vectorised_path_matches_the_reference_in_bfloat16(shape, config, dtype):
    test_vectorised_path_matches_the_reference_end_to_end(shape, config, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vectorised_path_matches_the_reference_when_heads_differ(dtype):
    query, key, value, scale = _mixed_inputs(301, 32, seed=2, dtype=dtype)
    config = SparsityConfig(0.1, 8, 4)
    out, counts = vectorised.token_sparse_attention(query, key, value, scale, config)
    expected, expected_counts = reference.token_sparse_attention(query, key, value, scale, config)
    assert len(set(counts.tolist())) > 1 and torch.equal(counts, expected_counts)
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-4 if dtype == torch.float32 else BF16_ATOL,
                               rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_coverage_zero_is_dense_causal_attention_on_every_token(shape):
    query, key, value, scale = _inputs(*shape, seed=3)
    config = SparsityConfig(coverage=0.0, window=4, min_tokens=1)
    dense = _dense(query, key, value, scale)
    for path in (reference.token_sparse_attention, vectorised.token_sparse_attention):
        out, counts = path(query, key, value, scale, config)
        assert torch.equal(counts, torch.full((shape[1],), shape[0]))
        torch.testing.assert_close(out, dense, atol=1e-5, rtol=0)
    kept, counts = vectorised.select_tokens(vectorised.token_scores(query, key, 4, scale), config)
    assert torch.equal(kept, torch.arange(shape[0]).expand(shape[1], -1)) and torch.equal(counts, torch.full((shape[1],), shape[0]))


def _expected_counts(scores, config):
    """The rule written out once more, per head: the tail plus the fewest best others reaching 1 - coverage
    (float64, one token at a time), at least min_tokens; then each raised to the most its width class needs."""
    length = scores.shape[1]
    protected = min(config.window, length)
    needed = []
    for row in scores.double():
        mass, total = row[length - protected:].sum().item(), protected
        for value in row[:length - protected].sort(descending=True).values.tolist():
            if mass >= 1 - config.coverage:
                break
            mass, total = mass + value, total + 1
        needed.append(min(length, max(total, config.min_tokens)))
    widest = {}
    for count in needed:  # width class: the bits of count - 1, i.e. ceil(log2(count))
        widest[(count - 1).bit_length()] = max(widest.get((count - 1).bit_length(), 0), count)
    return [widest[(count - 1).bit_length()] for count in needed]


def _check_promises(query, key, value, scale, config):
    """Each head's kept set against the rule's promises; returns the counts."""
    length, heads = query.shape[:2]
    scores = vectorised.token_scores(query, key, config.window, scale)  # as the sparse path computes them
    kept, counts = vectorised.select_tokens(scores, config)
    out, out_counts = vectorised.token_sparse_attention(query, key, value, scale, config)
    assert torch.equal(out_counts, counts) and kept.shape == (heads, counts.max())
    assert counts.tolist() == _expected_counts(scores, config)  # own needs, rounded within the class only
    tail = set(range(max(0, length - config.window), length))
    for head in range(heads):
        count = int(counts[head])
        assert min(config.min_tokens, length) <= count <= length
        assert torch.all(kept[head, count:] == -1)  # padding
        positions = kept[head, :count]
        assert positions.tolist() == sorted(set(positions.tolist())) and 0 <= positions[0] and positions[-1] < length
        assert tail <= set(positions.tolist())  # the window's own tokens are always kept
        assert scores[head, positions].sum() >= 1 - config.coverage - 1e-5  # the head's score mass
        dropped = torch.ones(length, dtype=torch.bool)
        dropped[positions] = False
        assert torch.all(out[dropped, head] == 0)  # exactly zero, not small
        assert torch.all(out[positions, head].abs().sum(dim=-1) > 0)
    return counts


@pytest.mark.parametrize(("shape", "config"), _cases(configs=CONFIGS[:2] + CONFIGS[3:]))
def test_kept_sets_keep_their_promises(shape, config):
    _check_promises(*_inputs(*shape, seed=4), config)


@pytest.mark.parametrize("config", [SparsityConfig(0.1, 8, 4), SparsityConfig(0.05, 16, 1),
                                    SparsityConfig(0.3, 4, 40)])
def test_heads_keep_their_own_counts(config):
    """A concentrated head and a diffuse one: each keeps what it needs, not what the neediest head needs
    (fails if the selection goes back to one width for every head)."""
    counts = _check_promises(*_mixed_inputs(509, 32, seed=5), config)
    assert counts[0] < counts[1] / 2  # the concentrated head keeps well under half the diffuse one's tokens
    assert len(set(counts.tolist())) >= 3


def test_a_concentrated_prompt_drops_most_tokens():
    """Heavy hitters take the mass: the rule then keeps far fewer than L tokens (else nothing above can fail)."""
    query, key, value, scale = _inputs(301, 4, 2, 64, seed=5)
    key[::7] *= 3  # the heavy hitters once more: 9x the logits of the others
    _, counts = vectorised.token_sparse_attention(query, key, value, scale, SparsityConfig(0.1, 8, 4))
    assert counts.max() < 301 // 2


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
    result, counts = token_sparse_attention(query, key, value, scale, config, out)
    expected, expected_counts = reference.token_sparse_attention(query, key, value, scale, config)
    assert result is out and torch.equal(counts, expected_counts)
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
# (L, D, dtype, config) through ``_mixed_inputs`` (4 heads, 2 key/value heads): heads keep different counts, some
# ending inside a block, so programs past a head's count must exit and the padding after it must go unread.
TRITON_MIXED_CASES = [(75, 32, torch.float32, SparsityConfig(0.1, 4, 1)),
                      (61, 64, torch.bfloat16, SparsityConfig(0.05, 8, 2))]


def triton_mismatches() -> list[str]:
    """Each case through the Triton path against the reference: scores, counts, outputs (mismatches listed)."""
    from kernels.token_sparse_attention.triton_kernels import token_scores_triton, token_sparse_attention_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [(config, (length, heads, kv_heads, dim, dtype), _inputs(length, heads, kv_heads, dim, seed=length,
                                                                     dtype=dtype))
             for length, heads, kv_heads, dim, dtype, config in TRITON_CASES]
    cases += [(config, ("mixed", length, dim, dtype), _mixed_inputs(length, dim, seed=length, dtype=dtype))
              for length, dim, dtype, config in TRITON_MIXED_CASES]
    mismatches = []
    for config, shape, (query, key, value, scale) in cases:
        name = f"{shape + (config,)}"
        heads, kv_heads = query.shape[1], key.shape[1]
        packed = torch.cat([query, key, value], dim=1).to(device)  # a fused QKV projection: strided views
        q, k, v = packed.split([heads, kv_heads, kv_heads], dim=1)
        scores = token_scores_triton(q, k, config.window, scale).cpu()
        if not torch.allclose(scores, reference.token_scores(query, key, config.window, scale), atol=1e-5, rtol=0):
            mismatches.append(f"{name}: scores")
        out = torch.full_like(q, float("nan"))  # every row written: kept ones by attention, the rest zero
        result, counts = token_sparse_attention_triton(q, k, v, scale, config, out)
        expected, expected_counts = reference.token_sparse_attention(query, key, value, scale, config)
        atol = 1e-4 if query.dtype == torch.float32 else BF16_ATOL
        if shape[0] == "mixed" and len(set(expected_counts.tolist())) < 2:
            mismatches.append(f"{name}: every head keeps {expected_counts.tolist()}, the case tests nothing")
        if result is not out or not torch.equal(counts.cpu(), expected_counts):
            mismatches.append(f"{name}: counts {counts.tolist()} != {expected_counts.tolist()}")
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


@pytest.mark.parametrize("window", [1, 16, 200])
def test_the_window_rows_attend_densely_and_the_rest_do_not(window):
    """The last W rows equal dense attention (they score the tokens and write the first answer token); rows before
    them that attended over fewer tokens differ from dense (so this test fails if the sparse rows were dense)."""
    query, key, value, scale = _mixed_inputs(257, 64, seed=5)
    config = SparsityConfig(coverage=0.2, window=window, min_tokens=1)
    dense = _dense(query, key, value, scale)
    for path in (reference.token_sparse_attention, vectorised.token_sparse_attention):
        out, counts = path(query, key, value, scale, config)
        assert torch.allclose(out[-window:], dense[-window:], atol=1e-5)
        assert int(counts.min()) < 257 and not torch.allclose(out[:-window], dense[:-window], atol=1e-3)
