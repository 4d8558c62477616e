"""Speculative decoding: ngram, suffix decoding, a draft model, or a learned multi-token head."""

from engine.plugins.speculative.plugin import PLUGIN

__all__ = ["PLUGIN"]
