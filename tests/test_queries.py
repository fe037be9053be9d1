from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, sessionmaker

from coverservice import queries
from coverservice.callbacks import ScreenshotEvent
from coverservice.db import make_session_factory, transaction
from coverservice.models import Cover, Frame, FrameStatus, Stream

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def event(stream: str = "room", n: int = 1) -> ScreenshotEvent:
    return ScreenshotEvent(
        stream_id=stream,
        channel_id=stream,
        create_time=int(NOW.timestamp()) - n,
        file_size=100,
        width=640,
        height=360,
        pic_url=f"/{stream}/{n}.jpg",
        pic_full_url=f"http://cos.example/{stream}/{n}.jpg",
        app="live",
        payload={"event_type": 200, "n": n},
    )


def record(sessions: sessionmaker[Session], ev: ScreenshotEvent) -> int:
    with transaction(sessions) as s:
        queries.record_frames(s, [queries.NewFrame(ev, NOW - timedelta(seconds=5))], now=NOW)
    with sessions() as s:
        return s.scalars(select(Frame.id).where(Frame.stream_id == ev.stream_id, Frame.pic_url == ev.pic_url)).one()


def claim(sessions: sessionmaker[Session], owner: str, now: datetime = NOW, limit: int = 10) -> list[queries.ClaimedFrame]:
    """Claim due frames and start each, as a worker does (starting counts the attempt)."""
    with transaction(sessions) as s:
        frames = queries.claim_frames(s, owner=owner, now=now, lease=LEASE, limit=limit)
        for frame in frames:
            assert queries.start_frame(s, frame, until=now + LEASE)
        return frames


def test_a_retried_callback_is_recorded_once(sessions: sessionmaker[Session]) -> None:
    first = record(sessions, event(n=1))
    assert record(sessions, event(n=1)) == first
    assert record(sessions, event(n=2)) != first
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == 2
        frame = s.get_one(Frame, first)
        assert frame.status == FrameStatus.PENDING
        assert frame.payload == {"event_type": 200, "n": 1}
        assert frame.captured_at == NOW - timedelta(seconds=5)
        assert s.get_one(Stream, "room").last_frame_at == NOW - timedelta(seconds=5)


def test_claims_are_disjoint_and_leased(sessions: sessionmaker[Session]) -> None:
    for n in range(5):
        record(sessions, event(n=n))
    a = claim(sessions, "a", limit=3)
    b = claim(sessions, "b", limit=3)
    assert len(a) == 3 and len(b) == 2
    assert not {f.id for f in a} & {f.id for f in b}
    assert all(f.attempts == 1 for f in a + b)
    assert claim(sessions, "c") == []
    # the lease runs out: the frames come back, with the attempt counted
    again = claim(sessions, "c", now=NOW + LEASE + timedelta(seconds=1))
    assert sorted(f.id for f in again) == sorted(f.id for f in a + b)
    assert all(f.attempts == 2 for f in again)


def test_a_lost_lease_cannot_overwrite_the_new_owner(sessions: sessionmaker[Session]) -> None:
    record(sessions, event())
    [old] = claim(sessions, "old")
    [new] = claim(sessions, "new", now=NOW + LEASE + timedelta(seconds=1))
    with transaction(sessions) as s:
        assert not queries.finish_frame(s, old, status=FrameStatus.FAILED, reason="late", now=NOW)
    with transaction(sessions) as s:
        assert queries.finish_frame(s, new, status=FrameStatus.SCORED, reason="ok", now=NOW, score=0.5)
    with sessions() as s:
        frame = s.get_one(Frame, new.id)
        assert (frame.status, frame.score, frame.lease_owner) == ("scored", 0.5, None)


def test_backoff_hides_a_frame_until_it_is_due(sessions: sessionmaker[Session]) -> None:
    record(sessions, event())
    [frame] = claim(sessions, "w")
    with transaction(sessions) as s:
        queries.retry_frame_later(s, frame, reason="timeout", available_at=NOW + timedelta(seconds=30))
    assert claim(sessions, "w", now=NOW + timedelta(seconds=29)) == []
    [again] = claim(sessions, "w", now=NOW + timedelta(seconds=30))
    assert again.attempts == 2


def test_frames_that_keep_killing_workers_are_parked(sessions: sessionmaker[Session]) -> None:
    record(sessions, event())
    now = NOW
    for _ in range(3):
        assert len(claim(sessions, "dies", now=now)) == 1
        now += LEASE + timedelta(seconds=1)
    with transaction(sessions) as s:
        assert queries.park_dead_frames(s, now=now, max_attempts=3) == 1
    assert claim(sessions, "w", now=now) == []
    with sessions() as s:
        frame = s.scalars(select(Frame)).one()
        assert frame.status == FrameStatus.FAILED
        assert "gave up after 3 attempts" in frame.reason


