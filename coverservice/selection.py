"""Which frame should be the stream's cover, and when to look at the stream again. Pure:
the stream's view (candidates, current cover, push state) and the time in; a decision
out. Every selection rule lives here; the worker and the SQL only gather the inputs and
apply the decision.

Rules, in the order ``decide`` applies them:

- **Candidates** are the stream's scored, unblocked frames captured inside the window
  (default 10 min). Each is valued at its score discounted for age (freshness, below);
  the most valuable is the best, ties going to the newer frame.
- **Push state** (CSS events 1 / 0; ``changed_at`` is when CSS says it happened, since
  callbacks are retried and arrive late or out of order):
  - while a stream is offline, frames captured within ``offline_grace`` of the
    interruption are not candidates, and neither is a cover showing one: a stream's last
    screenshots are often black or frozen. An earlier frame takes the cover back; with
    none, the last cover stays;
  - once a frame captured after a restart (or after the interruption: that frame is
    proof the push is back and its start callback late or lost) exists, older frames and
    the old cover no longer compete.
- **A missing cover** (none yet, blocked, or lost to the push rules above) is replaced by
  the best candidate at once. So is a **stale** one, whose frame has left the window: the
  cover follows the stream, whatever the new frame's score.
- **Hysteresis**: otherwise a challenger must beat the cover's value by the margin
  (default 10 %), so the cover does not flap between near-equal frames.
- **Minimum interval**: a better frame replaces a cover at most ``min_interval`` (15 s)
  after that cover was installed, because rendering costs ~100× scoring. The better frame
  is *held back*, not lost: the decision's ``recheck_at`` is when the interval ends, and
  the stream is reconsidered then with no new frame needed.
- **Provisional first covers**: a cover installed within ``provisional`` (60 s) of the
  stream's start (its latest push start or stop, as CSS dates it; without push events,
  when the service first heard of the stream) is replaced by a clearly better frame
  without waiting for the interval. A stream's first screenshots are often its worst (a
  loading screen, a camera still finding its exposure), and the interval must not
  protect them. Hysteresis still applies, so even then every change is
  a gain of more than the margin: no flapping.
- With no candidates the current cover stays: a stream's last good frame is a better
  cover than none.

Freshness. A stream's scene changes and its best frame of ten minutes ago stops showing
what is on the stream. Selection sees only scores and times, so it makes old frames give
way: a frame keeps its full score for ``freshness`` (2 min), then its value halves every
``half_life`` (1 min)::

    value = score                                              age <= freshness
    value = score × 0.5 ** ((age - freshness) / half_life)     older

With the default margin, a fresh frame as good as the cover takes over at about 2 min
10 s, one half as good at about 3 min, one a fifth as good at about 4½ min. A short bad
stretch (a hand over the lens, a loading screen) does not cost a good cover: its frames
are rejected or score far lower, and the cover's value decays slowly.

Rechecks. Time alone changes a decision in three ways: a held-back frame's interval ends,
a newer frame overtakes the cover as the cover's value decays faster than the newer
one's, and the cover leaves the window. ``recheck_at`` is the earliest of these for the
state the decision leaves behind (None: only a new frame or event can change anything).
Between now and ``recheck_at`` no decision would differ, so a stream that goes quiet
still ends on the cover these rules give it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

# A recheck is due just after the moment the decision changes: the rules compare
# strictly (a cover is stale once older than the window; a challenger must *beat* it).
_AFTER = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Candidate:
    frame_id: int
    score: float
    captured_at: datetime
    blocked: bool = False


@dataclass(frozen=True)
class CurrentCover(Candidate):
    """The stream's automatic cover, when it shows a frame: the frame, and when it was
    installed (the minimum interval and the provisional period count from then)."""

    installed_at: datetime = field(kw_only=True)


@dataclass(frozen=True)
class StreamView:
    candidates: Sequence[Candidate]
    current: CurrentCover | None
    first_seen_at: datetime  # when the service first heard of the stream
    live: bool = False
    live_changed_at: datetime | None = None  # the latest push start or stop


class _PolicySettings(Protocol):
    selection_window: float
    selection_hysteresis: float
    selection_freshness: float
    selection_half_life: float
    cover_min_interval: float
    cover_provisional: float
    offline_grace: float


@dataclass(frozen=True)
class Policy:
    window: timedelta = timedelta(minutes=10)
    hysteresis: float = 0.10
    freshness: timedelta = timedelta(minutes=2)
    half_life: timedelta = timedelta(minutes=1)
    min_interval: timedelta = timedelta(seconds=15)
    provisional: timedelta = timedelta(seconds=60)
    offline_grace: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if self.half_life <= timedelta(0):
            raise ValueError("half_life must be positive")

    @classmethod
    def from_settings(cls, settings: _PolicySettings) -> Policy:
        return cls(
            window=timedelta(seconds=settings.selection_window),
            hysteresis=settings.selection_hysteresis,
            freshness=timedelta(seconds=settings.selection_freshness),
            half_life=timedelta(seconds=settings.selection_half_life),
            min_interval=timedelta(seconds=settings.cover_min_interval),
            provisional=timedelta(seconds=settings.cover_provisional),
            offline_grace=timedelta(seconds=settings.offline_grace),
        )

    def window_start(self, now: datetime) -> datetime:
        """The oldest capture time a candidate can have: what the SQL needs to fetch."""
        return now - self.window


class Outcome(enum.StrEnum):
    FIRST = "first"  # no usable cover: the best candidate is installed
    STALE = "stale"  # the cover left the window
    BETTER = "better"  # a challenger beat the cover by the margin
    HELD = "held"  # ...but the cover is younger than the minimum interval
    KEPT = "kept"  # the cover is the best, or within the margin
    EMPTY = "empty"  # no candidate: the cover (if any) stays


@dataclass(frozen=True)
class Decision:
    frame_id: int | None  # the frame to install; None: keep the current cover (or none)
    outcome: Outcome
    reason: str
    recheck_at: datetime | None  # when time alone can change the decision; None: never
    best_id: int | None = None  # the best candidate (the held-back one when HELD)

    @property
    def changes(self) -> bool:
        return self.frame_id is not None


def decide(view: StreamView, *, now: datetime, policy: Policy = Policy()) -> Decision:
    candidates, current, dropped = _eligible(view, now, policy)
    if not candidates:
        return Decision(None, Outcome.EMPTY, "no usable frame in the window; keeping the cover", None)
    best = max(candidates, key=lambda c: (_value(c, now, policy), c.captured_at, c.frame_id))
    # A push event says when the push began; without one, the first sighting does.
    started = view.first_seen_at if view.live_changed_at is None else view.live_changed_at

    def install(outcome: Outcome, reason: str) -> Decision:
        new = CurrentCover(best.frame_id, best.score, best.captured_at, installed_at=now)
        provisional = now < started + policy.provisional
        return Decision(
            best.frame_id, outcome, reason, _recheck(candidates, new, now, policy, provisional), best.frame_id
        )

    if current is None:
        return install(Outcome.FIRST, dropped or "first usable frame")
    provisional = current.installed_at < started + policy.provisional
    if best.frame_id == current.frame_id:
        return Decision(
            None, Outcome.KEPT, "the cover is still the best frame",
            _recheck(candidates, current, now, policy, provisional), best.frame_id,
        )
    if current.captured_at < policy.window_start(now):
        return install(Outcome.STALE, "the cover left the window")
    best_value, current_value = _value(best, now, policy), _value(current, now, policy)
    if best_value <= current_value * (1.0 + policy.hysteresis):
        return Decision(
            None, Outcome.KEPT, f"best {best_value:.3f} is within the margin of the cover's {current_value:.3f}",
            _recheck(candidates, current, now, policy, provisional), best.frame_id,
        )
    if best.score > current.score * (1.0 + policy.hysteresis):
        gain = f"score {best.score:.3f} beats the cover's {current.score:.3f}"
    else:
        age = (now - current.captured_at).total_seconds()
        gain = (
            f"fresher frame: the cover is {age:.0f} s old, its score {current.score:.3f} "
            f"counts as {current_value:.3f} against {best_value:.3f}"
        )
    until = current.installed_at + policy.min_interval
    if now < until and not provisional:
        since = (now - current.installed_at).total_seconds()
        return Decision(
            None, Outcome.HELD, f"held back until {_clock(until)}: the cover changed {since:.0f} s ago ({gain})",
            min(until, current.captured_at + policy.window + _AFTER), best.frame_id,
        )
    return install(Outcome.BETTER, gain + (" (first cover, provisional)" if provisional and now < until else ""))


def frame_note(decision: Decision, frame_id: int, *, rechecked_at: datetime | None = None) -> str:
    """What selection made of one frame, for its outcome in the admin API and page.
    ``rechecked_at``: the decision came from a recheck, with no new frame."""
    if decision.frame_id == frame_id:
        when = f" (on a recheck at {_clock(rechecked_at)}, with no new frame)" if rechecked_at else ""
        return f"became the cover: {decision.reason}{when}"
    if decision.outcome is Outcome.HELD and decision.best_id == frame_id:
        return decision.reason
    if decision.outcome is Outcome.EMPTY:
        return "not a candidate (blocked, or outside the window or the push rules)"
    return f"not the cover: {decision.reason}"


def freshness_factor(age: timedelta, *, freshness: timedelta, half_life: timedelta) -> float:
    """1 up to ``freshness``, then halving every ``half_life``."""
    overdue = (age - freshness) / half_life
    return 1.0 if overdue <= 0 else 0.5**overdue


# --- internals ------------------------------------------------------------------------------


def _value(c: Candidate, now: datetime, policy: Policy) -> float:
    return c.score * freshness_factor(now - c.captured_at, freshness=policy.freshness, half_life=policy.half_life)


def _eligible(
    view: StreamView, now: datetime, policy: Policy
) -> tuple[list[Candidate], CurrentCover | None, str | None]:
    """The candidates and cover that compete under the window, blocking and push rules,
    and why the cover does not compete when it was taken out."""
    since = policy.window_start(now)
    candidates = [c for c in view.candidates if not c.blocked and c.captured_at >= since]
    current = view.current
    dropped = None
    if current is not None and current.blocked:
        blocked = current.frame_id
        candidates = [c for c in candidates if c.frame_id != blocked]
        current, dropped = None, "the cover's frame was blocked"
    changed = view.live_changed_at
    if changed is None:
        return candidates, current, dropped
    # Screenshot times are whole seconds: a frame of the restart's own second is fresh;
    # after an interruption, frames from the next second on are.
    restart = changed.replace(microsecond=0) + (timedelta(0) if view.live else timedelta(seconds=1))
    fresh = [c for c in candidates if c.captured_at >= restart]
    if fresh:
        if current is not None and current.captured_at < restart:
            current, dropped = None, "the stream restarted"
        return fresh, current, dropped
    if view.live:
        return candidates, current, dropped
    cutoff = changed - policy.offline_grace
    before = [c for c in candidates if c.captured_at < cutoff]
    if current is not None and current.captured_at >= cutoff and before:
        current, dropped = None, "the cover was taken just before the push stopped"
    return before, current, dropped


def _recheck(
    candidates: Sequence[Candidate], current: CurrentCover, now: datetime, policy: Policy, provisional: bool
) -> datetime | None:
    """The earliest time after ``now`` at which, with no new input, the rules would no
    longer keep ``current``."""
    newer = [c for c in candidates if c.captured_at > current.captured_at and c.frame_id != current.frame_id]
    if not newer:
        return None
    # Frames newer than the cover outlive it in the window.
    times = [current.captured_at + policy.window + _AFTER]
    hold = None if provisional else current.installed_at + policy.min_interval
    for c in newer:
        at = _overtakes(c, current, now, policy)
        if at is None or at > c.captured_at + policy.window:
            continue
        times.append(at if hold is None else max(at, hold))
    return max(min(times), now + _AFTER)


def _overtakes(c: Candidate, current: CurrentCover, now: datetime, policy: Policy) -> datetime | None:
    """When the newer candidate ``c`` first beats ``current`` by the margin, from ``now``
    on, as both age (None: never). In logs, c wins once
    ``k·(overdue(current) - overdue(c)) > ln(1 + margin) + ln(s_current / s_c)`` with
    ``k = ln 2 / half_life``; the left side grows while only the cover is past its
    freshness and then stays at ``k·(capture gap)``."""
    if c.score <= 0:
        return None
    if current.score <= 0 or _value(c, now, policy) > _value(current, now, policy) * (1.0 + policy.hysteresis):
        return now
    k = math.log(2) / policy.half_life.total_seconds()
    need = math.log1p(policy.hysteresis) + math.log(current.score / c.score)
    gap = (c.captured_at - current.captured_at).total_seconds()
    if need >= k * gap:
        return None
    return current.captured_at + policy.freshness + timedelta(seconds=need / k) + _AFTER


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S UTC")


def best_of(candidates: Sequence[Candidate], *, now: datetime, policy: Policy = Policy()) -> int | None:
    """The frame a stream with no cover would get from these candidates (the quality
    tools' question: which frame of a window is best)."""
    return decide(StreamView(candidates, None, first_seen_at=now), now=now, policy=policy).frame_id
