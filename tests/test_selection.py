from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coverservice.selection import Candidate, choose_cover

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
