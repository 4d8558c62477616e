"""Stop strings over the whole answer, across hand-overs.

Each engine request checks stop strings in its own output only, so a stop string whose
first characters one model wrote and whose last the other did would be missed; and a
stream closed at a hand-over would lose the text vLLM holds back while it may begin a
stop string. So the adaptive engine sends its requests without stop strings and watches
the joined text here, holding back, as vLLM does, what may still begin one.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopWatcher:
    """Feeds text through, cut before the first stop string; holds back a possible beginning of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text safe to emit now, and whether a stop string ended the answer (text cut before it)."""
        text = self._held + text
        hits = [found for stop in self._stops if (found := text.find(stop)) >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = self._possible_start(text)
        self._held = text[len(text) - keep:]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """What was held back, once the answer ends another way (length, end of sequence)."""
        held, self._held = self._held, ""
        return held

    def _possible_start(self, text: str) -> int:
        """The longest end of ``text`` that is the beginning of a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
