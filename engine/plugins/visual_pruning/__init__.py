"""Visual-token pruning (DivPrune, FasterVLM [CLS] attention, ZOO-Prune, random, stride): plugin.py."""

from engine.plugins.visual_pruning.plugin import PLUGIN

__all__ = ["PLUGIN"]
