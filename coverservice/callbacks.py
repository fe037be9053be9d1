"""CSS callback payloads: signature check, parsing and validation into typed events.

Pure: bytes, keys and the current time in; an event or a ``CallbackError`` out.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .errors import CallbackError, InvalidPayload, SignatureRejected

SCREENSHOT = 200
MODERATION = 317
PUSH_STARTED = 1
PUSH_INTERRUPTED = 0

# CSS stream names are letters, digits, '_', '-' (and '.' in practice); they appear in
# our URL paths and storage keys, so nothing else is accepted.
STREAM_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,200}$"
# Query parameters of the push URL that authenticate the publisher.
SECRET_PARAMS = frozenset({"txsecret", "secret", "sign", "token"})

_DIGITS = re.compile(r"[0-9]{1,12}")

StreamName = Annotated[StrictStr, Field(pattern=STREAM_ID_PATTERN)]
# Bounded to what the columns hold (and a bigint): a value the database refuses would fail
# the whole batch of callbacks it is written with.
Count = Annotated[StrictInt, Field(ge=0, lt=2**62)]
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

Name = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=_PRINTABLE)]
Path = Annotated[StrictStr, Field(min_length=1, max_length=1024, pattern=_PRINTABLE)]
Url = Annotated[StrictStr, Field(min_length=1, max_length=2048, pattern=_PRINTABLE)]
Word = Annotated[StrictStr, Field(min_length=1, max_length=32, pattern=_PRINTABLE)]


class _ScreenshotPayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_type: Literal[200]
    stream_id: StreamName
    channel_id: Name
    # Before year 10000: datetime's (and so the captured_at column's) range.
    create_time: Annotated[StrictInt, Field(gt=0, lt=253_402_300_800)]
    file_size: Count
    width: Annotated[StrictInt, Field(gt=0, le=65535)]
    height: Annotated[StrictInt, Field(gt=0, le=65535)]
    pic_url: Path
    pic_full_url: Url
    app: Name | None = None


class _ModerationPayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_type: Literal[317]
    streamId: StreamName  # CSS's field name
    img: Url
    suggestion: Word


class _StreamStatePayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_type: Literal[0, 1]
    stream_id: StreamName
    # When CSS saw the push start or stop; the callback itself can arrive much later
    # (CSS retries), and frames are judged against the event's time, not the arrival.
    event_time: Annotated[StrictInt, Field(gt=0, lt=253_402_300_800)] | None = None


@dataclass(frozen=True)
class ScreenshotEvent:
    stream_id: str
    channel_id: str
    create_time: int
    file_size: int
    width: int
    height: int
    pic_url: str
    pic_full_url: str
    app: str | None
    payload: dict[str, Any]  # as received, secrets redacted


@dataclass(frozen=True)
class ModerationEvent:
    stream_id: str
    img: str  # URL of the flagged screenshot
    img_path: str  # its path, which is the screenshot callback's pic_url
    suggestion: str  # Block / Review / Pass
    payload: dict[str, Any]


@dataclass(frozen=True)
class StreamStateEvent:
    stream_id: str
    live: bool  # event 1: push started; event 0: push interrupted
    event_time: int | None  # Unix seconds, when the callback says


@dataclass(frozen=True)
class IgnoredEvent:
    event_type: int


CallbackEvent = ScreenshotEvent | ModerationEvent | StreamStateEvent | IgnoredEvent


def parse_callback(
    body: bytes, *, keys: tuple[str, ...], now: float, max_validity: float
) -> CallbackEvent:
    """Validate one callback body. Order matters: a body we cannot read is a 400; then
    the signature (403) before any field is trusted; then the event's own fields (400)."""
    payload = _load_json(body)
    event_type = payload.get("event_type")
    if type(event_type) is not int:
        raise InvalidPayload(
            "event_type must be an integer",
            [{"field": "event_type", "problem": "missing" if event_type is None else "not an integer"}],
        )
    try:
        return _parse_event(payload, event_type, keys=keys, now=now, max_validity=max_validity)
    except CallbackError as exc:
        exc.event_type = event_type
        raise


