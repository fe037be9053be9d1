"""The selection policy, whole: examples of each rule, then properties over random streams
(hypothesis) that follow a stream through its frames and rechecks to its end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coverservice.selection import (
    Candidate,
    CurrentCover,
    Decision,
    Outcome,
    Policy,
    StreamView,
    best_of,
    decide,
    frame_note,
    freshness_factor,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=1)
POLICY = Policy()


def c(frame_id: int, score: float, age_s: float) -> Candidate:
    return Candidate(frame_id, score, NOW - timedelta(seconds=age_s))


def cover(x: Candidate, installed_age_s: float = 3600.0) -> CurrentCover:
    return CurrentCover(x.frame_id, x.score, x.captured_at, installed_at=NOW - timedelta(seconds=installed_age_s))


def view(
    candidates: Sequence[Candidate], current: CurrentCover | None = None, *, started: datetime = LONG_AGO,
    live: bool = False, changed_at: datetime | None = None,
) -> StreamView:
    return StreamView(candidates, current, first_seen_at=started, live=live, live_changed_at=changed_at)


def choose(candidates: list[Candidate], current: Candidate | None = None, policy: Policy = POLICY) -> int | None:
    return decide(view(candidates, cover(current) if current else None), now=NOW, policy=policy).frame_id


# --- window, margin, freshness --------------------------------------------------------------


def test_first_frame_becomes_the_cover() -> None:
    decision = decide(view([c(1, 0.2, 5)]), now=NOW)
    assert decision.frame_id == 1 and decision.outcome is Outcome.FIRST


def test_best_of_the_window_wins() -> None:
    assert choose([c(1, 0.2, 50), c(2, 0.9, 40), c(3, 0.5, 5)]) == 2


def test_frames_outside_the_window_are_not_candidates() -> None:
    assert choose([c(1, 0.99, 601), c(2, 0.3, 5)]) == 2


def test_near_equal_challenger_does_not_replace_the_cover() -> None:
    current = c(1, 0.80, 30)
    assert choose([current, c(2, 0.85, 5)], current) is None


def test_clearly_better_challenger_replaces_the_cover() -> None:
    current = c(1, 0.50, 30)
    decision = decide(view([current, c(2, 0.80, 5)], cover(current)), now=NOW)
    assert decision.frame_id == 2 and decision.outcome is Outcome.BETTER
    assert decision.reason == "score 0.800 beats the cover's 0.500"


def test_stale_cover_is_replaced_even_by_a_worse_frame() -> None:
    current = c(1, 0.95, 700)
    decision = decide(view([c(2, 0.40, 5)], cover(current, 5)), now=NOW)
    assert decision.frame_id == 2 and decision.outcome is Outcome.STALE  # no minimum interval either


def test_no_candidates_keeps_the_current_cover() -> None:
    decision = decide(view([], cover(c(1, 0.9, 3600))), now=NOW)
    assert decision.frame_id is None and not decision.changes and decision.outcome is Outcome.EMPTY
    assert decision.recheck_at is None


def test_current_still_best_keeps_it() -> None:
    current = c(1, 0.9, 30)
    assert choose([current, c(2, 0.5, 5)], current) is None


def test_ties_go_to_the_newer_frame() -> None:
    assert choose([c(1, 0.5, 30), c(2, 0.5, 5)]) == 2


def test_blocked_frames_are_never_chosen() -> None:
    assert choose([replace(c(1, 0.9, 30), blocked=True), c(2, 0.3, 5)]) == 2
    assert choose([replace(c(1, 0.9, 30), blocked=True)]) is None


def test_a_blocked_cover_is_replaced_at_once() -> None:
    current = replace(cover(c(1, 0.9, 30), installed_age_s=1), blocked=True)
    decision = decide(view([c(1, 0.9, 30), c(2, 0.3, 5)], current), now=NOW)
    assert decision.frame_id == 2 and decision.reason == "the cover's frame was blocked"


def test_a_fresh_cover_is_kept_against_an_equal_newer_frame() -> None:
    current = c(1, 0.80, 110)  # inside the freshness period: full value
    assert choose([current, c(2, 0.80, 5)], current) is None


def test_an_aging_cover_gives_way_to_an_equal_fresh_frame() -> None:
    # After two minutes the cover's value decays; an equal frame wins once the decay
    # exceeds the 10 % margin (about 8 s later).
    assert choose([c(1, 0.80, 125), c(2, 0.80, 5)], c(1, 0.80, 125)) is None
    decision = decide(view([c(1, 0.80, 140), c(2, 0.80, 5)], cover(c(1, 0.80, 140))), now=NOW)
    assert decision.frame_id == 2
    assert decision.reason.startswith("fresher frame: the cover is 140 s old")


def test_after_a_scene_change_a_worse_current_frame_takes_over_within_minutes() -> None:
    old_best = c(1, 0.90, 170)
    assert choose([old_best, c(2, 0.45, 30), c(3, 0.45, 10)], old_best) is None
    old_best = c(1, 0.90, 200)
    assert choose([old_best, c(2, 0.45, 60), c(3, 0.45, 5)], old_best) == 3


def test_the_first_cover_of_a_stream_is_a_current_frame() -> None:
    assert choose([c(1, 0.9, 540), c(2, 0.5, 20)]) == 2
    assert choose([c(1, 0.9, 100), c(2, 0.5, 20)]) == 1


def test_freshness_can_be_switched_off() -> None:
    current = c(1, 0.80, 500)
    assert choose([current, c(2, 0.80, 5)], current, replace(POLICY, freshness=POLICY.window)) is None


def test_freshness_factor() -> None:
    kw = {"freshness": timedelta(minutes=2), "half_life": timedelta(minutes=1)}
    assert freshness_factor(timedelta(0), **kw) == 1.0
    assert freshness_factor(timedelta(minutes=2), **kw) == 1.0
    assert freshness_factor(timedelta(minutes=3), **kw) == pytest.approx(0.5)
    assert freshness_factor(timedelta(minutes=5), **kw) == pytest.approx(0.125)
    assert freshness_factor(-timedelta(seconds=30), **kw) == 1.0  # clock skew: a "future" frame


def test_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError, match="half_life"):
        Policy(half_life=timedelta(0))


def test_best_of_a_window() -> None:
    assert best_of([c(1, 0.4, 30), c(2, 0.7, 20), c(3, 0.6, 10)], now=NOW) == 2
    assert best_of([], now=NOW) is None


# --- minimum interval, provisional first covers, rechecks -----------------------------------


def test_a_better_frame_inside_the_interval_is_held_back_until_it_ends() -> None:
    current = c(1, 0.4, 20)
    decision = decide(view([current, c(2, 0.8, 5)], cover(current, installed_age_s=9)), now=NOW)
    assert decision.frame_id is None and decision.outcome is Outcome.HELD and decision.best_id == 2
    assert decision.recheck_at == NOW + timedelta(seconds=6)
    assert decision.reason.startswith("held back until 12:00:06 UTC: the cover changed 9 s ago")
    assert frame_note(decision, 2) == decision.reason
    assert frame_note(decision, 1).startswith("not the cover: held back")
    later = decide(view([current, c(2, 0.8, 5)], cover(current, installed_age_s=9)), now=decision.recheck_at)
    assert later.frame_id == 2
    assert frame_note(later, 2) == "became the cover: score 0.800 beats the cover's 0.400"


def test_a_first_cover_is_provisional_for_the_grace_period() -> None:
    current = c(1, 0.4, 20)
    started = NOW - timedelta(seconds=20)
    # Installed 18 s after the start: a clearly better frame replaces it at once...
    decision = decide(view([current, c(2, 0.8, 5)], cover(current, 2), started=started), now=NOW)
    assert decision.frame_id == 2 and "provisional" in decision.reason
    # ...but not one within the margin,
    assert decide(view([current, c(2, 0.43, 5)], cover(current, 2), started=started), now=NOW).frame_id is None
    # and not once the grace period is over.
    policy = replace(POLICY, provisional=timedelta(seconds=10))
    held = decide(view([current, c(2, 0.8, 5)], cover(current, 2), started=started), now=NOW, policy=policy)
    assert held.outcome is Outcome.HELD


def test_a_push_start_begins_a_new_grace_period() -> None:
    current = c(1, 0.4, 20)
    restart = NOW - timedelta(seconds=25)
    decision = decide(
        view([current, c(2, 0.8, 5)], cover(current, 2), live=True, changed_at=restart), now=NOW
    )
    assert decision.frame_id == 2


def test_a_cover_overtaken_as_it_ages_is_rechecked_when_that_happens() -> None:
    # An equal frame 30 s newer: the cover's value falls behind by the margin once the
    # cover is 2 min + log2(1.1) min old, i.e. about 128.25 s.
    current = c(1, 0.8, 60)
    decision = decide(view([current, c(2, 0.8, 30)], cover(current)), now=NOW)
    assert decision.outcome is Outcome.KEPT and decision.recheck_at is not None
    at = decision.recheck_at
    assert (at - current.captured_at).total_seconds() == pytest.approx(120 + 60 * 0.13750352, abs=0.01)
    assert decide(view([current, c(2, 0.8, 30)], cover(current)), now=at - timedelta(milliseconds=2)).frame_id is None
    assert decide(view([current, c(2, 0.8, 30)], cover(current)), now=at).frame_id == 2


def test_a_cover_with_newer_frames_is_rechecked_when_it_leaves_the_window() -> None:
    # A newer frame so poor it never overtakes by value, but outlives the cover.
    current = c(1, 0.9, 100)
    decision = decide(view([current, c(2, 0.01, 99)], cover(current)), now=NOW)
    assert decision.recheck_at == current.captured_at + POLICY.window + timedelta(milliseconds=1)
    assert decide(view([current, c(2, 0.01, 99)], cover(current)), now=decision.recheck_at).outcome is Outcome.STALE


def test_nothing_newer_than_the_cover_needs_no_recheck() -> None:
    current = c(1, 0.9, 10)
    decision = decide(view([c(2, 0.5, 100), current], cover(current)), now=NOW)
    assert decision.recheck_at is None


# --- push start and stop ------------------------------------------------------------------------


def test_last_frames_before_a_push_stop_are_not_candidates() -> None:
    stop = NOW - timedelta(seconds=5)
    frames = [c(1, 0.5, 60), c(2, 0.9, 8)]  # frame 2: 3 s before the stop
    assert decide(view(frames, changed_at=stop), now=NOW).frame_id == 1


def test_a_cover_taken_just_before_a_push_stop_gives_way_to_an_earlier_frame() -> None:
    stop = NOW - timedelta(seconds=5)
    frames = [c(1, 0.5, 60), c(2, 0.9, 8)]
    decision = decide(view(frames, cover(frames[1], 1), changed_at=stop), now=NOW)
    assert decision.frame_id == 1 and decision.reason == "the cover was taken just before the push stopped"
    # With nothing earlier, the last cover stays.
    assert decide(view(frames[1:], cover(frames[1], 1), changed_at=stop), now=NOW).frame_id is None


def test_after_a_restart_older_frames_and_the_old_cover_give_way() -> None:
    restart = NOW - timedelta(seconds=30)
    old = c(1, 0.9, 60)
    frames = [old, c(2, 0.4, 20)]
    decision = decide(view(frames, cover(old, 40), live=True, changed_at=restart), now=NOW)
    assert decision.frame_id == 2 and decision.reason == "the stream restarted"
    # Until a fresh frame exists, the old cover stays.
    assert decide(view([old], cover(old, 40), live=True, changed_at=restart), now=NOW).frame_id is None


def test_frames_after_a_stop_are_proof_the_push_is_back() -> None:
    stop = NOW - timedelta(seconds=30)
    old = c(1, 0.9, 60)
    assert decide(view([old, c(2, 0.4, 20)], cover(old, 40), changed_at=stop), now=NOW).frame_id == 2


def test_a_frame_of_the_restarts_own_second_is_fresh() -> None:
    restart = NOW - timedelta(seconds=20) + timedelta(milliseconds=400)
    old = c(1, 0.9, 60)
    assert decide(view([old, c(2, 0.4, 20)], cover(old, 40), live=True, changed_at=restart), now=NOW).frame_id == 2


# --- properties --------------------------------------------------------------------------------

# A stream's frames: (seconds after the start, score, blocked).
frames_st = st.lists(
    st.tuples(st.integers(0, 900), st.floats(0.01, 1.0), st.sampled_from([False, False, False, True])),
    min_size=1,
    max_size=14,
)
policy_st = st.builds(
    Policy,
    hysteresis=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    min_interval=st.sampled_from([timedelta(0), timedelta(seconds=15), timedelta(seconds=90)]),
    provisional=st.sampled_from([timedelta(0), timedelta(seconds=60)]),
    freshness=st.sampled_from([timedelta(seconds=30), timedelta(minutes=2)]),
    half_life=st.sampled_from([timedelta(seconds=20), timedelta(minutes=1)]),
)
START = NOW - timedelta(hours=1)


def _value(x: Candidate | CurrentCover, at: datetime, policy: Policy) -> float:
    return x.score * freshness_factor(at - x.captured_at, freshness=policy.freshness, half_life=policy.half_life)


class Simulation:
    """A stream followed to its end, as the worker follows it: a decision at every frame
    and at every due recheck, each applied as the worker applies it."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.candidates: list[Candidate] = []
        self.current: CurrentCover | None = None
        self.due: datetime | None = None
        self.changes: list[tuple[datetime, Decision, CurrentCover | None]] = []

    def look(self, at: datetime) -> Decision:
        decision = decide(StreamView(self.candidates, self.current, first_seen_at=START), now=at, policy=self.policy)
        if decision.frame_id is not None:
            chosen = next(x for x in self.candidates if x.frame_id == decision.frame_id)
            assert not chosen.blocked
            self.changes.append((at, decision, self.current))
            self.current = CurrentCover(chosen.frame_id, chosen.score, chosen.captured_at, installed_at=at)
        if decision.recheck_at is not None:
            assert decision.recheck_at > at  # progress
        self.due = decision.recheck_at if self.due is None or self.due <= at else min(
            self.due, decision.recheck_at or self.due
        )
        return decision

    def run(self, frames: list[tuple[int, float, bool]]) -> datetime:
        arrivals = sorted((START + timedelta(seconds=t), i, s, b) for i, (t, s, b) in enumerate(frames))
        at = START
        for arrived, i, score, blocked in arrivals:
            self.run_rechecks(until=arrived)
            self.candidates.append(Candidate(i, score, arrived, blocked))
            at = arrived
            self.look(at)
        return self.run_rechecks(until=None) or at

    def run_rechecks(self, until: datetime | None) -> datetime | None:
        last = None
        for _ in range(200):
            if self.due is None or (until is not None and self.due > until):
                return last
            last = self.due
            self.look(self.due)
        raise AssertionError("rechecks do not converge")


