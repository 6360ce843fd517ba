"""The planning token: a marker the model emits right before a re-mention, never shown to clients.

The filter removes it from generated text, also when the marker arrives split over several streamed deltas,
and counts how often it appeared (a convention signal per partner).
"""

from __future__ import annotations

from dataclasses import dataclass

PLANNING_TOKEN = "[remention]"


def insert_marker(text: str, start: int, marker: str = PLANNING_TOKEN) -> str:
    """Returns ``text`` with ``marker`` right before the mention that begins at ``start``.

    The marker is attached to the end of the previous word ("pass me[remention] the mug"), so that the mention
    keeps its usual leading-space tokens and removing the marker restores the text exactly.
    """
    before = text[:start]
    stripped = before.rstrip(" ")
    return stripped + marker + before[len(stripped) :] + text[start:]


@dataclass
class PlanningTokenFilter:
    """Strips ``marker`` from a stream of text pieces; call ``feed`` per piece and ``finish`` at the end."""

    marker: str = PLANNING_TOKEN
    count: int = 0
    _pending: str = ""
    _last_sent: str = " "
    _drop_space: bool = False

    def feed(self, piece: str) -> str:
        """Returns the part of ``pending + piece`` that is certainly not part of a marker."""
        text = self._pending + piece
        if self._drop_space and text:
            text = text[1:] if text.startswith(" ") else text
            self._drop_space = False
        text = self._remove_complete(text)
        keep = self._partial_suffix_length(text)
        self._pending = text[len(text) - keep :] if keep else ""
        sent = text[: len(text) - keep] if keep else text
        if sent:
            self._last_sent = sent[-1]
        return sent

    def finish(self) -> str:
        """Returns the text held back at the end: a partial marker that never completed is ordinary text."""
        rest, self._pending = self._pending, ""
        return rest

    def strip(self, text: str) -> str:
        """Removes every marker from a complete text."""
        return self.feed(text) + self.finish()

    def _remove_complete(self, text: str) -> str:
        while (start := text.find(self.marker)) >= 0:
            self.count += 1
            end = start + len(self.marker)
            before = text[start - 1] if start > 0 else self._last_sent
            # The marker sits between two words, so one of the spaces around it goes with it. The space after
            # it may not have arrived yet, in which case the next piece loses its leading space.
            if before == " ":
                if end < len(text):
                    end += 1 if text[end] == " " else 0
                else:
                    self._drop_space = True
            text = text[:start] + text[end:]
        return text

    def _partial_suffix_length(self, text: str) -> int:
        """Returns the length of the longest suffix of ``text`` that is a proper prefix of the marker."""
        for length in range(min(len(self.marker) - 1, len(text)), 0, -1):
            if self.marker.startswith(text[-length:]):
                return length
        return 0
