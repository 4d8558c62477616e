"""Video-token pruning (Efficient Video Sampling, vLLM's own, made to run on the CPU runner): plugin.py."""

from engine.plugins.video_pruning.plugin import PLUGIN

__all__ = ["PLUGIN"]
