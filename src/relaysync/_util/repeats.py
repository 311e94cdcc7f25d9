"""A repeated event logged sparingly: its occurrences counted between lines, one line an interval.

A target down for a day, or a link refused for as long, must not write a line a retry (8,640 a
day at one every 10 s); its operator still needs to see that it goes on and how often.
"""

from __future__ import annotations


class Repeats:
    """Occurrences of one event since the last line about it, and whether the next line is due."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.reset(0.0)

    def reset(self, now: float) -> None:
        """A line was written at monotonic time `now` (or the count starts over)."""
        self.count = 0  # occurrences since then
        self.logged_at = now

    def add(self, now: float) -> bool:
        """Count one occurrence at `now`; whether a line about them is due."""
        self.count += 1
        return now - self.logged_at >= self.interval_s