@settings(max_examples=300, deadline=None)
@given(frames_st, policy_st)
def test_a_blocked_frame_is_never_chosen_and_rechecks_progress(frames: list[tuple[int, float, bool]], policy: Policy) -> None:
    Simulation(policy).run(frames)  # the assertions live in Simulation.look


@settings(max_examples=300, deadline=None)
@given(frames_st, policy_st)
def test_the_cover_never_changes_for_a_better_frame_faster_than_the_interval(
    frames: list[tuple[int, float, bool]], policy: Policy
) -> None:
    sim = Simulation(policy)
    sim.run(frames)
    for at, decision, before in sim.changes:
        if decision.outcome is Outcome.BETTER and before is not None:
            provisional = before.installed_at < START + policy.provisional
            assert provisional or at - before.installed_at >= policy.min_interval


@settings(max_examples=300, deadline=None)
@given(frames_st, policy_st)
def test_a_quiet_stream_ends_on_the_cover_the_rules_give_it(frames: list[tuple[int, float, bool]], policy: Policy) -> None:
    """After the last frame, following the rechecks to their end leaves a cover that no
    frame beats by the margin, at any later time: no better frame is held back for good."""
    sim = Simulation(policy)
    end = sim.run(frames)
    assert sim.due is None
    usable = [x for x in sim.candidates if not x.blocked]
    if not usable:
        assert sim.current is None
        return
    assert sim.current is not None
    for later in (end, end + timedelta(minutes=1), end + timedelta(hours=1)):
        assert decide(StreamView(sim.candidates, sim.current, first_seen_at=START), now=later, policy=policy).frame_id is None


