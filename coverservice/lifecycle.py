"""Stream lifecycle rules for cover selection (CSS events 1 / 0). Pure.

- While a stream is offline, frames captured within ``grace`` seconds of the push
  interruption are not candidates: the last screenshots of a stream that ends are often
  black or frozen. The last good cover stays (selection keeps the current cover when no
  candidate is left).
- Once the stream is back, frames from before the restart give way to fresh ones: as
  soon as a fresh frame exists, older candidates and the old cover no longer compete.
  A frame captured after an interruption is itself proof that the stream is back.
- ``changed_at`` is when CSS says the event happened, not when its callback arrived:
  callbacks are retried and can come minutes late or out of order.
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
    if live:
        # Screenshot times are whole seconds: a frame of the restart's own second is fresh.
        since = changed_at.replace(microsecond=0)
    else:
        # Frames taken after the interruption (from the next second on) mean the push is
        # back and its start callback is late or lost: they are fresh, as if it had come.
        since = changed_at.replace(microsecond=0) + timedelta(seconds=1)
    fresh = [c for c in candidates if c.captured_at >= since]
    if fresh:
        if current is not None and current.captured_at < since:
            current = None
        return fresh, current
    if live:
        return candidates, current
    cutoff = changed_at - grace
    return [c for c in candidates if c.captured_at < cutoff], current
