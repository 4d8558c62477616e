"""How many of an image's tokens a pruning budget keeps, and how a budget travels to vLLM.

Shared by the gateway (validation, ``usage``) and the model inside vLLM (placeholder count,
selection), so that both always agree on k: vLLM fixes the placeholder count in its processor
before the encoder runs, and the model must return exactly that many rows per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

METHODS = ("divprune", "cls", "zoo", "random", "stride")
MethodName = Literal["divprune", "cls", "zoo", "random", "stride", "none"]  # "none": keep every token

# Keys of vLLM's per-request ``mm_processor_kwargs`` (they reach the processor and the cache hash).
METHOD_KEY = "leanserve_visual_pruning_method"
KEEP_KEY = "leanserve_visual_pruning_keep"
# Attribute of the HF config (set through ``hf_overrides``) holding the server's default budget.
CONFIG_KEY = "leanserve_visual_pruning"


def parse_keep(text: str | float | int) -> float | int:  # noqa: PYI041 - a ratio (float) is not a count (int)
    """``"0.25"`` / ``0.25`` -> a ratio in (0, 1]; ``"64"`` / ``64`` -> a token count >= 1.

    A number written with a decimal point (or a float) is a ratio, an integer a count.
    """
    if isinstance(text, bool):
        raise ValueError("keep must be a ratio in (0, 1] or a token count >= 1")  # noqa: TRY004 - pydantic turns ValueError into a 400
    if isinstance(text, str):
        text = text.strip()
        value: float | int = float(text) if any(mark in text for mark in ".eE") else int(text)
    else:
        value = text
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {value}")
        return value
    if value < 1:
        raise ValueError(f"keep count must be >= 1, got {value}")
    return int(value)


def kept_tokens(keep: float | int, total: int) -> int:  # noqa: PYI041 - a ratio (float) is not a count (int)
    """Tokens kept of ``total``: round(ratio·total) at least 1, or min(count, total)."""
    if isinstance(keep, float):
        return max(1, min(total, round(keep * total)))
    return max(1, min(total, keep))


@dataclass(frozen=True)
class Budget:
    """A selection method and how much it keeps; method "none" keeps everything."""

    method: MethodName
    keep: float | int

    def kept(self, total: int) -> int:
        return total if self.method == "none" else kept_tokens(self.keep, total)

    def as_processor_kwargs(self) -> dict[str, object]:
        return {METHOD_KEY: self.method, KEEP_KEY: self.keep}

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], default: Budget) -> Budget:
        """The budget in ``mm_processor_kwargs`` (or the HF config's entry), falling back to ``default``."""
        method = values.get(METHOD_KEY, values.get("method", default.method))
        keep = values.get(KEEP_KEY, values.get("keep", default.keep))
        if method not in (*METHODS, "none"):
            raise ValueError(f"unknown visual pruning method {method!r}")
        return cls(method, parse_keep(keep))  # type: ignore[arg-type]
