from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from support.servers import free_port

from coverservice.errors import StorageError
from coverservice.storage import (
    IMMUTABLE_CACHE_CONTROL,
    S3_CONNECT_TIMEOUT,
    S3_READ_TIMEOUT,
    FileStorage,
    S3Storage,
    Storage,
    storage_from_url,
    validate_key,
)

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "covers")
    s3: S3Storage = request.getfixturevalue("s3_storage")
    return s3


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


# --- the contract, on every backend -----------------------------------------------------


def test_put_then_get_returns_the_bytes(storage: Storage) -> None:
    storage.put("ab/cd/ef.jpg", JPEG, content_type="image/jpeg")
    assert storage.get("ab/cd/ef.jpg") == JPEG


def test_put_of_an_existing_key_overwrites(storage: Storage) -> None:
    storage.put("a.jpg", b"first", content_type="image/jpeg")
    storage.put("a.jpg", b"second", content_type="image/jpeg")
    assert storage.get("a.jpg") == b"second"


def test_get_of_a_missing_key_is_file_not_found(storage: Storage) -> None:
    storage.put("present.jpg", JPEG, content_type="image/jpeg")
    with pytest.raises(FileNotFoundError):
        storage.get("absent.jpg")


def test_a_key_prefix_is_not_an_object(storage: Storage) -> None:
    storage.put("dir/leaf.jpg", JPEG, content_type="image/jpeg")
    assert not storage.exists("dir")
    with pytest.raises(FileNotFoundError):
        storage.get("dir")
    with pytest.raises(FileNotFoundError):
        storage.get("dir/leaf.jpg/below")


def test_exists(storage: Storage) -> None:
    assert not storage.exists("x/y.webp")
    storage.put("x/y.webp", b"RIFF", content_type="image/webp")
    assert storage.exists("x/y.webp")


def test_delete_removes_and_is_idempotent(storage: Storage) -> None:
    storage.put("gone.jpg", JPEG, content_type="image/jpeg")
    storage.delete("gone.jpg")
    assert not storage.exists("gone.jpg")
    storage.delete("gone.jpg")
    storage.delete("never/was.jpg")
    storage.delete("dir")  # not a file either


def test_check_passes_on_a_usable_store(storage: Storage) -> None:
    storage.check()