def _parse_event(
    payload: dict[str, Any], event_type: int, *, keys: tuple[str, ...], now: float, max_validity: float
) -> CallbackEvent:
    if keys:
        verify_signature(payload, keys=keys, now=now, max_validity=max_validity)
    if event_type == SCREENSHOT:
        data = _validate(_ScreenshotPayload, payload, "screenshot")
        return ScreenshotEvent(
            stream_id=data.stream_id,
            channel_id=data.channel_id,
            create_time=data.create_time,
            file_size=data.file_size,
            width=data.width,
            height=data.height,
            pic_url=data.pic_url,
            pic_full_url=data.pic_full_url,
            app=data.app,
            payload=redact(payload),
        )
    if event_type == MODERATION:
        flag = _validate(_ModerationPayload, payload, "moderation")
        return ModerationEvent(
            stream_id=flag.streamId,
            img=flag.img,
            img_path=urlsplit(flag.img).path or flag.img,
            suggestion=flag.suggestion,
            payload=redact(payload),
        )
    if event_type in (PUSH_STARTED, PUSH_INTERRUPTED):
        state = _validate(_StreamStatePayload, payload, "stream state")
        return StreamStateEvent(
            stream_id=state.stream_id, live=event_type == PUSH_STARTED, event_time=state.event_time
        )
    return IgnoredEvent(event_type)


def sign(key: str, t: int) -> str:
    """The CSS signature: md5(key + t) as lowercase hex."""
    return hashlib.md5(f"{key}{t}".encode(), usedforsecurity=False).hexdigest()


@functools.lru_cache(maxsize=4096)
def _signatures(keys: tuple[str, ...], t: int) -> tuple[bytes, ...]:
    # CSS signs with t = send time + a fixed validity, so the callbacks of one second share
    # their t: at thousands of callbacks a second the digests are computed once per second.
    return tuple(sign(key, t).encode() for key in keys)


def verify_signature(
    payload: dict[str, Any], *, keys: tuple[str, ...], now: float, max_validity: float
) -> None:
    raw_t = payload.get("t")
    # t is the signature's expiry as decimal Unix seconds. Only digits are accepted:
    # int("1e3"), int(" 12"), int("+12") and floats would otherwise all pass as numbers.
    if type(raw_t) is int and raw_t >= 0:
        t = raw_t
    elif isinstance(raw_t, str) and _DIGITS.fullmatch(raw_t):
        t = int(raw_t)
    else:
        raise SignatureRejected("t must be decimal Unix seconds")
    given = payload.get("sign")
    if not isinstance(given, str) or not given:
        raise SignatureRejected("sign is missing")
    given_bytes = given.encode("utf-8", "replace")
    # Every key is compared, match or not, so timing says nothing about which one matched.
    matched = False
    for expected in _signatures(keys, t):
        matched |= hmac.compare_digest(expected, given_bytes)
    if not matched:
        raise SignatureRejected("sign does not match any configured callback key")
    if t < now:
        raise SignatureRejected("signature expired (t is in the past)")
    if t > now + max_validity:
        raise SignatureRejected("t is too far in the future")


def redact(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without publisher secrets: ``stream_param`` (the push URL's query)
    may hold ``txSecret``, which must never reach a log or a database."""
    clean = dict(payload)
    param = clean.get("stream_param")
    if isinstance(param, str) and param:
        pairs = parse_qsl(param, keep_blank_values=True)
        clean["stream_param"] = urlencode(
            [(k, "REDACTED" if k.lower() in SECRET_PARAMS else v) for k, v in pairs]
        )
    # md5(key + t) with t in clear invites an offline search for the key: not kept.
    clean.pop("sign", None)
    return clean


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise InvalidPayload("body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidPayload("body is nested too deeply") from None
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        raise InvalidPayload(f"body is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(payload, dict):
        raise InvalidPayload("body must be a JSON object")
    return payload


_Payload = TypeVar("_Payload", bound=BaseModel)


def _validate(model: type[_Payload], payload: dict[str, Any], kind: str) -> _Payload:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [
            {
                "field": ".".join(str(p) for p in err["loc"]) or "body",
                "problem": "missing" if err["type"] == "missing" else err["msg"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        fields = ", ".join(p["field"] for p in problems)
        raise InvalidPayload(f"invalid {kind} callback: {fields}", problems) from None