def test_install_cover_is_a_compare_and_set(sessions: sessionmaker[Session]) -> None:
    frame_id = record(sessions, event())
    rendition = queries.StoredRendition("small", "jpeg", "renditions/aa/aa.jpeg", "aa", "image/jpeg", 320, 180, 10)
    with transaction(sessions) as s:
        first = queries.install_cover(
            s, "room", expected_cover_id=None, frame_id=frame_id,
            score=0.5, captured_at=NOW, renditions=[rendition], now=NOW,
        )
    assert first is not None
    with transaction(sessions) as s:
        # decided against "no cover", but there is one now: refused
        assert queries.install_cover(
            s, "room", expected_cover_id=None, frame_id=frame_id,
            score=0.6, captured_at=NOW, renditions=[rendition], now=NOW,
        ) is None
    with transaction(sessions) as s:
        view = queries.cover_view(s, "room", now=NOW)
        assert view is not None and view.cover_id == first
        assert view.renditions[("small", "jpeg")].key == "renditions/aa/aa.jpeg"
        assert s.scalar(select(func.count()).select_from(Cover)) == 1
        assert queries.cover_view(s, "unknown", now=NOW) is None


def test_concurrent_claims_skip_locked_rows_instead_of_waiting(postgres_url: str) -> None:
    from coverservice.db import make_engine, make_session_factory

    engine = make_engine(postgres_url, pool_size=2)
    sessions = make_session_factory(engine)
    try:
        for n in range(4):
            record(sessions, event(n=n))
        with sessions() as a, sessions() as b:
            a.begin()
            b.begin()
            # statement_timeout: if B waited on A's row locks instead of skipping them,
            # the claim would fail instead of hanging the test.
            b.execute(text("SET LOCAL statement_timeout = '2s'"))
            first = queries.claim_frames(a, owner="a", now=NOW, lease=LEASE, limit=2)
            second = queries.claim_frames(b, owner="b", now=NOW, lease=LEASE, limit=4)
            assert len(first) == 2 and len(second) == 2
            assert not {f.id for f in first} & {f.id for f in second}
            a.commit()
            b.commit()
    finally:
        engine.dispose()


def test_a_batch_with_retries_and_several_frames_of_one_stream(sessions: sessionmaker[Session]) -> None:
    batch = [queries.NewFrame(event("a", n), NOW - timedelta(seconds=10 - n)) for n in range(4)]
    batch += [queries.NewFrame(event("a", 1), NOW), queries.NewFrame(event("b", 1), NOW - timedelta(seconds=50))]
    with transaction(sessions) as s:
        queries.record_frames(s, batch, now=NOW)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == 5
        assert s.get_one(Stream, "a").last_frame_at == NOW
        assert s.get_one(Stream, "b").last_frame_at == NOW - timedelta(seconds=50)
    # an older frame arriving late does not move last_frame_at back
    with transaction(sessions) as s:
        queries.record_frames(s, [queries.NewFrame(event("a", 9), NOW - timedelta(hours=1))], now=NOW)
    with sessions() as s:
        assert s.get_one(Stream, "a").last_frame_at == NOW


def test_a_claim_reads_about_its_limit_however_long_the_backlog(postgres_url: str) -> None:
    # The queue is read where workers fall behind: a claim must not gather and sort every
    # due frame. Every frames node of the claim's plan touches O(limit) rows.
    engine = create_engine(postgres_url)
    sessions = make_session_factory(engine)
    backlog, limit = 3000, 8
    with transaction(sessions) as s:
        for b in range(backlog // 500):
            queries.record_frames(
                s, [queries.NewFrame(event(f"r{i % 50}", b * 500 + i), NOW - timedelta(seconds=5)) for i in range(500)],
                now=NOW - timedelta(seconds=60 - b),
            )
    statements: list[tuple[str, Any]] = []
    sa_event.listen(engine, "before_cursor_execute", lambda conn, cur, sql, params, *_: statements.append((sql, params)))
    try:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE frames"))  # as autovacuum keeps it in production
        with transaction(sessions) as s:
            assert len(queries.claim_frames(s, owner="w", now=NOW, lease=LEASE, limit=limit)) == limit
        (sql, params), = [(q, p) for q, p in statements if q.lstrip().upper().startswith("UPDATE FRAMES")]
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).scalar_one()
            conn.rollback()
    finally:
        engine.dispose()

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node] + [n for child in node.get("Plans", []) for n in nodes(child)]

    root = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    touched = [(n["Node Type"], n["Actual Rows"]) for n in nodes(root) if n.get("Relation Name") == "frames"]
    assert touched and all(rows <= 2 * limit for _, rows in touched), touched


