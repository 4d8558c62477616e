"""Efficient Video Sampling on vLLM 0.32's CPU model runner, which dies at the first pruned video.

EVS (Bagrov et al. 2025, "Efficient Video Sampling: Pruning Temporally Redundant Tokens for
Faster VLM Inference") drops the patches of a frame that barely changed since the previous
one. vLLM runs it inside Qwen2.5-VL: the processor reserves fewer placeholders, the model keeps
that many embeddings and appends 4 channels with each kept token's M-RoPE position, and the GPU
runner strips those channels and rewrites the positions (``recompute_mrope_positions``) when its
flag ``is_multimodal_pruning_enabled`` is set in ``GPUModelRunner.load_model``
(gpu_model_runner.py:5156). ``CPUModelRunner.load_model`` (cpu_model_runner.py:62) replaces that
method without setting the flag, so the position channels reach the language model and the
engine dies (``shape mismatch ... [234, 132] ... [234, 128]``). Setting the two flags after the
CPU runner loads its model, as the GPU runner does, is the whole fix (shared/VLLM_INTERNALS.md).
"""

from __future__ import annotations

import functools

_PATCHED = "_leanserve_sets_pruning_flags"


def enable_multimodal_pruning_on_cpu_runner() -> None:
    """Wrap ``CPUModelRunner.load_model`` to set the GPU runner's pruning flags (idempotent)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner.load_model, _PATCHED, False):
        return
    original = CPUModelRunner.load_model

    @functools.wraps(original)
    def load_model(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        set_pruning_flags(self)

    setattr(load_model, _PATCHED, True)
    CPUModelRunner.load_model = load_model


def set_pruning_flags(runner) -> None:
    """What ``GPUModelRunner.load_model`` sets after loading (gpu_model_runner.py:5156-5163)."""
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    model = runner.get_model()
    mm_config = runner.model_config.multimodal_config
    runner.is_multimodal_pruning_enabled = (supports_multimodal_pruning(model) and mm_config is not None
                                            and mm_config.is_multimodal_pruning_enabled())
    runner.requires_sequential_video_encoding = hasattr(model, "requires_sequential_video_encoding")
