"""The batched and Triton selection rules against the one-token-at-a-time references (kernels/visual_token_selection)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kernels.visual_token_selection import reference, vectorised

# (images, tokens, dim, keep): odd sizes, one token, keep everything, keep one.
SHAPES = [(1, 1, 5, 1), (3, 7, 3, 2), (2, 37, 11, 9), (4, 50, 16, 50), (2, 129, 8, 1), (1, 64, 24, 31)]


def _tokens(batch: int, count: int, dim: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, count, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cosine_distances_match_the_pairwise_reference(dtype):
    tokens = _tokens(2, 13, 7, seed=1, dtype=dtype)
    batched = vectorised.cosine_distances(tokens)
    for image in range(2):
        torch.testing.assert_close(batched[image], reference.cosine_distance_matrix(tokens[image]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("batch", "count", "dim", "keep"), SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_max_min_diversity_picks_what_the_reference_picks(batch, count, dim, keep, weighted):
    distances = vectorised.cosine_distances(_tokens(batch, count, dim, seed=count))
    weights = torch.rand(batch, count, generator=torch.Generator().manual_seed(7)) if weighted else None
    picks = vectorised.max_min_diversity(distances, keep, weights)
    expected = [reference.max_min_diversity_reference(distances[i], keep, None if weights is None else weights[i])
                for i in range(batch)]
    assert picks.tolist() == expected
    assert all(len(set(row)) == keep for row in picks.tolist())  # distinct tokens


@pytest.mark.parametrize(("batch", "count", "dim", "keep"), SHAPES)
def test_divprune_keeps_ascending_indices_as_the_reference(batch, count, dim, keep):
    tokens = _tokens(batch, count, dim, seed=3)
    kept = vectorised.divprune(tokens, keep)
    distances = vectorised.cosine_distances(tokens)
    assert kept.tolist() == [sorted(reference.max_min_diversity_reference(distances[i], keep)) for i in range(batch)]


def test_divprune_spreads_over_clusters_where_the_first_k_would_not():
    """Four tight clusters of 10 tokens: four picks land one in each (the point of diversity)."""
    centres = torch.eye(4, 8) * 10
    tokens = (centres.repeat_interleave(10, dim=0) + 0.01 * torch.randn(40, 8))[None]
    kept = vectorised.divprune(tokens, 4)[0]
    assert sorted((kept // 10).tolist()) == [0, 1, 2, 3]


def test_zoo_sensitivity_matches_the_reference_and_finds_the_sensitive_tokens():
    torch.manual_seed(0)
    projector = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.GELU(), torch.nn.Linear(12, 5))
    features = torch.randn(2, 9, 6)
    directions = torch.randn(3, 6) / 6 ** 0.5
    with torch.no_grad():
        batched = vectorised.zoo_sensitivity(features, projector, directions, step=1e-3)
        for image in range(2):
            expected = reference.zoo_sensitivity_reference(features[image], projector, directions, step=1e-3)
            torch.testing.assert_close(batched[image], expected, atol=1e-4, rtol=1e-4)
        # A linear projector has the same sensitivity at every token: |W u| / 1.
        linear = torch.nn.Linear(6, 5)
        flat = vectorised.zoo_sensitivity(features, linear, directions, step=1e-2)
        torch.testing.assert_close(flat, flat[:, :1].expand_as(flat), atol=1e-4, rtol=1e-4)


def test_zoo_prune_matches_the_reference():
    torch.manual_seed(1)
    projector = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.GELU(), torch.nn.Linear(10, 4))
    features, directions = torch.randn(3, 23, 6), torch.randn(4, 6) / 6 ** 0.5
    with torch.no_grad():
        projected = projector(features)
        sensitivity = vectorised.zoo_sensitivity(features, projector, directions, 1e-2, projected)
        kept = vectorised.zoo_prune(projected, sensitivity, 7)
        expected = [reference.zoo_prune_reference(features[i], projected[i], projector, directions, 1e-2, 7)
                    for i in range(3)]
    assert kept.tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cls_attention_matches_the_reference(dtype):
    generator = torch.Generator().manual_seed(5)
    query, keys = torch.randn(2, 3, 8, generator=generator).to(dtype), torch.randn(2, 3, 17, 8, generator=generator).to(dtype)
    scores = vectorised.cls_attention(query, keys, 8 ** -0.5)
    assert scores.shape == (2, 16)
    for image in range(2):
        torch.testing.assert_close(scores[image], reference.cls_attention_reference(query[image], keys[image], 8 ** -0.5),
                                   atol=1e-6, rtol=1e-5)


def test_top_k_stride_and_random_rules():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert vectorised.top_k(scores, 2).tolist() == [reference.top_k_reference(row, 2) for row in scores]
    assert vectorised.top_k(scores, 2).tolist() == [[1, 3], [0, 1]]  # ties to the lower index
    for count, keep in [(576, 58), (576, 576), (7, 3), (10, 1)]:
        assert vectorised.stride(2, count, keep).tolist() == [reference.stride_reference(count, keep)] * 2
    first, again = vectorised.random_subset(3, 50, 10, seed=4), vectorised.random_subset(3, 50, 10, seed=4)
    assert torch.equal(first, again) and all(len(set(row)) == 10 for row in first.tolist())
    assert torch.equal(first, first.sort(dim=1).values)


def triton_matches_reference() -> list[str]:
    """Every shape, weighted or not: the Triton kernel's picks against the reference's (mismatches listed)."""
    from kernels.visual_token_selection.triton_kernels import max_min_diversity_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mismatches = []
    for batch, count, dim, keep in SHAPES:
        for weighted in (False, True):
            distances = vectorised.cosine_distances(_tokens(batch, count, dim, seed=count + 1)).to(device)
            weights = torch.rand(batch, count, generator=torch.Generator().manual_seed(2)).to(device) if weighted else None
            picks = max_min_diversity_triton(distances, keep, weights).cpu().tolist()
            expected = [reference.max_min_diversity_reference(distances[i].cpu(), keep,
                                                              None if weights is None else weights[i].cpu())
                        for i in range(batch)]
            if picks != expected:
                mismatches.append(f"{(batch, count, dim, keep, weighted)}: {picks} != {expected}")
    return mismatches


def test_triton_kernel_matches_the_reference():
    """On a GPU for real; on a CPU through Triton's interpreter (the same kernel code, numpy underneath), in a
    fresh process: Triton reads TRITON_INTERPRET once, and other tests may have imported it already."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        assert triton_matches_reference() == []
        return
    code = "from tests.unit.test_visual_token_selection import triton_matches_reference as t; print(t())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_served_zoo_path_equals_the_black_box_reference():
    """The model's ZOO path (first layer by linearity, engine/plugins/visual_pruning/selection.py) selects what the
    reference selects when it perturbs the whole projector as a black box."""
    from engine.plugins.visual_pruning.selection import ZOO_STEP, ProjectorMLP, select_tokens, zoo_directions

    generator = torch.Generator().manual_seed(11)
    projector = ProjectorMLP(torch.randn(12, 6, generator=generator) * 0.5, torch.randn(12, generator=generator),
                             torch.randn(5, 12, generator=generator) * 0.5, torch.zeros(5))
    features = torch.randn(2, 31, 6, generator=generator)
    directions = zoo_directions(6, torch.device("cpu"))
    fast = projector.sensitivity(features, directions, ZOO_STEP)
    for image in range(2):
        slow = reference.zoo_sensitivity_reference(features[image], projector, directions, ZOO_STEP)
        torch.testing.assert_close(fast[image], slow, atol=2e-3, rtol=2e-3)
    kept = select_tokens("zoo", 9, features, projector(features), projector)
    assert kept.tolist() == [reference.zoo_prune_reference(features[i], projector(features[i]), projector, directions,
                                                           ZOO_STEP, 9) for i in range(2)]
