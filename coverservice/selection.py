"""Which frame should be the stream's cover. Pure: candidates, the current cover and the
time in; a decision out.

Rules:
- candidates are the stream's usable frames captured inside the window (default 10 min);
- every candidate is valued at its score, discounted for age (freshness, below); the
  most valuable one is the best; ties go to the newer frame;
- without a current cover, the best candidate wins;
- a current cover whose frame has left the window is stale: the best candidate replaces
  it, whatever its score, so the cover follows the stream;
- otherwise a challenger must beat the current cover's value by the hysteresis margin
  (default 10 %), so the cover does not flap between near-equal frames;
- with no candidates at all the current cover stays: the last good frame of a stream
  is a better cover than none.

Freshness. A stream's scene changes (the streamer starts a game, walks outside, the
camera turns) and its best frame of ten minutes ago stops showing what is on the stream.
Selection sees only scores and times, so it cannot tell a new scene from the old one; it
makes old frames give way instead. A frame keeps its full score for ``freshness``
(default 2 min); after that its value halves every ``half_life`` (default 1 min):

    value = score                                         age <= freshness
    value = score × 0.5 ** ((age - freshness) / half_life)   older

So a cover is never replaced for being old within its first two minutes (hysteresis
alone applies: no flapping). After that, with the default 10 % margin, a fresh frame as
good as the cover takes over at about 2 min 10 s, one half as good at about 3 min, one a
fifth as good at about 4½ min, and a frame of any quality once the cover leaves the
window. So a stream whose scene changed gets a current cover within about three minutes
unless the new scene is far worse, and a steady stream's cover is refreshed about as
often (one rendering per stream every two minutes or so: live previews that never change
are what users of other services complain about). A short bad stretch (a hand over the
lens, a loading screen) does not cost a good cover: its frames are rejected or score far
lower, and the cover's value decays slowly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

FRESHNESS = timedelta(minutes=2)
HALF_LIFE = timedelta(minutes=1)


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
    freshness: timedelta = FRESHNESS,
    half_life: timedelta = HALF_LIFE,
) -> Decision:
    if half_life <= timedelta(0):
        raise ValueError("half_life must be positive")
    since = now - window
    recent = [c for c in candidates if c.captured_at >= since]
    if not recent:
        return Decision(None, "no usable frame in the window; keeping the current cover")

    def value(c: Candidate) -> float:
        return c.score * freshness_factor(now - c.captured_at, freshness=freshness, half_life=half_life)

    best = max(recent, key=lambda c: (value(c), c.captured_at, c.frame_id))
    if current is None:
        return Decision(best.frame_id, "first usable frame")
    if best.frame_id == current.frame_id:
        return Decision(None, "current cover is still the best frame")
    if current.captured_at < since:
        return Decision(best.frame_id, "current cover is stale")
    best_value, current_value = value(best), value(current)
    if best_value > current_value * (1.0 + hysteresis):
        if best.score > current.score * (1.0 + hysteresis):
            return Decision(
                best.frame_id, f"score {best.score:.3f} beats current {current.score:.3f}"
            )
        age = (now - current.captured_at).total_seconds()
        return Decision(
            best.frame_id,
            f"fresher frame: the cover is {age:.0f} s old, its score {current.score:.3f} "
            f"counts as {current_value:.3f} against {best_value:.3f}",
        )
    return Decision(
        None, f"best {best_value:.3f} within the margin of current {current_value:.3f}"
    )


def freshness_factor(age: timedelta, *, freshness: timedelta, half_life: timedelta) -> float:
    """1 up to ``freshness``, then halving every ``half_life``."""
    overdue = (age - freshness) / half_life
    return 1.0 if overdue <= 0 else 0.5**overdue
