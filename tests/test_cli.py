"""What an operator sees when the configuration is wrong: real ``coverservice`` processes,
whose output must name the problem and the variable that fixes it, without a traceback
unless ``--log-level debug`` asks for one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.polling import eventually
from support.servers import ServiceProcess, free_port

from coverservice import __version__

PASSWORD = "db-password-3f9a1c"


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COVERSERVICE_")}
    return subprocess.run([sys.executable, "-m", "coverservice", *args], env={**clean, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_version(tmp_path: Path) -> None:
    result = run("--version", env={}, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"coverservice {__version__}"


@pytest.mark.parametrize("command", ["migrate", "serve", "worker"])
def test_an_unreachable_database_names_the_setting_and_the_address(tmp_path: Path, command: str) -> None:
    port = free_port()  # nothing listens there
    env = {"COVERSERVICE_DATABASE_URL": f"postgresql://cover:{PASSWORD}@127.0.0.1:{port}/covers"}
    result = run(command, env=env, cwd=tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "COVERSERVICE_DATABASE_URL" in output
    assert f"127.0.0.1:{port}/covers" in output and "Connection refused" in output
    assert PASSWORD not in output
    assert "Traceback" not in output


def test_a_traceback_only_when_asked_for(tmp_path: Path) -> None:
    env = {"COVERSERVICE_DATABASE_URL": f"postgresql://cover:{PASSWORD}@127.0.0.1:{free_port()}/covers"}
    result = run("--log-level", "debug", "migrate", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "COVERSERVICE_DATABASE_URL" in result.stderr


def _serve(tmp_path: Path, **env: str) -> ServiceProcess:
    values = {
        "COVERSERVICE_DATABASE_URL": f"sqlite:///{tmp_path / 'covers.sqlite3'}",
        "COVERSERVICE_STORAGE_URL": (tmp_path / "covers").as_uri(),
        **env,
    }
    return ServiceProcess.serve(values, log_path=tmp_path / "serve.log", cwd=tmp_path)


def _screenshot(base_url: str, name: str, url: str) -> None:
    body = {
        "event_type": 200, "stream_id": "room", "channel_id": "room", "create_time": int(time.time()),
        "file_size": 1000, "width": 1280, "height": 720, "pic_url": f"/{name}.jpg", "pic_full_url": url,
    }
    assert httpx.post(f"{base_url}/callbacks/css", json=body).json() == {"code": 0}


def test_a_refused_download_is_logged_with_the_host_and_the_setting(tmp_path: Path) -> None:
    # The default allowlist (COS hosts), and a bucket behind a CDN domain of our own.
    with _serve(tmp_path) as service:
        _screenshot(service.base_url, "1", "https://shots.example.com/room/1.jpg")
        _screenshot(service.base_url, "2", "https://shots.example.com/room/2.jpg")
        _screenshot(service.base_url, "3", "https://other.example.net/room/3.jpg")

        def warnings() -> list[str]:
            return [line for line in service.log().splitlines() if "download refused" in line]

        eventually(lambda: len(warnings()) == 2)
        time.sleep(0.3)
        first, second = warnings()
    assert "WARNING" in first and "shots.example.com" in first
    assert "COVERSERVICE_FETCH_ALLOWED_HOSTS" in first and "*.myqcloud.com" in first
    assert "other.example.net" in second  # once per host: the second shots.example.com frame is not logged
    assert "Traceback" not in service.log()


def test_s3_without_a_bucket_says_so_at_start_and_in_readyz(s3_endpoint: str, tmp_path: Path) -> None:
    with _serve(tmp_path, COVERSERVICE_STORAGE_URL="s3://no-such-bucket/covers") as service:
        eventually(lambda: "storage unavailable" in service.log())
        ready = httpx.get(f"{service.base_url}/readyz")
    assert ready.status_code == 503
    assert "bucket no-such-bucket does not exist" in ready.json()["storage"]
    assert "COVERSERVICE_STORAGE_URL" in ready.json()["storage"]
    log = service.log()
    assert "bucket no-such-bucket does not exist" in log and "ERROR" in log
    assert "Traceback" not in log


def test_s3_without_credentials_says_so_at_start_and_in_readyz(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for
    with _serve(tmp_path, COVERSERVICE_STORAGE_URL="s3://covers/live") as service:
        eventually(lambda: "storage unavailable" in service.log())
        ready = httpx.get(f"{service.base_url}/readyz")
    assert ready.status_code == 503
    assert "no S3 credentials" in ready.json()["storage"] and "AWS_ACCESS_KEY_ID" in ready.json()["storage"]
    assert "no S3 credentials" in service.log() and "Traceback" not in service.log()


def test_incomplete_s3_credentials_stop_the_start_with_the_fix(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    env = {"COVERSERVICE_DATABASE_URL": f"sqlite:///{tmp_path / 'covers.sqlite3'}",
           "COVERSERVICE_STORAGE_URL": "s3://covers/live"}
    for command in ("serve", "worker"):
        result = run(command, env=env, cwd=tmp_path)
        assert result.returncode == 1
        assert "S3 credentials are incomplete" in result.stderr and "AWS_SECRET_ACCESS_KEY" in result.stderr
        assert "Traceback" not in result.stderr
