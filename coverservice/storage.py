"""Where rendered covers live: one ``Storage`` interface, a backend per URL scheme.

``file:///abs/dir`` is the embedded default, ``s3://bucket/prefix`` is AWS S3, Tencent
COS or MinIO. Backends turn provider errors into standard ones: a missing object is
``FileNotFoundError``, anything else that still fails after the provider's own retries is
``StorageError``, and a malformed key is ``ValueError`` before any I/O happens.

S3 endpoint, region and credentials come from the standard AWS environment
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``...),
which boto3 reads itself.

Path-style vs virtual-hosted addressing: botocore reads *no* environment variable for it
(``AWS_S3_ADDRESSING_STYLE`` was proposed in boto/botocore#3190 and #3307 and never
merged). It reads ``s3.addressing_style`` from the shared config file (``AWS_CONFIG_FILE``,
by default ``~/.aws/config``)::

    [default]
    s3 =
        addressing_style = virtual

When an endpoint URL is configured and that setting is absent, botocore uses *path*
style, which is what MinIO wants. Tencent COS buckets created since 2024 refuse path-style
requests, so a COS deployment sets ``addressing_style = virtual`` in that file. We pass
no ``s3={...}`` in our client ``Config`` because a value there would override the file.

botocore >= 1.36 also sends ``x-amz-checksum-*`` headers by default; an S3-compatible
store that rejects them is served by the standard
``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` (and
``AWS_RESPONSE_CHECKSUM_VALIDATION=when_required``), again read by botocore itself.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from .errors import StorageError

log = logging.getLogger(__name__)

# Keys are content-addressed, so an object never changes once written.
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"

S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 10.0
# botocore counts these as retries after the first request: 6 attempts in all.
S3_MAX_ATTEMPTS = 5

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_KEY_LENGTH = 1024  # S3's limit on a whole key
_MAX_SEGMENT_LENGTH = 255  # NAME_MAX of the file systems FileStorage writes to


class Storage(Protocol):
    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store ``data`` under ``key``; a reader never sees a partial object."""

    def get(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` if there is none."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    def check(self) -> None:
        """Readiness probe: ``StorageError`` if the store cannot be used."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative slash-separated path of ``[A-Za-z0-9._-]``
    segments, else raise ``ValueError``. This is what keeps FileStorage inside its root."""
    if not key:
        raise ValueError("invalid storage key: empty")
    if len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"invalid storage key: longer than {_MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' segment")
        if len(segment) > _MAX_SEGMENT_LENGTH:
            raise ValueError(
                f"invalid storage key: a segment is longer than {_MAX_SEGMENT_LENGTH} characters"
            )
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(f"invalid storage key {key!r}: use only A-Z a-z 0-9 . _ - and /")
    return key


def storage_from_url(url: str) -> Storage:
    """``file:///abs/dir`` → FileStorage, ``s3://bucket/prefix`` → S3Storage."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("file storage URL must be file:///absolute/dir")
        # Settings builds the default with Path.as_uri(), which percent-encodes.
        return FileStorage(Path(url2pathname(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("s3 storage URL needs a bucket: s3://bucket/prefix")
        return S3Storage(parts.netloc, parts.path.strip("/"))
    raise ValueError(
        f"unsupported storage URL scheme {parts.scheme!r}: "
        "use file:///absolute/dir or s3://bucket/prefix"
    )


# --- local directory ------------------------------------------------------------------


# IsADirectory / NotADirectory: the key names a directory, or runs through a file;
# either way there is no object under it, as S3 would say.
_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage directory {root}: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        # A plain directory has no place for metadata, so content_type is not kept here:
        # readers must not expect storage to give it back.
        path = self._path(key)
        with _file_errors("write", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            # '~' is not allowed in keys, so a temporary file is never taken for an object;
            # it sits in the target's directory so that os.replace is an atomic rename.
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}~", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as tmp:
                    # mkstemp creates 0600; covers are public images.
                    os.fchmod(tmp.fileno(), 0o644)
                    tmp.write(data)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.replace(tmp_name, path)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp_name)
                raise
            # Without this the rename itself can be lost in a power failure, and the
            # database would point at a cover that is not there.
            _fsync_directory(path.parent)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with _file_errors("read", key, missing_ok=True):
            return path.read_bytes()

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with _file_errors("look up", key):
            return path.is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with suppress(FileNotFoundError), _file_errors("delete", key, missing_ok=True):
            path.unlink()

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"storage directory {self.root} is missing")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"storage directory {self.root} is not writable")


@contextmanager
def _file_errors(action: str, key: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Translate OSError; with ``missing_ok`` a missing object becomes
    ``FileNotFoundError`` instead of ``StorageError``."""
    try:
        yield
    except OSError as exc:
        if missing_ok and isinstance(exc, _ABSENT):
            raise FileNotFoundError(key) from None
        raise StorageError(f"cannot {action} {key}: {exc.strerror or exc}") from exc


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- S3 and compatibles -----------------------------------------------------------------


class S3Client(Protocol):
    """The part of boto3's S3 client that S3Storage uses."""

    def put_object(
        self, *, Bucket: str, Key: str, Body: bytes, ContentType: str, CacheControl: str
    ) -> Mapping[str, Any]: ...

    def get_object(self, *, Bucket: str, Key: str) -> Mapping[str, Any]: ...

    def head_object(self, *, Bucket: str, Key: str) -> Mapping[str, Any]: ...

    def delete_object(self, *, Bucket: str, Key: str) -> Mapping[str, Any]: ...

    def head_bucket(self, *, Bucket: str) -> Mapping[str, Any]: ...


def default_s3_client() -> S3Client:
    # Retries and timeouts are ours (a Config value wins over AWS_MAX_ATTEMPTS and
    # AWS_RETRY_MODE): the worker's own backoff sits on top of them.
    config = Config(
        retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
        connect_timeout=S3_CONNECT_TIMEOUT,
        read_timeout=S3_READ_TIMEOUT,
    )
    # A session per client: boto3's module-level default session is not thread-safe
    # to create clients from, and clients themselves are.
    try:
        client: S3Client = boto3.session.Session().client("s3", config=config)
    except PartialCredentialsError as exc:
        raise StorageError(f"S3 credentials are incomplete ({exc}): set both AWS_ACCESS_KEY_ID "
                           "and AWS_SECRET_ACCESS_KEY") from None
    except BotoCoreError as exc:
        raise StorageError(f"cannot set up the S3 client: {exc}") from None
    return client


def check_at_start(storage: Storage) -> None:
    """Say at start, naming the fix, when storage cannot be used: otherwise the first sign
    is a worker failing every cover. Not fatal (an object store can come back), and
    ``GET /readyz`` reports the same until it does."""
    try:
        storage.check()
    except StorageError as exc:
        log.error("storage unavailable: %s", exc)
    except Exception:
        log.exception("storage check failed")


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", *, client: S3Client | None = None) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else default_s3_client()

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        # A single PutObject is atomic: readers see the old object or the whole new one.
        name = self._name(key)
        with self._errors("write", key):
            self.client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=data,
                ContentType=content_type,
                CacheControl=IMMUTABLE_CACHE_CONTROL,
            )

    def get(self, key: str) -> bytes:
        name = self._name(key)
        with self._errors("read", key, missing_ok=True):
            response = self.client.get_object(Bucket=self.bucket, Key=name)
            with response["Body"] as body:
                data: bytes = body.read()
        return data

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            with self._errors("look up", key, missing_ok=True):
                self.client.head_object(Bucket=self.bucket, Key=name)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        name = self._name(key)
        # S3 itself answers 204 for a missing key; some compatibles say NoSuchKey.
        with suppress(FileNotFoundError), self._errors("delete", key, missing_ok=True):
            self.client.delete_object(Bucket=self.bucket, Key=name)

    def check(self) -> None:
        """Can we use the bucket? The error says what to change: credentials, the bucket,
        its permissions or the endpoint."""
        where = f"s3://{self.bucket}"
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None) or "AWS S3"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StorageError(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE, or an instance role)"
            ) from None
        except EndpointConnectionError as exc:
            raise StorageError(
                f"cannot connect to the S3 endpoint for {where} ({exc}): check AWS_ENDPOINT_URL_S3"
            ) from None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in ("NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"bucket {self.bucket} does not exist at {endpoint}: create it, or correct "
                    "the bucket in COVERSERVICE_STORAGE_URL (s3://bucket/prefix) or the endpoint "
                    "in AWS_ENDPOINT_URL_S3"
                ) from None
            if status == 403 or code in ("AccessDenied", "Forbidden", "InvalidAccessKeyId",
                                         "SignatureDoesNotMatch"):
                raise StorageError(
                    f"access denied to bucket {self.bucket} at {endpoint} ({code or status}): check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and that they may HeadBucket, "
                    "GetObject, PutObject and DeleteObject on it"
                ) from None
            with self._errors("reach", None):
                raise
        except BotoCoreError:
            with self._errors("reach", None):
                raise

    @contextmanager
    def _errors(self, action: str, key: str | None, *, missing_ok: bool = False) -> Iterator[None]:
        """Translate botocore errors; with ``missing_ok`` a missing object becomes
        ``FileNotFoundError`` instead of ``StorageError``."""
        where = f"s3://{self.bucket}/{self._name(key)}" if key else f"s3://{self.bucket}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # A HEAD response has no body, so a missing key there is a bare 404; a missing
            # bucket is a configuration error, not a missing object, whenever the provider
            # says which. Without s3:ListBucket permission S3 answers 403 for a missing
            # key: that stays an error, as it cannot be told from a real permission problem.
            missing = code in ("NoSuchKey", "NotFound") or status == 404
            if missing_ok and missing and code != "NoSuchBucket":
                raise FileNotFoundError(key) from None
            reason = error.get("Message") or f"HTTP {status}"
            raise StorageError(f"cannot {action} {where}: {reason} ({code or status})") from exc
        except BotoCoreError as exc:
            # Connection refused, timeouts, missing credentials...: botocore's messages
            # name the endpoint, never the credentials.
            raise StorageError(f"cannot {action} {where}: {exc}") from exc
