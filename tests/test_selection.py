from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coverservice.selection import FRESHNESS, HALF_LIFE, Candidate, choose_cover, freshness_factor

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=10)


def c(frame_id: int, score: float, age_s: float) -> Candidate:
    return Candidate(frame_id, score, NOW - timedelta(seconds=age_s))


def choose(candidates: list[Candidate], current: Candidate | None, hysteresis: float = 0.1) -> int | None:
    return choose_cover(candidates, current, now=NOW, window=WINDOW, hysteresis=hysteresis).frame_id


def test_first_frame_becomes_the_cover() -> None:
    assert choose([c(1, 0.2, 5)], None) == 1


def test_best_of_the_window_wins() -> None:
    assert choose([c(1, 0.2, 50), c(2, 0.9, 40), c(3, 0.5, 5)], None) == 2


def test_frames_outside_the_window_are_not_candidates() -> None:
    assert choose([c(1, 0.99, 601), c(2, 0.3, 5)], None) == 2


def test_near_equal_challenger_does_not_replace_the_cover() -> None:
    current = c(1, 0.80, 30)
    assert choose([current, c(2, 0.85, 5)], current) is None


def test_clearly_better_challenger_replaces_the_cover() -> None:
    current = c(1, 0.50, 30)
    assert choose([current, c(2, 0.80, 5)], current) == 2


def test_stale_cover_is_replaced_even_by_a_worse_frame() -> None:
    current = c(1, 0.95, 700)
    assert choose([c(2, 0.40, 5)], current) == 2


def test_no_candidates_keeps_the_current_cover() -> None:
    current = c(1, 0.9, 3600)
    decision = choose_cover([], current, now=NOW, window=WINDOW, hysteresis=0.1)
    assert decision.frame_id is None and not decision.changes


def test_current_still_best_keeps_it() -> None:
    current = c(1, 0.9, 30)
    assert choose([current, c(2, 0.5, 5)], current) is None


def test_ties_go_to_the_newer_frame() -> None:
    assert choose([c(1, 0.5, 30), c(2, 0.5, 5)], None) == 2


# --- freshness ---------------------------------------------------------------------------


def test_a_fresh_cover_is_kept_against_an_equal_newer_frame() -> None:
    current = c(1, 0.80, 110)  # inside the freshness period: full value
    assert choose([current, c(2, 0.80, 5)], current) is None


def test_an_aging_cover_gives_way_to_an_equal_fresh_frame() -> None:
    # After two minutes the cover's value decays; an equal frame wins once the decay
    # exceeds the 10 % margin (about 8 s later).
    assert choose([c(1, 0.80, 125), c(2, 0.80, 5)], c(1, 0.80, 125)) is None
    decision = choose_cover(
        [c(1, 0.80, 140), c(2, 0.80, 5)], c(1, 0.80, 140), now=NOW, window=WINDOW, hysteresis=0.1
    )
    assert decision.frame_id == 2
    assert decision.reason.startswith("fresher frame: the cover is 140 s old")


def test_after_a_scene_change_a_worse_current_frame_takes_over_within_minutes() -> None:
    # The stream's best frame is from an old scene; the new scene scores half as well.
    old_best = c(1, 0.90, 170)
    recent = [old_best, c(2, 0.45, 30), c(3, 0.45, 10)]
    assert choose(recent, old_best) is None  # 170 s: still worth more than 1.1 × 0.45
    old_best = c(1, 0.90, 200)
    assert choose([old_best, c(2, 0.45, 60), c(3, 0.45, 5)], old_best) == 3


def test_the_first_cover_of_a_stream_is_a_current_frame() -> None:
    # Nine minutes ago the stream showed something better; now it shows something else.
    assert choose([c(1, 0.9, 540), c(2, 0.5, 20)], None) == 2
    # Within the freshness period quality decides.
    assert choose([c(1, 0.9, 100), c(2, 0.5, 20)], None) == 1


def test_freshness_can_be_switched_off() -> None:
    current = c(1, 0.80, 500)
    decision = choose_cover(
        [current, c(2, 0.80, 5)], current, now=NOW, window=WINDOW, hysteresis=0.1,
        freshness=WINDOW,
    )
    assert decision.frame_id is None


def test_freshness_factor() -> None:
    kw = {"freshness": timedelta(minutes=2), "half_life": timedelta(minutes=1)}
    assert freshness_factor(timedelta(0), **kw) == 1.0
    assert freshness_factor(timedelta(minutes=2), **kw) == 1.0
    assert freshness_factor(timedelta(minutes=3), **kw) == pytest.approx(0.5)
    assert freshness_factor(timedelta(minutes=5), **kw) == pytest.approx(0.125)
    assert freshness_factor(-timedelta(seconds=30), **kw) == 1.0  # clock skew: a "future" frame


def test_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError, match="half_life"):
        choose_cover([], None, now=NOW, window=WINDOW, hysteresis=0.1, half_life=timedelta(0))


candidates_st = st.lists(
    st.builds(
        c,
        st.integers(1, 30),
        st.floats(0.0, 1.0),
        st.floats(0.0, 900.0),
    ),
    max_size=12,
    unique_by=lambda x: x.frame_id,
)


@settings(max_examples=200, deadline=None)
@given(candidates_st, st.one_of(st.none(), st.integers(0, 11)), st.floats(0.0, 0.5))
def test_decisions_respect_the_window_and_the_margin(
    candidates: list[Candidate], current_index: int | None, hysteresis: float
) -> None:
    current = None
    if current_index is not None and current_index < len(candidates):
        current = candidates[current_index]
    decision = choose_cover(candidates, current, now=NOW, window=WINDOW, hysteresis=hysteresis)
    recent = [x for x in candidates if x.captured_at >= NOW - WINDOW]
    if decision.frame_id is None:
        # Kept: nothing recent, or nothing recent beats the current cover by the margin.
        assert current is not None or not recent
        return
    chosen = next(x for x in recent if x.frame_id == decision.frame_id)

    def value(x: Candidate) -> float:
        return x.score * freshness_factor(NOW - x.captured_at, freshness=FRESHNESS, half_life=HALF_LIFE)

    assert all(value(chosen) >= value(x) for x in recent)
    if current is not None and current.captured_at >= NOW - WINDOW:
        assert value(chosen) > value(current) * (1 + hysteresis)
