from __future__ import annotations

import json
from typing import Any

import pytest

from coverservice.callbacks import (
    IgnoredEvent,
    ModerationEvent,
    ScreenshotEvent,
    StreamStateEvent,
    parse_callback,
    redact,
    sign,
)
from coverservice.errors import InvalidPayload, SignatureRejected

NOW = 1_700_000_000.0
KEY = "callback-key"


def screenshot(**changes: Any) -> dict[str, Any]:
    t = int(NOW) + 600
    payload: dict[str, Any] = {
        "event_type": 200,
        "stream_id": "room_1",
        "channel_id": "room_1",
        "create_time": int(NOW) - 5,
        "file_size": 7520,
        "width": 640,
        "height": 352,
        "pic_url": "/2018-12-17/room_1-screenshot-19-06-59-640x352.jpg",
        "pic_full_url": "http://bucket-1234567890.cos.ap-shanghai.myqcloud.com/2018-12-17/room_1.jpg",
        "t": t,
        "sign": sign(KEY, t),
    }
    payload.update(changes)
    return payload


def parse(payload: dict[str, Any] | bytes, keys: tuple[str, ...] = (KEY,)) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_callback(body, keys=keys, now=NOW, max_validity=86_400)


def test_sign_is_md5_of_key_and_t() -> None:
    # The documented example: md5("" + ...) style check against a known digest.
    import hashlib

    assert sign("abc", 1545030873) == hashlib.md5(b"abc1545030873").hexdigest()


def test_documented_sample_parses() -> None:
    event = parse(screenshot())
    assert isinstance(event, ScreenshotEvent)
    assert event.stream_id == "room_1"
    assert (event.width, event.height, event.file_size) == (640, 352, 7520)
    assert event.pic_full_url.endswith("/room_1.jpg")
    assert "sign" not in event.payload
    assert event.payload["t"] == int(NOW) + 600


def test_any_configured_key_passes_during_rotation() -> None:
    t = int(NOW) + 600
    assert isinstance(parse(screenshot(sign=sign("old", t)), keys=("new", "old")), ScreenshotEvent)
    with pytest.raises(SignatureRejected):
        parse(screenshot(sign=sign("old", t)), keys=("new",))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sign": "0" * 32}, "does not match"),
        ({"sign": ""}, "missing"),
        ({"t": int(NOW) - 1, "sign": sign(KEY, int(NOW) - 1)}, "expired"),
        ({"t": int(NOW) + 10**7, "sign": sign(KEY, int(NOW) + 10**7)}, "too far"),
        ({"t": "1e9"}, "decimal"),
        ({"t": " 1700000600"}, "decimal"),
        ({"t": -5}, "decimal"),
        ({"t": 1700000600.0}, "decimal"),
        ({"t": True}, "decimal"),
    ],
)
def test_bad_signatures_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SignatureRejected, match=message):
        parse(screenshot(**changes))


def test_t_as_digit_string_is_accepted() -> None:
    t = int(NOW) + 60
    assert isinstance(parse(screenshot(t=str(t), sign=sign(KEY, t))), ScreenshotEvent)


def test_without_keys_signatures_are_not_checked() -> None:
    assert isinstance(parse(screenshot(sign="nonsense"), keys=()), ScreenshotEvent)


def test_japanese_sample_with_broken_quote_is_a_clear_400() -> None:
    body = '{"event_type":200,"stream_id":"s",「width":640,"height":352}'.encode()
    with pytest.raises(InvalidPayload, match="not valid JSON"):
        parse(body)


@pytest.mark.parametrize("body", [b"[]", b"42", b'"x"', b"\xff\xfe", b""])
def test_non_object_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse(body)


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    with pytest.raises(InvalidPayload):
        parse(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"width": "640"}, "width"),
        ({"width": True}, "width"),
        ({"height": -1}, "height"),
        ({"create_time": 1.5}, "create_time"),
        ({"stream_id": "../etc/passwd"}, "stream_id"),
        ({"stream_id": ""}, "stream_id"),
        ({"pic_full_url": 5}, "pic_full_url"),
    ],
)
def test_mistyped_fields_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse(screenshot(**changes))
    assert [p["field"] for p in info.value.problems] == [field]


def test_missing_fields_are_listed() -> None:
    payload = screenshot()
    del payload["pic_full_url"], payload["width"]
    with pytest.raises(InvalidPayload) as info:
        parse(payload)
    assert {p["field"]: p["problem"] for p in info.value.problems} == {
        "pic_full_url": "missing",
        "width": "missing",
    }


def test_missing_event_type_is_a_400() -> None:
    payload = screenshot()
    del payload["event_type"]
    with pytest.raises(InvalidPayload, match="event_type"):
        parse(payload)


def test_unknown_events_are_ignored_but_still_signed() -> None:
    t = int(NOW) + 600
    assert parse({"event_type": 999, "t": t, "sign": sign(KEY, t)}) == IgnoredEvent(999)
    with pytest.raises(SignatureRejected):
        parse({"event_type": 999, "t": t, "sign": "bad"})


def test_stream_param_secrets_are_redacted() -> None:
    payload = screenshot(stream_param="txSecret=deadbeef&txTime=5C2A3F2B&other=1")
    event = parse(payload)
    assert isinstance(event, ScreenshotEvent)
    assert "deadbeef" not in json.dumps(event.payload)
    assert "txTime=5C2A3F2B" in event.payload["stream_param"]
    assert redact({"stream_param": ""}) == {"stream_param": ""}


def signed(payload: dict[str, Any]) -> dict[str, Any]:
    t = int(NOW) + 600
    return {**payload, "t": t, "sign": sign(KEY, t)}


def test_moderation_event_names_the_flagged_screenshot_by_path() -> None:
    event = parse(signed({
        "event_type": 317, "streamId": "room_1", "channelId": "room_1", "type": [1], "score": 91,
        "img": "http://cdn.example.com/2018-12-17/room_1-screenshot.jpg?x=1", "suggestion": "Block",
    }))
    assert isinstance(event, ModerationEvent)
    assert (event.stream_id, event.img_path, event.suggestion) == ("room_1", "/2018-12-17/room_1-screenshot.jpg", "Block")


@pytest.mark.parametrize("event_type, live", [(1, True), (0, False)])
def test_push_events(event_type: int, live: bool) -> None:
    assert parse(signed({"event_type": event_type, "stream_id": "room_1", "app": "live"})) == StreamStateEvent("room_1", live, None)
    stamped = signed({"event_type": event_type, "stream_id": "room_1", "event_time": 1_700_000_000})
    assert parse(stamped) == StreamStateEvent("room_1", live, 1_700_000_000)
    with pytest.raises(InvalidPayload):
        parse(signed({"event_type": event_type, "stream_id": "room_1", "event_time": "soon"}))


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"event_type": 317, "streamId": "room", "suggestion": "Block"}, "img"),
        ({"event_type": 317, "streamId": "a/b", "img": "x", "suggestion": "Block"}, "streamId"),
        ({"event_type": 1}, "stream_id"),
    ],
)
def test_malformed_moderation_and_push_events(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse(signed(payload))
    assert info.value.problems[0]["field"] == field


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"pic_url": "/a\x00b.jpg"}, "pic_url"),
        ({"channel_id": "x" * 201}, "channel_id"),
        ({"app": "a" * 201}, "app"),
        ({"file_size": 2**63}, "file_size"),
        ({"pic_full_url": "http://h/\n"}, "pic_full_url"),
    ],
)
def test_values_the_database_would_refuse_are_a_400(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse(screenshot(**changes))
    assert [p["field"] for p in info.value.problems] == [field]
