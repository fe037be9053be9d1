"""The deployment files at the top of the repository: compose.yaml describes the
production shape (Postgres, MinIO, a bucket one-shot, API, workers) with settings the
service accepts and commands it knows, and the Dockerfile builds an image those commands
run in. (No Docker daemon runs here: the files are checked by reading them.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from coverservice import cli
from coverservice.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
# boto3 reads these itself (docs/configuration.md); nothing else is meant to be set.
AWS_VARIABLES = {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, as `docker compose` does it."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise ValueError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    return {name: interpolate(str(value), env) for name, value in service["environment"].items()}


def test_compose_runs_the_production_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "api", "worker"}
    api, worker = services["api"], services["worker"]
    assert api["image"] == worker["image"] and api["build"] == worker["build"] == "."
    for service in (api, worker):
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    bucket = services["create-bucket"]
    assert "mc mb --ignore-existing local/covers" in bucket["command"][0]
    assert environment(api, {"COVERSERVICE_CALLBACK_KEYS": "k"})["COVERSERVICE_STORAGE_URL"].startswith("s3://covers/")


@pytest.mark.parametrize("name", ["api", "worker"])
def test_compose_environment_is_settings_the_service_accepts(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][name]
    with pytest.raises(ValueError, match="COVERSERVICE_CALLBACK_KEYS"):
        environment(service, {})  # no default key: it must be set
    env = environment(service, {"COVERSERVICE_CALLBACK_KEYS": "css-key"})
    for variable in env:
        if variable.startswith("COVERSERVICE_"):
            assert variable.removeprefix("COVERSERVICE_").lower() in Settings.model_fields, variable
        else:
            assert variable in AWS_VARIABLES, variable
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert settings.database_url.startswith("postgresql+psycopg://coverservice:")
    assert settings.callback_keys == ("css-key",) and settings.log_format == "json"
    # MinIO's credentials are the ones the service signs its S3 requests with.
    minio = compose["services"]["minio"]["environment"]
    assert env["AWS_SECRET_ACCESS_KEY"] == interpolate(minio["MINIO_ROOT_PASSWORD"], {})
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"


def parses(args: list[str]) -> click.Context:
    """``coverservice <args>`` as the command line would take it, without running it."""
    command = cli.main.commands[args[0]]
    return command.make_context(args[0], args[1:])


def test_compose_and_dockerfile_commands_are_ones_the_cli_knows(compose: dict[str, Any]) -> None:
    api = parses(compose["services"]["api"]["command"])
    assert api.params["no_worker"] and api.params["host"] == "0.0.0.0"
    worker = parses(compose["services"]["worker"]["command"])
    assert worker.params["metrics_port"] == 9100 and worker.params["metrics_host"] == "0.0.0.0"

    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r'^ENTRYPOINT (\[.*\])$', dockerfile, re.MULTILINE)
    cmd = re.search(r'^CMD (\[.*\])$', dockerfile, re.MULTILINE)
    assert entrypoint and cmd
    assert yaml.safe_load(entrypoint.group(1)) == ["coverservice"]
    assert parses(yaml.safe_load(cmd.group(1))).params["port"] == 8000


def test_the_image_installs_the_wheel_with_its_migrations() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied: set[str] = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        *sources, _ = shlex.split(line)
        copied.update(source.rstrip("/") for source in sources)
    # The build stage needs what the wheel is made of; the migrations travel inside it.
    assert {"coverservice", "migrations", "pyproject.toml"} <= copied
    assert re.search(r"pip wheel .*\.", dockerfile)
    assert re.search(r"pip install /wheels/\*\.whl", dockerfile)
    assert "pip install -e" not in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "migrations" not in ignored and "coverservice" not in ignored


def test_the_embedded_default_s_data_is_not_committed() -> None:
    # `coverservice serve` in a checkout writes its SQLite file and covers beside it.
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "coverservice-data/" in ignored and "*.sqlite3" in ignored
