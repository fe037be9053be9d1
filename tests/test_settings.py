from __future__ import annotations

from pathlib import Path

import pytest

from coverservice.settings import ConfigurationError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("COVERSERVICE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_embedded(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'coverservice.sqlite3'}"
    assert settings.storage_url == (tmp_path / "coverservice-data").as_uri()
    assert settings.callback_keys == ()
    assert settings.admin_tokens == ()
    assert settings.fetch_allowed_hosts == ("*.myqcloud.com", "*.tencentcos.cn")
    assert settings.fetch_allow_private is False
    assert settings.selection_window == 600


def test_contract_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVERSERVICE_DATABASE_URL", "postgresql://postgres@127.0.0.1/test")
    monkeypatch.setenv("COVERSERVICE_STORAGE_URL", "s3://covers/prod")
    monkeypatch.setenv("COVERSERVICE_CALLBACK_KEYS", "new-key, old-key")
    monkeypatch.setenv("COVERSERVICE_FETCH_ALLOWED_HOSTS", "*.myqcloud.com,cdn.example.com:8080")
    monkeypatch.setenv("COVERSERVICE_FETCH_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("COVERSERVICE_ADMIN_TOKENS", "alice:0123456789abcdef, fedcba9876543210")
    settings = load_settings()
    # plain postgresql:// must work: the shipped driver is named for SQLAlchemy
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1/test"
    assert settings.storage_url == "s3://covers/prod"
    assert settings.callback_keys == ("new-key", "old-key")
    assert settings.fetch_allowed_hosts == ("*.myqcloud.com", "cdn.example.com:8080")
    assert settings.fetch_allow_private is True
    assert settings.admin_tokens == ("alice:0123456789abcdef", "fedcba9876543210")
    names = settings.admin_token_names
    assert names["0123456789abcdef"] == "alice"
    assert names["fedcba9876543210"].startswith("token-")


@pytest.mark.parametrize(
    "name, value",
    [
        ("COVERSERVICE_DATABASE_URL", "mysql://root@localhost/x"),
        ("COVERSERVICE_STORAGE_URL", "ftp://host/dir"),
        ("COVERSERVICE_STORAGE_URL", "s3:///prefix"),
        ("COVERSERVICE_FETCH_ALLOWED_HOSTS", "http://evil.com/"),
        ("COVERSERVICE_FETCH_ALLOWED_HOSTS", "*"),
        ("COVERSERVICE_FETCH_ALLOW_PRIVATE", "perhaps"),
        ("COVERSERVICE_WORKER_LEASE", "-1"),
        ("COVERSERVICE_SELECTION_WINDOW", "ten minutes"),
        ("COVERSERVICE_ADMIN_TOKENS", "short"),
        ("COVERSERVICE_ADMIN_TOKENS", ":0123456789abcdef"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert name in str(info.value)


def test_secrets_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVERSERVICE_CALLBACK_KEYS", "s3cret")
    monkeypatch.setenv("COVERSERVICE_WORKER_LEASE", "-1")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)
