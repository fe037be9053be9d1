"""Which frame should be the stream's cover. Pure: candidates, the current cover and the
time in; a decision out.

Rules:
- candidates are the stream's usable frames captured inside the window (default 10 min);
- without a current cover, the best candidate wins;
- a current cover whose frame has left the window is stale: the best candidate replaces
  it, whatever its score, so the cover follows the stream;
- otherwise a challenger must beat the current score by the hysteresis margin, so the
  cover does not flap between near-equal frames;
- with no candidates at all the current cover stays: the last good frame of a stream
  is a better cover than none.
Ties go to the newer frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Candidate:
    frame_id: int
    score: float
    captured_at: datetime


@dataclass(frozen=True)
class Decision:
    frame_id: int | None  # the frame to show; None: keep the current cover (or none)
    reason: str

    @property
    def changes(self) -> bool:
        return self.frame_id is not None


def choose_cover(
    candidates: Iterable[Candidate],
    current: Candidate | None,
    *,
    now: datetime,
    window: timedelta,
    hysteresis: float,
) -> Decision:
    since = now - window
    recent = [c for c in candidates if c.captured_at >= since]
    if not recent:
        return Decision(None, "no usable frame in the window; keeping the current cover")
    best = max(recent, key=lambda c: (c.score, c.captured_at, c.frame_id))
    if current is None:
        return Decision(best.frame_id, "first usable frame")
    if best.frame_id == current.frame_id:
        return Decision(None, "current cover is still the best frame")
    if current.captured_at < since:
        return Decision(best.frame_id, "current cover is stale")
    if best.score > current.score * (1.0 + hysteresis):
        return Decision(
            best.frame_id, f"score {best.score:.3f} beats current {current.score:.3f}"
        )
    return Decision(None, f"best {best.score:.3f} within the margin of current {current.score:.3f}")
