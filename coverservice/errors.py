"""The service's error hierarchy.

Each error is mapped exactly once at an edge: callback errors to an HTTP status in
``app.py``, frame errors to a frame status (``rejected`` / ``failed``) in ``worker.py``.
The message is the reason a person reads, so it must be short, specific and free of
secrets.
"""

from __future__ import annotations


class CoverServiceError(Exception):
    """Base of every error the service raises on purpose."""


# --- HTTP requests ---------------------------------------------------------------------


class RequestError(CoverServiceError):
    """A request we refuse; ``status`` and ``code`` are what the client sees."""

    status = 400
    code = "bad_request"


class AdminError(RequestError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# --- callbacks -------------------------------------------------------------------------


class CallbackError(RequestError):
    """A callback we refuse. ``event_type`` is the body's, once it could be read (for the
    metrics: a broken screenshot callback is counted as a screenshot)."""

    status = 400
    code = "invalid_callback"
    event_type: int | None = None


class InvalidPayload(CallbackError):
    """Malformed JSON, or missing / mistyped fields (400)."""

    status = 400
    code = "invalid_payload"

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class PayloadTooLarge(CallbackError):
    status = 413
    code = "payload_too_large"


class SignatureRejected(CallbackError):
    """Wrong ``sign``, expired or absurd ``t`` (403)."""

    status = 403
    code = "signature_rejected"


# --- frames ----------------------------------------------------------------------------


class FrameError(CoverServiceError):
    """Processing a frame went wrong; ``str(error)`` is stored as the frame's reason."""


class FetchError(FrameError):
    """The screenshot could not be downloaded.

    ``transient`` errors (timeouts, connection resets, 5xx) are retried with backoff;
    the others (host not allowed, private address, 404, too large) fail the frame at once.
    """

    def __init__(self, message: str, *, transient: bool, host: str | None = None, setting: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        # For refusals that configuration could lift: the host, and the variable to change.
        self.host = host
        self.setting = setting


class ImageRejected(FrameError):
    """The bytes are not an image we accept, or the image is unusable as a cover
    (format not allowed, too many pixels, truncated, black, flat). Never retried."""


# --- storage ---------------------------------------------------------------------------


class StorageError(CoverServiceError):
    """The object store failed after its own retries."""
