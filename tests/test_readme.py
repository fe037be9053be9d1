"""The README a newcomer reads first: short, with working commands and example, and every
link into docs/ pointing at something that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
from support.servers import ServiceProcess

from coverservice.callbacks import sign

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_readme_fits_on_a_page() -> None:
    assert len(README.encode()) <= 10_000


def test_links_and_the_picture_point_at_files_that_exist() -> None:
    for document in (ROOT / "README.md", *DOCS):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (document.parent / target).exists(), f"{document.name}: {target}"
    assert (ROOT / "docs" / "contact-sheet.png").read_bytes().startswith(b"\x89PNG")


def test_the_docs_cite_no_figures_from_outside_the_repository() -> None:
    for document in (ROOT / "README.md", *DOCS):
        assert "DESIGN figures" not in document.read_text(), document.name


def test_the_test_command_is_the_one_ci_runs() -> None:
    assert "```sh\nscripts/test\n```" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
    script = (ROOT / "scripts" / "test").read_text()
    assert "apt-get install" in script and "chromium" in script and "nginx" in script


def test_the_example_callback_is_accepted(sqlite_url: str, tmp_path: Path) -> None:
    (example,) = [block for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL) if "callbacks/css" in block]
    key = "readme-example-key"
    env = {"COVERSERVICE_DATABASE_URL": sqlite_url, "COVERSERVICE_STORAGE_URL": (tmp_path / "covers").as_uri(),
           "COVERSERVICE_CALLBACK_KEYS": key}
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log", worker=False) as service:
        result = subprocess.run(["bash", "-euc", example], env={"API": service.base_url, "KEY": key, "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout == '{"code":0}'
        entry = httpx.get(f"{service.base_url}/api/covers/room1").json()
    assert entry["stream_id"] == "room1" and entry["live"] is True
    # The README's formula is the service's.
    assert sign(key, 1764770600) == subprocess.run(
        ["bash", "-c", f"printf '%s%s' {key} 1764770600 | md5sum | cut -d' ' -f1"],
        capture_output=True, text=True, check=True).stdout.strip()