@settings(max_examples=300, deadline=None)
@given(frames_st, policy_st, st.floats(0.0, 1.0))
def test_no_decision_changes_before_its_recheck(
    frames: list[tuple[int, float, bool]], policy: Policy, fraction: float
) -> None:
    """Between a decision and its recheck_at, a look with the same inputs changes nothing:
    the worker may sleep until then."""
    sim = Simulation(policy)
    arrivals = sorted((START + timedelta(seconds=t), i, s, b) for i, (t, s, b) in enumerate(frames))
    for arrived, i, score, blocked in arrivals:
        sim.candidates.append(Candidate(i, score, arrived, blocked))
        decision = sim.look(arrived)
        if decision.recheck_at is None:
            continue
        gap = decision.recheck_at - arrived - timedelta(milliseconds=2)
        if gap <= timedelta(0):
            continue
        probe = arrived + gap * fraction
        again = decide(StreamView(sim.candidates, sim.current, first_seen_at=START), now=probe, policy=policy)
        assert again.frame_id is None, (again, probe)


@settings(max_examples=200, deadline=None)
@given(frames_st, policy_st)
def test_a_frame_better_by_the_margin_wins_by_its_recheck(frames: list[tuple[int, float, bool]], policy: Policy) -> None:
    sim = Simulation(policy)
    arrivals = sorted((START + timedelta(seconds=t), i, s, b) for i, (t, s, b) in enumerate(frames))
    for arrived, i, score, blocked in arrivals:
        sim.candidates.append(Candidate(i, score, arrived, blocked))
        decision = sim.look(arrived)
        if decision.outcome is Outcome.HELD:
            assert decision.recheck_at is not None
            held = next(x for x in sim.candidates if x.frame_id == decision.best_id)
            then = decide(
                StreamView(sim.candidates, sim.current, first_seen_at=START), now=decision.recheck_at, policy=policy
            )
            assert sim.current is not None
            if _value(held, decision.recheck_at, policy) > _value(sim.current, decision.recheck_at, policy) * (
                1 + policy.hysteresis
            ):
                assert then.frame_id is not None