BAD_KEYS = ["", "/abs.jpg", "../up.jpg", "a/../b.jpg", "./a.jpg", "a//b.jpg", "a\\b.jpg", "a\x00b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_every_operation_refuses_an_invalid_key(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put(key, JPEG, content_type="image/jpeg")
    with pytest.raises(ValueError):
        storage.get(key)
    with pytest.raises(ValueError):
        storage.exists(key)
    with pytest.raises(ValueError):
        storage.delete(key)


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["a.jpg", "covers/ab/cd/0123abcd-320.webp", "A_b-c.d", "...", "a" * 255]
)
def test_validate_key_accepts_relative_paths_of_safe_segments(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        *BAD_KEYS,
        ".",
        "..",
        "a/",
        "a/.",
        "a b.jpg",
        "caf\u00e9.jpg",
        "a~b",
        "a?b",
        "a" * 256,
        "/".join(["a" * 200] * 6),
    ],
)
def test_validate_key_refuses(key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        validate_key(key)


# --- FileStorage ---------------------------------------------------------------------------


def test_file_storage_creates_its_root(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "covers"
    FileStorage(root).check()
    assert root.is_dir()


def test_file_storage_that_cannot_create_its_root_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create storage directory"):
        FileStorage(tmp_path / "a-file" / "covers")


def test_file_put_syncs_the_data_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_directories: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced_directories.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    FileStorage(tmp_path).put("a/b.jpg", JPEG, content_type="image/jpeg")
    assert synced_directories == [False, True]


def test_file_put_leaves_only_the_objects(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    for key in ("a.jpg", "b/c.jpg", "b/c.jpg", "b/d/e.webp"):
        store.put(key, JPEG, content_type="image/jpeg")
    assert files_under(tmp_path) == {"a.jpg", "b/c.jpg", "b/d/e.webp"}


def test_file_objects_are_readable_by_all(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    store.put("a.jpg", JPEG, content_type="image/jpeg")
    assert (tmp_path / "a.jpg").stat().st_mode & 0o777 == 0o644


def _failing_fsync(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_file_put_that_fails_midway_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStorage(tmp_path)
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(StorageError, match="No space left"):
        store.put("a/b.jpg", JPEG, content_type="image/jpeg")
    assert not store.exists("a/b.jpg")
    assert files_under(tmp_path) == set()


def test_file_put_that_fails_midway_keeps_the_previous_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStorage(tmp_path)
    store.put("a.jpg", b"old", content_type="image/jpeg")
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(StorageError):
        store.put("a.jpg", b"new and longer", content_type="image/jpeg")
    assert store.get("a.jpg") == b"old"
    assert files_under(tmp_path) == {"a.jpg"}


def test_file_put_interrupted_by_a_non_os_error_cleans_up_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    store = FileStorage(tmp_path)
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put("a.jpg", JPEG, content_type="image/jpeg")
    assert files_under(tmp_path) == set()


def test_file_put_onto_a_file_in_the_path_is_a_storage_error(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    store.put("a", JPEG, content_type="image/jpeg")
    with pytest.raises(StorageError, match="cannot write a/b.jpg"):
        store.put("a/b.jpg", JPEG, content_type="image/jpeg")


def test_file_check_fails_when_the_root_is_gone(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "covers")
    (tmp_path / "covers").rmdir()
    with pytest.raises(StorageError, match="missing"):
        store.check()
    (tmp_path / "covers").write_bytes(b"not a directory")
    with pytest.raises(StorageError, match="missing"):
        store.check()


def test_file_check_fails_when_the_root_is_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, for whom chmod does not take writing away.
    store = FileStorage(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(StorageError, match="not writable"):
        store.check()


# --- S3Storage -----------------------------------------------------------------------------


def test_s3_put_stores_content_type_and_immutable_cache_control_under_the_prefix(
    s3_storage: S3Storage,
) -> None:
    s3_storage.put("ab/cover.webp", b"RIFF....WEBP", content_type="image/webp")
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="covers/ab/cover.webp")
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == IMMUTABLE_CACHE_CONTROL == "public, max-age=31536000, immutable"


def test_s3_missing_bucket_is_a_storage_error_not_a_missing_object(s3_endpoint: str) -> None:
    store = S3Storage("no-such-bucket-here", "covers")
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        store.check()
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.get("a.jpg")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put("a.jpg", JPEG, content_type="image/jpeg")


def test_s3_unreachable_endpoint_is_a_storage_error_quickly(s3_endpoint: str) -> None:
    # s3_endpoint only for its hermetic AWS environment (no proxy for loopback).
    secret = "secret-that-must-not-be-printed"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nobody listens there
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key=secret,
        config=Config(
            retries={"mode": "standard", "max_attempts": 2}, connect_timeout=0.5, read_timeout=0.5
        ),
    )
    store = S3Storage("bucket", client=client)
    started = time.monotonic()
    with pytest.raises(StorageError, match="Could not connect") as check_error:
        store.check()
    with pytest.raises(StorageError) as get_error:
        store.get("a.jpg")
    assert time.monotonic() - started < 5
    for error in (check_error, get_error):
        assert secret not in str(error.value)
        assert "AKIDEXAMPLE" not in str(error.value)


def test_s3_default_client_retries_and_times_out(s3_endpoint: str) -> None:
    client: Any = S3Storage("bucket").client
    # botocore turns max_attempts (retries) into total_max_attempts (with the first try).
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    assert client.meta.config.connect_timeout == S3_CONNECT_TIMEOUT
    assert client.meta.config.read_timeout == S3_READ_TIMEOUT
    assert client.meta.endpoint_url == s3_endpoint  # from AWS_ENDPOINT_URL_S3


def _presigned_url(bucket: str) -> str:
    client: Any = S3Storage(bucket).client
    url: str = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    return url


def test_s3_uses_path_style_with_a_custom_endpoint_by_default(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://objects.example.test:9000")
    url = urlsplit(_presigned_url("covers"))
    assert (url.hostname, url.path) == ("objects.example.test", "/covers/k")


def test_s3_addressing_style_comes_from_the_shared_config_file(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a Tencent COS deployment does: its newer buckets take virtual-hosted requests only.
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    addressing_style = virtual\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://cos.ap-guangzhou.myqcloud.com")
    url = urlsplit(_presigned_url("covers-1250000000"))
    assert (url.hostname, url.path) == ("covers-1250000000.cos.ap-guangzhou.myqcloud.com", "/k")


@pytest.mark.parametrize(
    ("bucket", "prefix"), [("", ""), ("a/b", ""), ("bucket", "../up"), ("bucket", "a//b")]
)
def test_s3_storage_refuses_a_bad_bucket_or_prefix(
    s3_endpoint: str, bucket: str, prefix: str
) -> None:
    with pytest.raises(ValueError):
        S3Storage(bucket, prefix)


# --- storage_from_url ------------------------------------------------------------------


def test_storage_from_file_url(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    store = storage_from_url(root.as_uri())  # percent-encoded, as Settings writes it
    assert isinstance(store, FileStorage)
    assert store.root == root
    store.put("a.jpg", JPEG, content_type="image/jpeg")
    assert (root / "a.jpg").read_bytes() == JPEG


def test_storage_from_s3_url_joins_the_prefix(s3_storage: S3Storage) -> None:
    store = storage_from_url(f"s3://{s3_storage.bucket}/site/covers/")
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix) == (s3_storage.bucket, "site/covers")
    store.put("a.jpg", JPEG, content_type="image/jpeg")
    obj = s3_storage.client.get_object(Bucket=s3_storage.bucket, Key="site/covers/a.jpg")
    assert obj["Body"].read() == JPEG


def test_storage_from_s3_url_without_prefix(s3_storage: S3Storage) -> None:
    store = storage_from_url(f"s3://{s3_storage.bucket}")
    assert isinstance(store, S3Storage)
    store.put("a.jpg", JPEG, content_type="image/jpeg")
    assert s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="a.jpg")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/covers", "unsupported storage URL scheme 'ftp'"),
        ("/var/covers", "unsupported storage URL scheme ''"),
        ("file://otherhost/covers", "file:///absolute/dir"),
        ("s3:///covers", "needs a bucket"),
    ],
)
def test_storage_from_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        storage_from_url(url)


class _DeniedClient:
    """An S3 client whose credentials are valid but may not touch the bucket."""

    def head_bucket(self, *, Bucket: str) -> Any:
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadBucket")


def test_s3_check_names_access_denied_and_the_permissions_needed() -> None:
    storage = S3Storage("covers-1250000000", "live", client=_DeniedClient())  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="access denied to bucket covers-1250000000") as caught:
        storage.check()
    assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "PutObject" in str(caught.value)


def test_s3_check_names_a_missing_bucket(s3_storage: S3Storage) -> None:
    missing = S3Storage("no-such-bucket-7c1", "covers", client=s3_storage.client)
    with pytest.raises(StorageError, match="bucket no-such-bucket-7c1 does not exist at http://127.0.0.1:"):
        missing.check()
