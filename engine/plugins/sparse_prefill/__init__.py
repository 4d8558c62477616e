"""Token-sparse prefill attention (TSA): cheaper long-prompt prefill, with the full KV cache kept.

``plugin.py`` is the switch and the accounting, ``backend.py`` the attention inside vLLM,
``rows.py`` which prompts go sparse, ``sparse_layers.py`` which layers (lists in ``layers/``), ``drift.py`` the profiler that
picks them, ``wire.py``/``channel.py`` the per-request figures' way back to the gateway.
"""

from engine.plugins.sparse_prefill.plugin import PLUGIN

__all__ = ["PLUGIN"]
