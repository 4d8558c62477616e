"""Budgets: what a ratio or a count keeps, and which budget a request ends up with (engine/plugins/visual_pruning)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.plugins.visual_pruning.budget import Budget, kept_tokens, parse_keep
from engine.plugins.visual_pruning.plugin import (
    VisualPruningOptions,
    VisualPruningSettings,
    request_budget,
    tokens_per_image,
)


@pytest.mark.parametrize(("text", "value"), [("0.25", 0.25), ("1.0", 1.0), ("64", 64), ("1", 1), (0.1, 0.1), (7, 7)])
def test_a_decimal_point_means_a_ratio_and_an_integer_a_count(text, value):
    parsed = parse_keep(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("bad", ["0", "0.0", "1.5", "-3", "-0.5", True, "abc"])
def test_out_of_range_budgets_are_refused(bad):
    with pytest.raises(ValueError):
        parse_keep(bad)


@pytest.mark.parametrize(("keep", "total", "kept"), [(0.1, 576, 58), (0.05, 576, 29), (0.5, 576, 288), (1.0, 576, 576),
                                                     (0.001, 576, 1), (64, 576, 64), (5000, 576, 576), (1, 576, 1)])
def test_kept_tokens(keep, total, kept):
    assert kept_tokens(keep, total) == kept


def test_request_budget_overrides_the_server_default_field_by_field():
    settings = VisualPruningSettings(visual_pruning="divprune", visual_pruning_keep="0.25")
    assert request_budget(settings, None) == Budget("divprune", 0.25)
    assert request_budget(settings, VisualPruningOptions(keep=64)) == Budget("divprune", 64)
    assert request_budget(settings, VisualPruningOptions(method="cls")) == Budget("cls", 0.25)
    assert request_budget(settings, VisualPruningOptions(enabled=False)).kept(576) == 576


@pytest.mark.parametrize("body", [{"keep": 0}, {"keep": 1.5}, {"keep": -1}, {"keep": "0.5"}, {"method": "best"},
                                  {"ratio": 0.5}, {"keep": True}])
def test_request_options_refuse_bad_budgets(body):
    with pytest.raises(ValidationError):
        VisualPruningOptions.model_validate(body)


def test_tokens_per_image_follows_the_vision_config():
    assert tokens_per_image({"vision_config": {"image_size": 336, "patch_size": 14}}) == 576
    assert tokens_per_image({"vision_config": {"image_size": 224, "patch_size": 14}}) == 256
    assert tokens_per_image({"vision_config": {"image_size": 224, "patch_size": 14},
                             "vision_feature_select_strategy": "full"}) == 257