# --- reselection due times ------------------------------------------------------------------------


def streams_due(sessions: sessionmaker[Session], *due: datetime | None) -> list[str]:
    ids = []
    with transaction(sessions) as s:
        for i, at in enumerate(due):
            s.add(Stream(id=f"s{i}", created_at=NOW, reselect_at=at))
            ids.append(f"s{i}")
    return ids


def test_reselections_are_claimed_when_due_in_due_order_and_leased(sessions: sessionmaker[Session]) -> None:
    streams_due(sessions, NOW + timedelta(seconds=5), NOW - timedelta(seconds=1), None, NOW - timedelta(seconds=9))
    with transaction(sessions) as s:
        # The most overdue first; not yet due, or never, not at all.
        assert queries.claim_reselections(s, now=NOW, lease=LEASE, limit=1) == [("s3", NOW + LEASE)]
        assert queries.claim_reselections(s, now=NOW, lease=LEASE, limit=10) == [("s1", NOW + LEASE)]
    with transaction(sessions) as s:
        # Leased: not due again until the lease runs out (a worker that dies leaves it due).
        assert queries.claim_reselections(s, now=NOW + timedelta(seconds=6), lease=LEASE, limit=10) == [
            ("s0", NOW + timedelta(seconds=6) + LEASE)
        ]
        again = queries.claim_reselections(s, now=NOW + LEASE, lease=LEASE, limit=10)
        assert sorted(c[0] for c in again) == ["s1", "s3"]


def test_a_due_time_only_moves_earlier_except_for_its_claimer(sessions: sessionmaker[Session]) -> None:
    streams_due(sessions, NOW + timedelta(seconds=30))

    def due() -> datetime | None:
        with sessions() as s:
            return s.get_one(Stream, "s0").reselect_at

    with transaction(sessions) as s:
        queries.schedule_reselection(s, "s0", at=NOW + timedelta(seconds=60))
    assert due() == NOW + timedelta(seconds=30)  # a later time cannot cancel an earlier one
    with transaction(sessions) as s:
        queries.schedule_reselection(s, "s0", at=NOW + timedelta(seconds=10))
    assert due() == NOW + timedelta(seconds=10)
    with transaction(sessions) as s:
        [(_, lease)] = queries.claim_reselections(s, now=NOW + timedelta(seconds=10), lease=LEASE, limit=1)
    with transaction(sessions) as s:
        seen = queries.selection_inputs(s, "s0", since=NOW - timedelta(minutes=10))
    # The claimer's decision replaces its lease, later or none...
    with transaction(sessions) as s:
        queries.schedule_reselection(s, "s0", at=None, claimed=lease, seen=seen)
    assert due() is None
    # ...unless the stream moved on under it: here a frame was scored that it had not seen,
    # so its lease stays as the due time and the next look sees that frame.
    with transaction(sessions) as s:
        s.get_one(Stream, "s0").reselect_at = NOW
    with transaction(sessions) as s:
        [(_, lease)] = queries.claim_reselections(s, now=NOW, lease=LEASE, limit=1)
        seen = queries.selection_inputs(s, "s0", since=NOW - timedelta(minutes=10))
    record(sessions, event(stream="s0"))
    with transaction(sessions) as s:
        s.execute(text("UPDATE frames SET status = 'scored', score = 0.5"))
    with transaction(sessions) as s:
        queries.schedule_reselection(s, "s0", at=None, claimed=lease, seen=seen)
    assert due() == lease


def test_concurrent_reselection_claims_skip_locked_streams(postgres_url: str) -> None:
    from coverservice.db import make_engine

    engine = make_engine(postgres_url, pool_size=2)
    sessions = make_session_factory(engine)
    try:
        streams_due(sessions, *(NOW - timedelta(seconds=n) for n in range(4)))
        with sessions() as a, sessions() as b:
            a.begin()
            b.begin()
            b.execute(text("SET LOCAL statement_timeout = '2s'"))
            first = queries.claim_reselections(a, now=NOW, lease=LEASE, limit=2)
            second = queries.claim_reselections(b, now=NOW, lease=LEASE, limit=4)
            assert len(first) == 2 and len(second) == 2
            assert not {c[0] for c in first} & {c[0] for c in second}
            a.commit()
            b.commit()
    finally:
        engine.dispose()
