"""Settings: one frozen object, read from ``COVERSERVICE_*`` environment variables and
validated at start-up. Nothing else in the package reads the environment (boto3 reads
the standard ``AWS_*`` variables itself, which is what makes COS and MinIO work)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import CoverServiceError

CommaList = Annotated[tuple[str, ...], NoDecode]

# Tencent COS serves objects from <bucket>.cos.<region>.myqcloud.com and, for newer
# buckets, <bucket>.cos.<region>.tencentcos.cn.
DEFAULT_ALLOWED_HOSTS = ("*.myqcloud.com", "*.tencentcos.cn")


class ConfigurationError(CoverServiceError):
    """A setting has a bad value; the message names the variable."""


class Settings(BaseSettings):
    # Each field's docstring is its description: docs/configuration.md is generated from
    # them (python -m coverservice.settings_docs --write).
    model_config = SettingsConfigDict(
        env_prefix="COVERSERVICE_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    # --- contract variables ------------------------------------------------------------
    database_url: str = Field(
        default_factory=lambda: f"sqlite:///{Path.cwd() / 'coverservice.sqlite3'}"
    )
    """SQLAlchemy URL of the database: `postgresql://user:password@host:port/db` (used as is) or
    `sqlite:////absolute/path.sqlite3`."""
    storage_url: str = Field(default_factory=lambda: (Path.cwd() / "coverservice-data").as_uri())
    """Where covers are stored: `file:///absolute/dir` or `s3://bucket/prefix` (S3, COS, MinIO;
    endpoint and credentials come from the standard `AWS_*` variables)."""
    callback_keys: CommaList = ()
    """Comma-separated CSS callback keys (`sign = md5(key + t)`); two during a rotation. Empty:
    signatures are **not** checked (a warning at start)."""
    fetch_allowed_hosts: CommaList = DEFAULT_ALLOWED_HOSTS
    """Host patterns `pic_full_url` may point at: `host`, `*.domain`, optionally `:port` or `:*`
    (otherwise ports 80/443 only). A screenshot elsewhere is recorded as failed and logged at
    warning."""
    fetch_allow_private: bool = False
    """Allow downloads from loopback and private addresses: tests and demos only."""
    admin_tokens: CommaList = ()
    """Comma-separated bearer tokens for `/admin`: `name:token` or a bare token, 16+ characters.
    Empty: admin disabled (403)."""

    # --- callbacks -----------------------------------------------------------------------
    # CSS signs with t = expiry time, 10 minutes ahead by default; a t further ahead than
    # this is not a real CSS signature.
    callback_max_validity: float = Field(default=86_400.0, gt=0)
    """How far in the future a callback's `t` may lie, seconds."""
    callback_max_body_bytes: int = Field(default=64 * 1024, gt=0)
    """Callback body cap, bytes (more: 413)."""

    # --- downloads and decoding -------------------------------------------------------
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """Download cap for a screenshot (and an admin upload), bytes."""
    fetch_timeout: float = Field(default=10.0, gt=0)
    """Deadline for a whole download (DNS, TLS and body included), seconds."""
    fetch_connect_timeout: float = Field(default=3.0, gt=0)
    """Deadline for connecting (DNS included), seconds."""
    fetch_max_connections: int = Field(default=16, gt=0)
    """Open download connections per process."""
    max_image_pixels: int = Field(default=16_777_216, gt=0)  # 4096², far below Pillow's 89M
    """Decode cap, checked from the image header before decoding."""

    # --- worker --------------------------------------------------------------------------
    worker_name: str = Field(default="", max_length=40)  # shown per frame; default: random
    """A worker's name, shown on the frames it processed. Empty: random."""
    worker_lease: float = Field(default=60.0, gt=0)
    """How long a worker holds a frame; a dead worker's frame is redone after it, seconds."""
    worker_batch_size: int = Field(default=8, gt=0, le=1000)
    """Frames a worker claims at once."""
    worker_poll_interval: float = Field(default=0.5, gt=0)
    """How often an idle worker looks for frames, seconds."""
    worker_max_attempts: int = Field(default=5, gt=0)
    """Attempts per frame (transient download failures, workers that died) before it is `failed`."""
    worker_retry_base: float = Field(default=2.0, ge=0)
    """First retry backoff, seconds (exponential, with jitter)."""
    worker_retry_max: float = Field(default=300.0, ge=0)
    """Longest retry backoff, seconds."""

    # --- selection ----------------------------------------------------------------------
    selection_window: float = Field(default=600.0, gt=0)
    """Frames captured within this many seconds are candidates for the cover."""
    # A challenger must beat the current cover's score by this fraction to replace it.
    selection_hysteresis: float = Field(default=0.10, ge=0)
    """Margin a challenger's score must beat the current cover's by (0.10: 10 %)."""
    # A frame counts at its full score for selection_freshness seconds, then its value
    # halves every selection_half_life seconds, so covers follow the stream (selection.py).
    selection_freshness: float = Field(default=120.0, ge=0)
    """A frame counts at its full score for this long, seconds; then its value decays."""
    selection_half_life: float = Field(default=60.0, gt=0)
    """After that, a frame's value halves every this many seconds, so covers follow the stream."""
    # Rendering a cover costs ~100× scoring a frame: a stream's cover changes for a better
    # frame at most this often (stale, blocked or missing covers are replaced at once).
    # A frame held back by it becomes the cover when the interval ends, with no new frame.
    cover_min_interval: float = Field(default=15.0, ge=0)
    """A stream's cover changes for a better frame at most this often, seconds (stale, blocked or
    missing covers are replaced at once). A better frame held back by it becomes the cover
    when the interval ends, with no new frame needed."""
    # For this long after a stream starts (its latest push start or stop; without one, its
    # first sighting), a clearly better frame replaces the cover at once: a stream's first
    # frames are often loading screens.
    cover_provisional: float = Field(default=60.0, ge=0)
    """For this long after a stream starts, seconds, its first covers are provisional: a
    clearly better frame replaces one without waiting for `COVERSERVICE_COVER_MIN_INTERVAL`."""

    # --- moderation and lifecycle --------------------------------------------------------
    # CSS 317 suggestions that block a frame; add "Review" to block on review as well.
    moderation_block_suggestions: CommaList = ("Block",)
    """CSS 317 `suggestion` values that block the frame; add `Review` to be stricter."""
    # Screenshots taken this close to a push interruption are not cover material: the
    # last frames of a stream that ends are often black or frozen.
    offline_grace: float = Field(default=10.0, ge=0)
    """Frames captured this many seconds before a push interruption never become the cover."""
    # Frames, and covers that are neither current nor an override, older than this are
    # pruned from the database and storage.
    retention: float = Field(default=7 * 86_400.0, gt=0)
    """Frames, and covers neither current nor an override, older than this are pruned, seconds."""
    prune_interval: float = Field(default=600.0, gt=0)
    """How often workers prune, seconds."""

    # --- serving -------------------------------------------------------------------------
    cover_max_age: int = Field(default=30, ge=0)
    """`Cache-Control` max-age of `/cover/{id}` and `/api/covers`, seconds."""
    missing_max_age: int = Field(default=5, ge=0)
    """max-age of a `404` (no cover yet, or the placeholder), seconds."""
    immutable_max_age: int = Field(default=31_536_000, ge=0)
    """max-age of the content-addressed `/r/` URLs (with `immutable`), seconds."""
    cover_cache_ttl: float = Field(default=1.0, ge=0)
    """In-process cache of a stream's cover, seconds (Postgres pushes changes, so longer is safe
    there)."""
    cover_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """In-process LRU of rendition bytes, bytes."""
    placeholder_path: Path | None = None
    """Image served (with the `404`) for streams without a cover. Unset: none."""
    public_base_url: str = ""
    """Prefix for URLs in the metadata API (`https://covers.example.com`). Empty: relative URLs."""
    # Origins whose pages may read covers and metadata with fetch()/XHR (CORS); "*" for
    # any. Empty: no CORS headers, as browsers' <img> loads need none.
    cors_origins: CommaList = ()
    """Comma-separated origins (`https://host[:port]`) or `*` whose pages may read covers and
    metadata with `fetch()`. Empty: no CORS headers."""

    # --- operations ----------------------------------------------------------------------
    log_format: Literal["text", "json"] = "text"
    """`text` or `json` (one object per line)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """`debug`, `info`, `warning` or `error`; `--log-level` wins."""
    # The queue gauges of /metrics are read from the database when scraped, at most
    # once per this many seconds per process.
    metrics_queue_ttl: float = Field(default=5.0, ge=0)
    """The queue gauges of `/metrics` are read from the database at most this often per process,
    seconds."""

    @field_validator("callback_keys", "fetch_allowed_hosts", "admin_tokens", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("fetch_allowed_hosts")
    @classmethod
    def _check_host_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # host, *.domain, optionally with :port or :* (downloads go to ports 80/443 only,
        # unless a pattern names another port: the local stand-ins used by tests and demos)
        shape = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:(\d{1,5}|\*))?$")
        for pattern in value:
            if not shape.match(pattern.lower()):
                raise ValueError(
                    f"{pattern!r} is not a host pattern; use 'host.example.com', "
                    "'*.example.com' or 'host:port'"
                )
        return tuple(p.lower() for p in value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # An origin is scheme://host[:port], nothing more: a path or a trailing slash
        # would never equal a browser's Origin header, and the mistake would be silent.
        shape = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^\*$")
        for origin in value:
            if not shape.match(origin):
                raise ValueError(f"{origin!r} is not an origin; use https://host[:port] or *")
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        # Operators write postgresql://user@host/db; SQLAlchemy would pick psycopg2 for
        # that, which we do not ship, so name the driver we do ship.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith(("postgresql+psycopg://", "sqlite://")):
            raise ValueError("use a postgresql://... or sqlite:///... URL")
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if value.startswith(("file:///", "s3://")):
            if value.startswith("s3://") and not value[len("s3://") :].split("/")[0]:
                raise ValueError("s3:// URL needs a bucket: s3://bucket/prefix")
            return value
        raise ValueError("use file:///absolute/dir or s3://bucket/prefix")

    @model_validator(mode="after")
    def _check_retry_bounds(self) -> Settings:
        if self.worker_retry_max < self.worker_retry_base:
            raise ValueError("worker_retry_max must be at least worker_retry_base")
        return self

    @field_validator("admin_tokens")
    @classmethod
    def _check_admin_tokens(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            name, sep, token = entry.partition(":")
            if sep and (not name or len(token) < 16):
                raise ValueError("use name:token with a token of at least 16 characters")
            if not sep and len(entry) < 16:
                raise ValueError("admin tokens must be at least 16 characters")
        return value

    @property
    def admin_token_names(self) -> dict[str, str]:
        """Token → the name written to the audit log (the token itself never is).
        Entries are ``name:token`` or a bare token, named by a digest prefix."""
        names = {}
        for entry in self.admin_tokens:
            name, sep, token = entry.partition(":")
            if not sep:
                token = entry
                name = "token-" + hashlib.sha256(entry.encode()).hexdigest()[:8]
            names[token] = name
        return names

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def secret_values(self) -> tuple[str, ...]:
        """Every secret the process knows, for the log scrubber: callback keys, admin
        tokens, and the AWS credentials boto3 reads from the environment."""
        aws = (os.environ.get(name, "") for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
        tokens = tuple(self.admin_token_names)
        return tuple(v for v in (*self.callback_keys, *tokens, *self.admin_tokens, *aws) if v)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment (plus explicit overrides), turning pydantic's
    report into one message that names each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"COVERSERVICE_{field.upper()}" if err["loc"] else field
            value = os.environ.get(name)
            shown = f" (got {value!r})" if value is not None and "TOKEN" not in name and "KEY" not in name else ""
            lines.append(f"{name}: {err['msg']}{shown}")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(lines)) from None
