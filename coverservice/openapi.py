"""The OpenAPI 3.1 description of every route, served at ``GET /openapi.json``.

Written by hand, next to nothing it could drift from unnoticed: a test compares its paths
and methods with the routes the app serves, and the API fuzz test generates its requests
from it. Limits in the schemas are the service's own (stream names, field bounds, enums),
so generated requests reach the handlers rather than only the validators.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import __version__
from .callbacks import STREAM_ID_PATTERN
from .covers import ALL_FORMATS, MAX_BATCH
from .imaging import SIZES

_JSON = "application/json"
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _text(max_length: int, *, pattern: str = _PRINTABLE) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": pattern}


_STREAM_ID = {"type": "string", "pattern": STREAM_ID_PATTERN}
_STREAM_PARAM = {"name": "stream_id", "in": "path", "required": True, "schema": _STREAM_ID}
_FRAME_PARAM = {"name": "frame_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_SIZE_PARAM = {"name": "size", "in": "query", "schema": {"enum": list(SIZES)}}
_FORMAT_PARAM = {"name": "format", "in": "query", "schema": {"enum": list(ALL_FORMATS)}}
# /r/{digest}.{fmt}: renditions in any format, and the placeholder image (which may be a PNG).
_IMAGE_PARAMS = [
    {"name": "digest", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    {"name": "fmt", "in": "path", "required": True, "schema": {"enum": [*ALL_FORMATS, "png"]}},
]
_LIMIT_PARAM = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_ADMIN_ERRORS = {
    "401": _error("no token, or not a valid one"),
    "403": _error("admin is disabled (no tokens configured)"),
}
_COVER_RESPONSE = _json(
    {"type": "object", "properties": {"cover": {"oneOf": [_ref("Cover"), {"type": "null"}]}}},
    "the stream's cover after the change",
)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "code": {"type": "integer"},
            "error": {"type": "string"},
            "message": {"type": "string"},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
                },
            },
        },
    },
    "Signature": {
        "description": "md5(key + t) as lowercase hex; t is the signature's expiry in Unix seconds",
        "type": "object",
        "properties": {
            "t": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]{1,12}$"}]},
            "sign": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        },
    },
    "Screenshot": {
        "description": "CSS event 200: a screenshot was taken and stored",
        "allOf": [_ref("Signature")],
        "type": "object",
        "required": ["event_type", "stream_id", "channel_id", "create_time", "file_size", "width",
                     "height", "pic_url", "pic_full_url"],
        "properties": {
            "event_type": {"const": 200},
            "stream_id": _STREAM_ID,
            "channel_id": _text(200),
            "create_time": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 253_402_300_800},
            "file_size": {"type": "integer", "minimum": 0, "exclusiveMaximum": 2**62},
            "width": {"type": "integer", "minimum": 1, "maximum": 65535},
            "height": {"type": "integer", "minimum": 1, "maximum": 65535},
            "pic_url": _text(1024),
            "pic_full_url": _text(2048),
            "app": _text(200),
            "stream_param": {"type": "string", "description": "push URL query; secrets are redacted"},
        },
    },
    "Moderation": {
        "description": "CSS event 317: image moderation verdict on a screenshot",
        "allOf": [_ref("Signature")],
        "type": "object",
        "required": ["event_type", "streamId", "img", "suggestion"],
        "properties": {
            "event_type": {"const": 317},
            "streamId": _STREAM_ID,
            "img": _text(2048),
            "suggestion": _text(32),
        },
    },
    "StreamState": {
        "description": "CSS events 1 (push started) and 0 (push interrupted)",
        "allOf": [_ref("Signature")],
        "type": "object",
        "required": ["event_type", "stream_id"],
        "properties": {
            "event_type": {"enum": [0, 1]},
            "stream_id": _STREAM_ID,
            "event_time": {"type": "integer", "minimum": 1, "maximum": 253_402_300_799},
        },
    },
    "OtherEvent": {
        "description": "any other event type: acknowledged and ignored",
        "allOf": [_ref("Signature")],
        "type": "object",
        "required": ["event_type"],
        "properties": {"event_type": {"type": "integer", "not": {"enum": [0, 1, 200, 317]}}},
    },
    "Cover": {
        "type": "object",
        "required": ["version", "source", "urls"],
        "properties": {
            "version": {"type": "integer"},
            "source": {"enum": ["auto", "override"]},
            "frame_id": {"type": ["integer", "null"]},
            "captured_at": {"type": ["string", "null"], "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
            "score": {"type": ["number", "null"]},
            "metrics": {"type": ["object", "null"]},
            "urls": {
                "description": "size → format → the stream's URL (follows the stream; short max-age)",
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "images": {
                "description": "size → format → this version's immutable URL (AVIF once first asked for)",
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": _ref("Image")},
            },
            "placeholder": {"oneOf": [_ref("Placeholder"), {"type": "null"}]},
        },
    },
    "Image": {
        "type": "object",
        "required": ["url", "width", "height", "bytes"],
        "properties": {
            "url": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "bytes": {"type": "integer"},
        },
    },
    "Placeholder": {
        "description": "what to paint before the image arrives",
        "type": "object",
        "required": ["color", "blurhash"],
        "properties": {
            "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$", "description": "dominant colour"},
            "blurhash": {"type": "string", "description": "BlurHash, 4×3 components"},
        },
    },
    "CoverMetadata": {
        "type": "object",
        "required": ["stream_id", "live", "cover", "placeholder_url"],
        "properties": {
            "stream_id": {"type": "string"},
            "live": {"type": ["boolean", "null"], "description": "null: a stream never heard of"},
            "cover": {"oneOf": [_ref("Cover"), {"type": "null"}]},
            "placeholder_url": {
                "type": ["string", "null"],
                "description": "without a cover: the configured placeholder image's immutable URL",
            },
        },
    },
}

_PATHS: dict[str, dict[str, Any]] = {
    "/callbacks/css": {
        "post": {
            "summary": "Tencent Cloud CSS callbacks (screenshot, moderation, push state)",
            "tags": ["callbacks"],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {
                            "oneOf": [_ref("Screenshot"), _ref("Moderation"), _ref("StreamState"), _ref("OtherEvent")]
                        }
                    }
                },
            },
            "responses": {
                "200": _json({"type": "object", "properties": {"code": {"const": 0}}}, "recorded (or ignored)"),
                "400": _error("malformed JSON, or missing or mistyped fields (named in problems)"),
                "403": _error("bad sign, or t expired, too far ahead or not decimal digits"),
                "413": _error("body over COVERSERVICE_CALLBACK_MAX_BODY_BYTES"),
                "503": _error("not recorded (database unavailable or overloaded): CSS retries"),
            },
        }
    },
    "/cover/{stream_id}": {
        "get": {
            "summary": "The stream's cover image",
            "tags": ["covers"],
            "parameters": [
                _STREAM_PARAM,
                _SIZE_PARAM,
                _FORMAT_PARAM,
                {"name": "Accept", "in": "header", "schema": {"type": "string"}},
                {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "the cover; ETag from the bytes, Cache-Control, X-Cover-Version",
                    "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ALL_FORMATS.values()},
                },
                "304": {"description": "If-None-Match matched"},
                "400": _error("unknown size or format"),
                "404": {"description": "no cover yet (the placeholder image, if configured)"},
                "503": _error("the cover's object could not be read from storage"),
            },
        },
        "head": {
            "summary": "The cover's headers",
            "tags": ["covers"],
            "parameters": [_STREAM_PARAM, _SIZE_PARAM, _FORMAT_PARAM],
            "responses": {
                "200": {"description": "as GET, without the body"},
                "304": {"description": "If-None-Match matched"},
                "400": {"description": "unknown size or format"},
                "404": {"description": "no cover yet"},
            },
        },
    },
    "/api/covers/{stream_id}": {
        "get": {
            "summary": "The stream's cover metadata and push state",
            "tags": ["covers"],
            "parameters": [_STREAM_PARAM],
            "responses": {
                "200": _json(_ref("CoverMetadata"), "the cover"),
                "404": _json(_ref("CoverMetadata"), "no cover yet (cover is null)"),
            },
        }
    },
    "/api/covers": {
        "get": {
            "summary": "Cover metadata of many streams at once (a page of rooms), in the order asked",
            "tags": ["covers"],
            "parameters": [
                {
                    "name": "ids",
                    "in": "query",
                    "required": True,
                    "description": f"stream ids, comma-separated, at most {MAX_BATCH}; repeats are listed once",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"covers": {"type": "array", "items": _ref("CoverMetadata")}}},
                    "one entry per id; streams without a cover have cover null",
                ),
                "400": _error("no ids, more than the limit, or one that is not a stream id"),
            },
        }
    },
    "/r/{digest}.{fmt}": {
        "get": {
            "summary": "An image by the SHA-256 of its bytes: immutable, cacheable for a year",
            "tags": ["covers"],
            "parameters": [*_IMAGE_PARAMS, {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "the image; strong ETag, Cache-Control immutable",
                    "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ALL_FORMATS.values()},
                },
                "304": {"description": "If-None-Match matched"},
                "404": _error("no such image, or its frame is blocked (short max-age)"),
                "503": _error("the image could not be read from storage"),
            },
        },
        "head": {
            "summary": "The image's headers",
            "tags": ["covers"],
            "parameters": _IMAGE_PARAMS,
            "responses": {
                "200": {"description": "as GET, without the body"},
                "304": {"description": "If-None-Match matched"},
                "404": {"description": "no such image"},
            },
        },
    },
    "/healthz": {
        "get": {
            "summary": "The process is up",
            "tags": ["health"],
            "responses": {"200": _json({"type": "object"}, "up")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Database and storage are reachable",
            "tags": ["health"],
            "responses": {
                "200": _json({"type": "object"}, "ready"),
                "503": _json({"type": "object"}, "names the dependency that is not"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics of this process, and the frame queue read from the database",
            "tags": ["health"],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "tags": ["health"],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        }
    },
    "/admin": {
        "get": {
            "summary": "The admin page (static; it asks for the token and sends it to the API)",
            "tags": ["admin"],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }
    },
    "/admin/streams": {
        "get": {
            "summary": "Streams with their covers and overrides, by stream id",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_LIMIT_PARAM, {"name": "after", "in": "query", "schema": _STREAM_ID}],
            "responses": {"200": _json({"type": "object"}, "streams"), "400": _error("bad limit"), **_ADMIN_ERRORS},
        }
    },
    "/admin/streams/{stream_id}": {
        "get": {
            "summary": "One stream",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_STREAM_PARAM],
            "responses": {"200": _json({"type": "object"}, "the stream"), "404": _error("no such stream"), **_ADMIN_ERRORS},
        }
    },
    "/admin/streams/{stream_id}/frames": {
        "get": {
            "summary": "A stream's recent frames, newest first, with scores and reasons",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_STREAM_PARAM, _LIMIT_PARAM],
            "responses": {
                "200": _json({"type": "object"}, "frames"),
                "400": _error("bad limit"),
                "404": _error("no such stream"),
                **_ADMIN_ERRORS,
            },
        }
    },
    "/admin/frames/{frame_id}/thumbnail": {
        "get": {
            "summary": "A small JPEG of the frame's screenshot",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_FRAME_PARAM],
            "responses": {
                "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                "404": _error("no such frame"),
                "422": _error("the screenshot is not a usable image"),
                "502": _error("the screenshot could not be downloaded"),
                **_ADMIN_ERRORS,
            },
        }
    },
    "/admin/frames/{frame_id}/block": {
        "post": {
            "summary": "Never use this frame; off every cover at once",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_FRAME_PARAM],
            "responses": {"200": _json({"type": "object"}, "the frame"), "404": _error("no such frame"), **_ADMIN_ERRORS},
        }
    },
    "/admin/frames/{frame_id}/unblock": {
        "post": {
            "summary": "Allow this frame again",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_FRAME_PARAM],
            "responses": {"200": _json({"type": "object"}, "the frame"), "404": _error("no such frame"), **_ADMIN_ERRORS},
        }
    },
    "/admin/covers/{stream_id}": {
        "put": {
            "summary": "Upload an image as the stream's cover (until released)",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_STREAM_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/jpeg", "image/png", "image/webp")
                },
            },
            "responses": {
                "200": _COVER_RESPONSE,
                "404": _error("bad stream id"),
                "413": _error("larger than COVERSERVICE_FETCH_MAX_BYTES"),
                "422": _error("not an image we accept"),
                **_ADMIN_ERRORS,
            },
        }
    },
    "/admin/covers/{stream_id}/pin": {
        "post": {
            "summary": "Make one of the stream's frames its cover (until released or expired)",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_STREAM_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["frame_id"],
                            "additionalProperties": False,
                            "properties": {
                                "frame_id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                                "expires_in": {"type": ["integer", "null"], "minimum": 1, "maximum": 365 * 86_400},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _COVER_RESPONSE,
                "400": _error("bad body"),
                "404": _error("no such frame in this stream"),
                "409": _error("the frame is blocked"),
                "422": _error("the screenshot is not a usable image"),
                "502": _error("the screenshot could not be downloaded"),
                **_ADMIN_ERRORS,
            },
        }
    },
    "/admin/covers/{stream_id}/override": {
        "delete": {
            "summary": "Back to automatic selection",
            "tags": ["admin"],
            "security": _ADMIN,
            "parameters": [_STREAM_PARAM],
            "responses": {"200": _COVER_RESPONSE, "404": _error("no such stream"), **_ADMIN_ERRORS},
        }
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "coverservice",
            "version": __version__,
            "description": "Live-room covers: CSS screenshot callbacks in, covers out.",
        },
        "paths": copy.deepcopy(_PATHS),
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {
                "admin": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from COVERSERVICE_ADMIN_TOKENS",
                }
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document(), headers={"Cache-Control": "public, max-age=300"})
