"""The series video-token pruning declares (labels besides ``model``)."""

from __future__ import annotations

from engine.protocol import MetricSpec

VIDEOS = "leanserve_video_pruning_videos"
VIDEO_TOKENS = "leanserve_video_pruning_video_tokens"

METRICS = (
    MetricSpec(VIDEOS, "counter", "Videos the pruning rate applied to, by method.", ("method",)),
    MetricSpec(VIDEO_TOKENS, "counter", "Video tokens before pruning (stage=encoded) and those the language "
                                        "model prefilled (stage=kept), by method.", ("method", "stage")),
)
