"""Entropy-adaptive model switching: a small model writes the easy tokens, the large model the hard ones."""

from engine.plugins.adaptive.plugin import PLUGIN

__all__ = ["PLUGIN"]
