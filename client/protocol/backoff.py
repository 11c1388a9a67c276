"""Exponential backoff for anything that waits out a Redis that went away."""

from __future__ import annotations


class Backoff:
    """Delays ``first``, doubling up to ``cap``; :meth:`reset` after a success."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """The delay to sleep now; the one after it is doubled."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first
