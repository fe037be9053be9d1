"""Stream lifecycle rules for cover selection (CSS events 1 / 0). Pure.

- While a stream is offline, frames captured within ``grace`` seconds of the push
  interruption are not candidates: the last screenshots of a stream that ends are often
  black or frozen. The last good cover stays (selection keeps the current cover when no
  candidate is left).
- Once the stream is back, frames from before the restart give way to fresh ones: as
  soon as a fresh frame exists, older candidates and the old cover no longer compete.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .selection import Candidate


def lifecycle_candidates(
    candidates: list[Candidate],
    current: Candidate | None,
    *,
    live: bool,
    changed_at: datetime | None,
    grace: timedelta,
) -> tuple[list[Candidate], Candidate | None]:
    if changed_at is None:
        return candidates, current
    if not live:
        cutoff = changed_at - grace
        return [c for c in candidates if c.captured_at < cutoff], current
    fresh = [c for c in candidates if c.captured_at >= changed_at]
    if not fresh:
        return candidates, current
    if current is not None and current.captured_at < changed_at:
        current = None
    return fresh, current
